"""Localize one photo from its weak label: candidates, matching, iterative refinement, decision.

After AstroLoc (section 3.1) and EarthMatch:

1. **Candidates**: at each zoom, the database windows that contain the weak label (four with
   the half-window stride), each tried with the photo at 0/90/180/270 deg (AstroLoc's 80
   pairs); and at 45/135/225/315 deg (ALIKED + LightGlue lose most photos turned ~40 deg from
   the nearest quarter turn) at the ``offset_zooms`` (2) likeliest zooms only, tried right
   after the quarter turns there and before the less likely zooms: the five photos of the
   sample workspace's 60-photo subset that need a 45-degree turn all match at the first or
   second likeliest zoom, and a photo that matches nothing (a negative) then costs 112 pairs
   instead of 160.
2. **Matching**: local features (ALIKED by default) + LightGlue + MAGSAC++ homography. The
   photo is matched at ``photo_px`` (long side, 512) against windows at ``window_px`` (768): a
   footprint two thirds of a window wide then has the window's scale, and one of the zooms (a
   factor 2 apart) is always within sqrt(2) of it. The photo's resolution matters most for
   hazy photos (real sample ISS064-E-513 against its best zoom-10 window: fewer than 8
   inliers at 384 px, 60 at 512 px), the windows' for imagery coarser than the zoom
   (ISS054-E-21023: 17 inliers with the window at 768 px, 11 at its native 1024 px). Window
   features are cached (LRU per process).
   Zooms are tried likeliest first (from the focal length). Both sides are contrast-equalized
   (CLAHE on lightness) before feature extraction. Each candidate pair is **screened** after
   LightGlue's second layer (of nine): the matches it would give there are fitted with a
   homography, and a pair with fewer than ``screen_inliers`` (6) inliers ends there. Pairs that
   match nothing mostly have 4-5 by chance (77 % of them end there); on the 68 photos studied
   (sample subset and real sample, 7416 pairs each matched to the end: ``bench/screen_study.py``)
   every localizable photo's best pair had at least 10.
3. **Refinement**: a candidate with ``early_stop_inliers`` is refined at once and the search
   stops when its footprint is accepted; otherwise the best candidates are refined.
   Refinement is iterative, as EarthMatch's: the imagery around the current estimate
   (``refine_context``, 1.5 times its size) is rendered in the photo's own perspective, so the
   estimate fills its centre; matched again (the photo at ``refine_px``, 640); homographies
   composed. Both sides get about the same keypoint density over the footprint (the
   surroundings' keypoints are cropped to 1.2 footprint widths): the search before spread 1024
   keypoints over twice the footprint and right candidates came out with a third of their
   inliers (docs/decision.md). A candidate that loses the match on its first refinement is
   dropped: a true match survives being re-matched in its own perspective, a chance one
   (repeated texture) rarely does. Refinement stops early once no corner moves more than
   ``refine_converged_px``.
4. **Decision**: the footprint must be plausible (convex, simple, not degenerate, plausible
   area, containing the label); then its evidence (:mod:`pipeline.footprint.evidence`: inliers,
   inlier ratio, the inliers' spread over the photo, ...) is weighed by a calibrated model
   (:mod:`pipeline.footprint.calibration`), and the footprint is ``localized`` when its
   probability of being right reaches the model's operating point.

Units: pixels, Web Mercator metres, degrees, km2.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from shapely.geometry import Point, Polygon

from manifests.files import atomic_output

from ..config import fingerprint
from ..geometry.geodesy import area_km2, footprint_polygon, wrap_lon
from ..geometry.mercator import MAX_LATITUDE, TILE_SIZE, lonlat_to_mercator, resolution_m
from ..geometry.windows import Window, windows_containing
from ..imagery.base import TileSource
from ..matching import build_extractor, build_matcher, estimate_homography
from ..runtime import cpu_has_native_bf16, tune_malloc
from . import homography as hg
from .calibration import PACKAGED, Calibration, DecisionModel
from .evidence import Catalogue, Evidence, catalogue_terms, hull_coverage
from .settings import SearchSettings

log = logging.getLogger(__name__)

BELOW_THRESHOLD = "too few inliers after refinement"
"""The start of a not_localized reason whose footprint the ``min_inliers`` threshold turned down: "... (n < min)"."""
NOT_CONFIDENT = "below the decision's operating point"
"""The start of a not_localized reason whose footprint the decision model turned down: "... (P = p < op; ...)"."""


def label_inside(xy: np.ndarray, x: float, y: float, scale: float) -> bool:
    """Whether the point (x, y) lies in the polygon ``xy`` (N, 2) scaled by ``scale`` about its centroid
    (boundary included). Plane coordinates, here Web Mercator metres: scaling about the centroid commutes with
    affine maps, so on a footprint's scale this is EarthMatch's test in degrees, up to Mercator's curvature."""
    poly = Polygon(xy)
    c = poly.centroid
    big = Polygon(np.column_stack([c.x + (xy[:, 0] - c.x) * scale, c.y + (xy[:, 1] - c.y) * scale]))
    return bool(big.covers(Point(x, y)))


def _corner_shift_px(a: np.ndarray, b: np.ndarray, width: int, height: int) -> float:
    """Largest corner displacement between two photo -> Mercator homographies, in photo pixels.

    Metres are turned into pixels with the footprint's mean scale (its diagonal over the photo's)."""
    ca, cb = hg.apply(a, hg.photo_corners(width, height)), hg.apply(b, hg.photo_corners(width, height))
    diag_m = max(np.linalg.norm(ca[2] - ca[0]), np.linalg.norm(ca[3] - ca[1]))
    return float(np.linalg.norm(ca - cb, axis=1).max() / max(diag_m, 1e-9) * math.hypot(width, height))


def clahe(rgb: np.ndarray, clip: float = 2.0, grid: int = 8) -> np.ndarray:
    """Contrast-limited adaptive histogram equalization of the lightness (CIELAB L) of RGB uint8 (H, W, 3).

    Astronaut photos are hazy, blue-shifted and low in contrast next to cloudless satellite
    mosaics; equalizing both sides the same way roughly doubles the inliers of hazy photos
    (real sample: ISS054-E-21023 16 -> 30, ISS064-E-358 129 -> 264 at the true alignment)
    and leaves clear ones unchanged.
    """
    lab = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2LAB)
    lab[..., 0] = cv2.createCLAHE(clipLimit=clip, tileGridSize=(grid, grid)).apply(lab[..., 0])
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


CONTRAST = {None: lambda rgb: rgb, "none": lambda rgb: rgb, "clahe": clahe}


@dataclass
class Candidate:
    """One matched (window, rotation): ``to_mercator`` maps photo pixels to Mercator metres.

    A pair ended by the screen has no ``to_mercator`` and the inliers it had there (fewer than ``screen_inliers``)."""

    window: Window
    rotation_deg: int
    inliers: int
    to_mercator: np.ndarray | None


@dataclass
class Match:
    """One matched pair: ``homography`` from the first image's pixels to the second's (continuous; None when
    there is none), its MAGSAC++ ``inliers`` among LightGlue's ``matches``, and the inliers' keypoints in the
    first image ``points`` (inliers, 2), continuous pixels."""

    homography: np.ndarray | None
    inliers: int
    matches: int = 0
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))


@dataclass
class Refinement:
    """EarthMatch's refinement of one candidate: ``to_mercator`` (None when the first re-match failed), the last
    match's inliers, matches and photo-side inlier points (photo pixels, full resolution), the iterations run and
    the inliers of each (``trace``)."""

    to_mercator: np.ndarray | None
    inliers: int
    matches: int
    points: np.ndarray
    iterations: int
    trace: tuple[int, ...] = ()


@dataclass
class Decision:
    """One refined candidate and what was decided about it: ``corners_lonlat`` (4, 2) of the refined footprint
    (None when refinement lost it or it is implausible: ``reason``), its evidence, its probability of being
    right under the decision model (None without a model) and whether it is ``accepted``."""

    candidate: Candidate
    refinement: Refinement
    corners_lonlat: np.ndarray | None
    evidence: Evidence | None
    confidence: float | None
    accepted: bool
    reason: str | None


@dataclass
class Result:
    """The outcome for one photo (see the footprints manifest of design.md)."""

    status: str
    reason: str | None = None
    corners_lonlat: np.ndarray | None = None
    inliers: int = 0
    zoom: int | None = None
    rotation_deg: int | None = None
    candidate_id: str | None = None
    iterations: int = 0
    homography: np.ndarray | None = None
    """(3, 3) photo pixels (full resolution, as stored) -> pixels of the candidate window at its native size
    (``size_tiles`` x 256 px, its tiles at their zoom), both continuous: an image's top-left corner at (0, 0),
    pixel centres at half-integers (OpenCV's integer centres: :func:`homography.to_centres`); H[2, 2] = 1."""
    confidence: float | None = None
    evidence: Evidence | None = None
    pairs_matched: int = 0
    elapsed_s: float = 0.0


def expected_zoom_order(
    zooms: list[int], lat: float, focal_mm: float | None, altitude_km: float = 410.0, size_tiles: int = 4
) -> list[int]:
    """Zooms sorted so the one whose window is about twice the expected footprint comes first.

    The expected footprint width (nadir) is ``altitude * 36 mm / focal``; without a focal
    length the given order is kept.
    """
    if not focal_mm or not np.isfinite(focal_mm) or focal_mm <= 0:
        return list(zooms)
    width_m = altitude_km * 1e3 * 36.0 / focal_mm
    coslat = math.cos(math.radians(lat))
    best = math.log2(size_tiles * 256 * resolution_m(0) * coslat / (2.0 * width_m))
    return sorted(zooms, key=lambda z: (abs(z - best), z))


def _subset(feats: dict, keep: torch.Tensor) -> dict:
    """A feature dict restricted to some keypoints (a bool mask or indices); every per-keypoint tensor follows."""
    n = len(feats["keypoints"])
    return {k: (v[keep] if torch.is_tensor(v) and v.ndim >= 1 and len(v) == n else v) for k, v in feats.items()}


class FootprintSearch:
    """Holds the models, the tile source and the window-feature cache of one process.

    Building one also calls :func:`pipeline.runtime.tune_malloc` (large freed buffers stay in
    the heap: twice as fast feature extraction on the CPU).
    """

    def __init__(self, source: TileSource, settings: SearchSettings | None = None, device: str = "cpu"):
        tune_malloc()
        self.settings = settings if settings is not None else SearchSettings()
        self.source = source
        self.device = device
        wdir = self.settings.weights_dir
        self._extract = build_extractor(
            self.settings.extractor, max_keypoints=self.settings.max_keypoints, device=device, weights_dir=wdir
        )
        self._refine_extract: dict[int, Any] = {}
        mp = {"mp": True} if self.half_precision(device) else {}
        self.matcher = build_matcher(self.settings.extractor, device=device, weights_dir=wdir, **mp)
        self.model = self._decision_model()
        self._features: OrderedDict[tuple, tuple[dict, Any]] = OrderedDict()
        self._disk = None
        if self.settings.feature_dir:
            keys = ("extractor", "weights_dir", "max_keypoints", "window_px", "contrast", "min_valid", "size_tiles")
            self._disk = Path(self.settings.feature_dir) / fingerprint({k: getattr(self.settings, k) for k in keys})

    def _decision_model(self) -> DecisionModel | None:
        """The model of ``calibration`` (ValueError for a file that is not a calibration of this extractor)."""
        path = self.settings.calibration
        if path is None:
            return None
        cal = Calibration.load(PACKAGED if path == "packaged" else path)
        if cal.extractor != self.settings.extractor:
            raise ValueError(
                f"{'the packaged calibration' if path == 'packaged' else path} is fitted for "
                f"{cal.extractor} features, not {self.settings.extractor}: fit one (`python -m pipeline "
                f"run calibrate --extractor {self.settings.extractor}`) or decide on inliers alone "
                "(calibration None and min_inliers)"
            )
        return cal.model

    def half_precision(self, device: str = "cpu") -> bool:
        """Whether LightGlue runs in mixed precision on ``device`` (see ``half`` in :class:`SearchSettings`)."""
        if not self.settings.half or self.settings.extractor == "sift":  # SIFT's nearest neighbours: no autocast
            return False
        return str(device).startswith("cuda") or (str(device) == "cpu" and cpu_has_native_bf16())

    # -- features ----------------------------------------------------------------------------
    def extractor(self, rgb: np.ndarray, max_keypoints: int | None = None) -> dict:
        """Features of an RGB uint8 image (H, W, 3) after the configured contrast normalization; at most
        ``max_keypoints`` (default: the search's ``max_keypoints``)."""
        rgb = CONTRAST[self.settings.contrast](rgb)
        if max_keypoints is None or max_keypoints == self.settings.max_keypoints:
            return self._extract(rgb)
        if max_keypoints not in self._refine_extract:  # the refinement's budgets: one model each, built once
            self._refine_extract[max_keypoints] = build_extractor(
                self.settings.extractor,
                max_keypoints=max_keypoints,
                device=self.device,
                weights_dir=self.settings.weights_dir,
            )
        return self._refine_extract[max_keypoints](rgb)

    def window_features(self, window: Window) -> tuple[dict | None, float]:
        """Features of a database window at ``window_px`` (None below ``min_valid``) and its valid fraction (cached)."""
        key = (window, self.settings.window_px)
        if key in self._features:
            self._features.move_to_end(key)
            return self._features[key]
        out = self._load_features(window)
        if out is None:
            n = self.settings.window_px
            img = self.source.read_window(window)  # native resolution: served by tile caches
            valid = img.valid_fraction
            rgb = img.rgb
            if rgb.shape[0] != n:
                rgb = cv2.resize(rgb, (n, n), interpolation=cv2.INTER_AREA)
            feats = self.extractor(rgb) if valid >= self.settings.min_valid else None
            out = (feats, valid)
            self._save_features(window, out)
        if self.settings.feature_cache > 0:
            self._features[key] = out
            while len(self._features) > self.settings.feature_cache:
                self._features.popitem(last=False)
        return out

    def _feature_path(self, window: Window) -> Path:
        return self._disk / str(window.zoom) / f"{window.tile_id}.npz"

    def _load_features(self, window: Window) -> tuple[dict | None, float] | None:
        """Features from the on-disk cache (None when absent or unreadable)."""
        if self._disk is None:
            return None
        path = self._feature_path(window)
        try:
            with np.load(path) as z:
                valid = float(z["valid"])
                if not bool(z["has_features"]):
                    return None, valid
                feats = {k: torch.from_numpy(z[k].copy()) for k in ("keypoints", "descriptors", "scores")}
                feats["image_size"] = tuple(int(v) for v in z["image_size"])
                return feats, valid
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError) as e:  # a damaged file is recomputed and replaced
            log.warning("feature cache file %s unreadable (%s); recomputing it", path, e)
            return None

    def _save_features(self, window: Window, out: tuple[dict | None, float]) -> None:
        if self._disk is None:
            return
        feats, valid = out
        arrays = {"valid": np.float64(valid), "has_features": np.bool_(feats is not None)}
        if feats is not None:
            arrays.update(
                {k: feats[k].numpy() for k in ("keypoints", "descriptors", "scores")},
                image_size=np.asarray(feats["image_size"], np.int64),
            )
        with atomic_output(self._feature_path(window)) as tmp:  # processes share the folder safely
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)

    def _match(self, f0: dict, f1: dict, full_precision: bool = False, screen: bool = False) -> Match:
        """LightGlue (or nearest neighbours) and MAGSAC++ from f0's pixels to f1's.

        ``screen``: end the pair after LightGlue's ``screen_layer`` if that layer's matches have fewer than
        ``screen_inliers`` homography inliers; the pair then gives no homography and those inliers."""
        c = self.settings
        screened: list[int] = []
        rule = None
        k0, k1 = np.asarray(f0["keypoints"]), np.asarray(f1["keypoints"])
        if screen and c.screen_inliers > 0:

            def keep(idx: np.ndarray) -> bool:
                _, mask = estimate_homography(k0[idx[:, 0]], k1[idx[:, 1]], threshold_px=c.ransac_px)
                screened.append(int(mask.sum()))
                return screened[0] >= c.screen_inliers

            rule = (c.screen_layer, keep)
        m0, m1, _ = self.matcher(f0, f1, full_precision=full_precision, screen=rule)
        if screened and screened[0] < c.screen_inliers:
            return Match(None, screened[0])
        h, mask = estimate_homography(m0, m1, threshold_px=c.ransac_px)
        if h is None:
            return Match(None, 0, len(m0))
        return Match(hg.from_centres(h), int(mask.sum()), len(m0), np.asarray(m0, np.float64)[mask] + 0.5)

    # -- the search ----------------------------------------------------------------------------
    def candidates(
        self, photo: np.ndarray, lon: float, lat: float, focal_mm: float | None = None
    ) -> Iterator[Candidate]:
        """Match the photo against every (window, rotation), likeliest zoom first; yields each pair's candidate.

        The quarter turns are tried at every zoom (AstroLoc's 80 pairs), the other angles only at
        the ``offset_zooms`` likeliest zooms, right after the quarter turns there: a photo is likelier
        at the likeliest zooms, whatever its turn, than at an unlikely zoom. A turn's features are
        computed when first needed (a photo localized by its first pair costs one extraction, not
        four); each image is prepared for the matcher once (:meth:`LightGlueMatcher.prepare`)."""
        c = self.settings
        hgt, wid = photo.shape[:2]
        s = c.photo_px / max(hgt, wid)
        small = cv2.resize(photo, (max(1, round(wid * s)), max(1, round(hgt * s))), interpolation=cv2.INTER_AREA)
        to_small = hg.scale(small.shape[1] / wid, small.shape[0] / hgt)
        order = expected_zoom_order(c.zooms, lat, focal_mm, size_tiles=c.size_tiles)
        quarter = [d for d in c.rotations if float(d) % 90 == 0]
        offsets = [d for d in c.rotations if float(d) % 90 != 0]
        n_off = len(order) if c.offset_zooms is None else max(0, int(c.offset_zooms))
        rot_feats: dict = {}
        win_feats: dict = {}
        # quarter turns at the offset zooms, then the offsets there, then quarter turns at the other zooms
        plan = [(quarter, order[:n_off]), (offsets, order[:n_off]), (quarter, order[n_off:])]
        for group, zooms in plan:
            for zoom in zooms if group else []:
                for window in windows_containing(lon, lat, zoom, c.size_tiles):
                    if window not in win_feats:
                        feats, _ = self.window_features(window)
                        # prepared once for every turn it meets
                        win_feats[window] = None if feats is None else self.matcher.prepare(feats)
                    feats = win_feats[window]
                    if feats is None:
                        continue
                    to_merc = hg.pixels_to_mercator(window.bounds_mercator(), c.window_px, c.window_px)
                    for deg in group:
                        if deg not in rot_feats:
                            f, pre = self._rotated_features(small, deg, to_small)
                            rot_feats[deg] = self.matcher.prepare(f), pre  # and each turn once for its windows
                        f0, pre = rot_feats[deg]
                        m = self._match(f0, feats, screen=True)
                        yield Candidate(
                            window, deg, m.inliers, None if m.homography is None else to_merc @ m.homography @ pre
                        )

    def _rotated_features(self, small: np.ndarray, deg: float, to_small: np.ndarray) -> tuple[dict, np.ndarray]:
        """Features of the photo turned ``deg`` counter-clockwise, and photo pixels -> turned pixels.

        Quarter turns are exact (np.rot90); other angles are warped onto a larger canvas and
        keypoints within 4 px of the photo's edge (the canvas's empty corners) are dropped."""
        h, w = small.shape[:2]
        m, (cw, ch) = hg.rotation_deg(deg, w, h)
        if float(deg) % 90 == 0:
            return self.extractor(np.ascontiguousarray(np.rot90(small, int(deg) // 90 % 4))), m @ to_small
        turned = cv2.warpAffine(
            small, hg.to_centres(m)[:2], (cw, ch), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
        )
        feats = self.extractor(turned)
        back = hg.apply(np.linalg.inv(m), feats["keypoints"].numpy().astype(np.float64) + 0.5)
        keep = torch.from_numpy((back[:, 0] > 4) & (back[:, 0] < w - 4) & (back[:, 1] > 4) & (back[:, 1] < h - 4))
        return _subset(feats, keep), m @ to_small

    def refine(self, photo: np.ndarray, to_merc: np.ndarray) -> Refinement:
        """EarthMatch's iterative refinement of a photo -> Mercator estimate (photo at full resolution).

        The photo is matched at ``refine_px`` (``refine_keypoints``) against the imagery around the estimate,
        ``refine_context`` times its size, rendered in the photo's own perspective; the surroundings get
        ``refine_surroundings_keypoints`` and keep those within ``refine_crop`` footprint widths of their
        centre, so that the footprint itself has about the photo's keypoint density: with 1024 keypoints
        spread over twice the footprint's size (the search before), about a quarter of them fell on it and
        right candidates lost up to 61 % of their inliers (bench/RESULTS.md, docs/decision.md)."""
        c = self.settings
        hgt, wid = photo.shape[:2]
        ctx = float(c.refine_context)
        long_side = int(round(c.refine_px * ctx))
        jw, jh = (long_side, round(long_side * hgt / wid)) if wid >= hgt else (round(long_side * wid / hgt), long_side)
        pw, ph = jw / ctx, jh / ctx  # the photo's place in the surroundings (the centre)
        small = cv2.resize(photo, (max(1, round(pw)), max(1, round(ph))), interpolation=cv2.INTER_AREA)
        f_photo = self.matcher.prepare(self.extractor(small, c.refine_keypoints), full_precision=True)
        to_small = hg.scale(small.shape[1] / wid, small.shape[0] / hgt)
        # surroundings pixels -> photo pixels: the photo spans the centre pw x ph
        ox, oy = (jw - pw) / 2.0, (jh - ph) / 2.0
        a = hg.scale(wid / pw, hgt / ph) @ np.array([[1.0, 0, -ox], [0, 1.0, -oy], [0, 0, 1.0]])
        crop = float(c.refine_crop)
        last = Match(None, 0)
        trace: list[int] = []
        it = 0

        def stop(m: Match) -> Refinement:  # the first iteration failing loses the candidate; later ones keep the last
            if it == 1:
                return Refinement(None, m.inliers, m.matches, _to_photo(m.points), 1, tuple(trace))
            return Refinement(to_merc, last.inliers, last.matches, _to_photo(last.points), it - 1, tuple(trace))

        def _to_photo(points: np.ndarray) -> np.ndarray:
            return hg.apply(np.linalg.inv(to_small), points) if len(points) else np.zeros((0, 2))

        for it in range(1, c.refine_iterations + 1):  # noqa: B007 - stop() reads it
            g = to_merc @ a  # surroundings pixels -> Mercator
            if not hg.positive_depth(g, jw, jh):
                return stop(Match(None, 0))
            corners = hg.apply(g, hg.photo_corners(jw, jh))
            xmin, ymin = corners.min(axis=0)
            xmax, ymax = corners.max(axis=0)
            if not np.all(np.isfinite([xmin, ymin, xmax, ymax])) or xmax <= xmin or ymax <= ymin:
                return stop(Match(None, 0))
            res = max(xmax - xmin, ymax - ymin) / (1.5 * long_side)
            nx, ny = int(math.ceil((xmax - xmin) / res)), int(math.ceil((ymax - ymin) / res))
            if nx * ny > 16e6:
                return stop(Match(None, 0))
            north_up = self.source.render((xmin, ymax - ny * res, xmin + nx * res, ymax), nx, ny)
            # surroundings pixels -> north-up pixels, for OpenCV (integer centres)
            m = np.linalg.inv(hg.pixels_to_mercator((xmin, ymax - ny * res, xmin + nx * res, ymax), nx, ny)) @ g
            sur = cv2.warpPerspective(
                north_up.rgb, hg.to_centres(m), (jw, jh), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
            )
            f_sur = self.extractor(sur, c.refine_surroundings_keypoints)
            if crop:
                k = f_sur["keypoints"].numpy().astype(np.float64) + 0.5
                near = (np.abs(k[:, 0] - jw / 2.0) <= crop * pw / 2.0) & (np.abs(k[:, 1] - jh / 2.0) <= crop * ph / 2.0)
                f_sur = _subset(f_sur, torch.from_numpy(near))
            # float32 always: these inliers are the decision's evidence, calibrated on float32 counts
            match = self._match(f_photo, f_sur, full_precision=True)
            trace.append(match.inliers)
            if match.homography is None or match.inliers < c.candidate_min_inliers:
                return stop(match)
            new = g @ match.homography @ to_small
            shift = _corner_shift_px(to_merc, new, wid, hgt) * small.shape[1] / wid
            to_merc, last = new, match
            if shift < c.refine_converged_px:
                break
        return Refinement(to_merc, last.inliers, last.matches, _to_photo(last.points), it, tuple(trace))

    def check(
        self, to_merc: np.ndarray, width: int, height: int, lon: float, lat: float
    ) -> tuple[np.ndarray | None, str | None]:
        """The footprint's corners (4, 2) lon/lat, or None and why it is implausible."""
        c = self.settings
        if not hg.positive_depth(to_merc, width, height):
            return None, "invalid geometry: the homography sends part of the photo to infinity"
        corners = hg.corners_lonlat(to_merc, width, height)
        if not np.all(np.isfinite(corners)):
            return None, "invalid geometry: corners outside the map"
        if np.abs(corners[:, 1]).max() > MAX_LATITUDE:
            return (
                None,
                f"invalid geometry: the footprint reaches beyond the Web Mercator map (|lat| > {MAX_LATITUDE:.2f})",
            )
        ring = Polygon(corners)
        if not ring.is_valid:
            return None, "invalid geometry: self-intersecting footprint"
        if ring.area <= 0 or ring.convex_hull.area > ring.area * 1.0001:
            return None, "invalid geometry: non-convex or degenerate footprint"
        try:
            area = area_km2(footprint_polygon(corners))
        except ValueError as e:
            return None, f"invalid geometry: {e}"
        if not c.min_area_km2 <= area <= c.max_area_km2:
            return None, f"implausible area {area:.0f} km2 (allowed {c.min_area_km2:g}-{c.max_area_km2:g})"
        # the weak label must lie in the footprint scaled by label_scale about its centroid (Web Mercator)
        xy = np.column_stack(lonlat_to_mercator(corners[:, 0], corners[:, 1]))
        # the label in the footprint's frame: one matched in a window across lon 180 has corners past it
        mid = float(corners[:, 0].mean())
        lx, ly = lonlat_to_mercator(mid + wrap_lon(lon - mid), lat)
        if not label_inside(xy, float(lx), float(ly), c.label_scale):
            return None, (
                f"the footprint does not contain the weak label (scaled {c.label_scale:g}x about its "
                "centroid; label_scale sets this)"
            )
        # angles: a sane photo's footprint has no corner sharper than ~10 degrees
        for i in range(4):
            a, b, d = xy[i - 1], xy[i], xy[(i + 1) % 4]
            v1, v2 = a - b, d - b
            cosang = float(v1 @ v2 / (np.linalg.norm(v1) * np.linalg.norm(v2) + 1e-12))
            if cosang > math.cos(math.radians(10.0)):
                return None, "invalid geometry: degenerate footprint (a corner sharper than 10 deg)"
        return corners, None

    def decide(
        self, photo: np.ndarray, cand: Candidate, lon: float, lat: float, catalogue: Catalogue | None = None
    ) -> Decision:
        """Refine one candidate, check its footprint and weigh its evidence (photo: RGB uint8 (H, W, 3))."""
        c = self.settings
        hgt, wid = photo.shape[:2]
        ref = self.refine(photo, cand.to_mercator)
        ev = Evidence(
            ref.inliers,
            ref.inliers / max(ref.matches, 1),
            hull_coverage(ref.points, wid, hgt),
            cand.inliers,
            _corner_shift_px(cand.to_mercator, ref.to_mercator, wid, hgt) / math.hypot(wid, hgt)
            if ref.to_mercator is not None
            else float("nan"),
        )
        if ref.to_mercator is None:  # a true match survives being re-matched in its own perspective
            return Decision(
                cand,
                ref,
                None,
                ev,
                None,
                False,
                f"the candidate (zoom {cand.window.zoom}, {cand.rotation_deg} deg, {cand.inliers} inliers) "
                f"did not survive refinement ({ref.inliers} inliers when re-matched)",
            )
        corners, why = self.check(ref.to_mercator, wid, hgt, lon, lat)
        if corners is None:
            return Decision(cand, ref, None, ev, None, False, why)
        cat = catalogue or Catalogue()
        ev = replace(
            ev, **dict(zip(("area_ratio", "keystone", "aspect"), catalogue_terms(corners, lon, lat, cat, wid, hgt)))
        )
        limit = float(c.max_area_ratio)
        if limit and math.isfinite(ev.area_ratio) and abs(ev.area_ratio) > math.log(limit):
            return Decision(
                cand,
                ref,
                None,
                ev,
                None,
                False,
                f"implausible for its catalogue: the footprint's area is {math.exp(ev.area_ratio):.2g}x the "
                f"one a {cat.focal_mm:g} mm lens predicts (allowed {1 / limit:.2g}-{limit:g}x; "
                "max_area_ratio sets this)",
            )
        p = None if self.model is None else self.model.probability(ev)
        if ref.inliers < c.min_inliers:
            why = f"{BELOW_THRESHOLD} ({ref.inliers} < {c.min_inliers})"
        elif p is not None and p < self.model.operating_point:
            why = f"{NOT_CONFIDENT} (P = {p:.3g} < {self.model.operating_point:g}; {ref.inliers} inliers)"
        else:
            why = None
        return Decision(cand, ref, corners, ev, p, why is None, why)

    def _result(self, d: Decision) -> Result:
        """The localized Result of an accepted decision."""
        cand = d.candidate
        n_px = cand.window.size_tiles * TILE_SIZE  # the window's native pixels, not the resampled window_px
        to_win = (
            np.linalg.inv(hg.pixels_to_mercator(cand.window.bounds_mercator(), n_px, n_px)) @ d.refinement.to_mercator
        )
        return Result(
            "localized",
            None,
            d.corners_lonlat,
            d.refinement.inliers,
            cand.window.zoom,
            cand.rotation_deg,
            cand.window.tile_id,
            d.refinement.iterations,
            to_win / to_win[2, 2],
            d.confidence,
            d.evidence,
        )

    def localize(self, photo: np.ndarray, lon: float, lat: float, catalogue: Catalogue | None = None) -> Result:
        """The whole search for one photo (RGB uint8 (H, W, 3)), its weak label (degrees) and what the
        catalogue says of it (the focal length orders the zooms; the decision weighs the rest).

        A candidate with ``early_stop_inliers`` is refined at once, and the search ends when its
        footprint is accepted; otherwise all pairs are matched and the ``refine_top`` best
        candidates are refined. Of the accepted footprints the likeliest wins (then the most inliers)."""
        t0 = time.perf_counter()
        c = self.settings
        cat = catalogue or Catalogue()
        decided: list[Decision] = []
        cands: list[Candidate] = []

        def accepted() -> list[Decision]:
            return [d for d in decided if d.accepted]

        for cand in self.candidates(photo, lon, lat, cat.focal_mm):
            cands.append(cand)
            if c.early_stop_inliers and cand.inliers >= c.early_stop_inliers and cand.to_mercator is not None:
                decided.append(self.decide(photo, cand, lon, lat, cat))
                if accepted():
                    break  # accepted: further pairs cannot change the decision
        else:
            done = {id(d.candidate) for d in decided}
            good = sorted(
                (
                    k
                    for k in cands
                    if k.to_mercator is not None and id(k) not in done and k.inliers >= c.candidate_min_inliers
                ),
                key=lambda k: -k.inliers,
            )
            for cand in good[: max(0, c.refine_top - len(decided))]:
                decided.append(self.decide(photo, cand, lon, lat, cat))
        top = max((k.inliers for k in cands), default=0)
        ok = accepted()
        if ok:
            best = self._result(max(ok, key=lambda d: (d.confidence or 0.0, d.refinement.inliers)))
        elif not cands:
            best = Result(
                "not_localized",
                f"no imagery around the weak label: no candidate window at zooms "
                f"{c.zooms} has imagery over at least {c.min_valid:.0%} of it; check that the tile "
                f"source covers lat {lat:.4f}, lon {lon:.4f}",
                inliers=top,
            )
        elif not decided:
            best = Result(
                "not_localized", f"too few inliers (best candidate {top}, need {c.candidate_min_inliers})", inliers=top
            )
        else:  # the strongest of the footprints turned down, or the first reason when none survived
            footprints = [d for d in decided if d.corners_lonlat is not None]
            d = max(footprints, key=lambda d: (d.confidence or 0.0, d.refinement.inliers)) if footprints else decided[0]
            best = Result(
                "not_localized",
                d.reason,
                inliers=d.refinement.inliers if footprints else top,
                zoom=d.candidate.window.zoom if footprints else None,
                rotation_deg=d.candidate.rotation_deg if footprints else None,
                candidate_id=d.candidate.window.tile_id if footprints else None,
                iterations=d.refinement.iterations if footprints else 0,
                confidence=d.confidence,
                evidence=d.evidence if footprints else None,
            )
        best.pairs_matched = len(cands)
        best.elapsed_s = time.perf_counter() - t0
        return best

    def distinct_candidates(
        self, cands: list[Candidate], width: int, height: int, top: int, min_inliers: int | None = None
    ) -> list[Candidate]:
        """Of the candidates with a homography and ``min_inliers`` (default ``candidate_min_inliers``), the ``top``
        strongest distinct ones: a candidate whose footprint overlaps a stronger one's by more than a third of
        their union is the same place again."""
        floor = self.settings.candidate_min_inliers if min_inliers is None else min_inliers
        picked: list[tuple[Candidate, Polygon]] = []
        for k in sorted(
            (k for k in cands if k.to_mercator is not None and k.inliers >= floor), key=lambda k: -k.inliers
        ):
            if len(picked) >= top:
                break
            xy = hg.apply(k.to_mercator, hg.photo_corners(width, height))
            poly = Polygon(xy) if np.isfinite(xy).all() else None
            if poly is None or not poly.is_valid or poly.area <= 0:
                continue
            if all(poly.intersection(q).area <= poly.union(q).area / 3.0 for _, q in picked):
                picked.append((k, poly))
        return [k for k, _ in picked]

    def decisions(
        self, photo: np.ndarray, lon: float, lat: float, catalogue: Catalogue | None = None, top: int = 3
    ) -> tuple[list[Decision], int]:
        """For calibration: every pair matched (no early stop) and the ``top`` strongest distinct candidates
        (:meth:`distinct_candidates`), whatever their inliers, refined and weighed; returns (their decisions, the
        pairs matched). The search refines only candidates with ``candidate_min_inliers``; forced through
        refinement, the weaker ones show what wrong candidates become there, which a sample's photos rarely
        show otherwise (right candidates outnumber wrong ones with 15 inliers by far). Distinct candidates give
        the right place and the strongest wrong ones, not the right place three times."""
        cat = catalogue or Catalogue()
        cands = list(self.candidates(photo, lon, lat, cat.focal_mm))
        picked = self.distinct_candidates(cands, photo.shape[1], photo.shape[0], top, min_inliers=0)
        return [self.decide(photo, k, lon, lat, cat) for k in picked], len(cands)
