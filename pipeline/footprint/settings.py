"""The footprint search's settings (:class:`SearchSettings`): each one declared once, with its help and kind.

Units: pixels, degrees, km2. The footprints and calibrate stages hold these as a group (their keys sit flat in
their ``--config`` tables, ``--set`` and options); benches and tests make one with ``SearchSettings(...)`` or
``SearchSettings().replace(key=value)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..geometry.windows import DEFAULT_ZOOMS, parse_zooms
from ..settings import Settings, setting

EXTRACTORS = ("aliked", "disk", "superpoint", "sift")
"""The search's features: ALIKED, DISK and SuperPoint with their LightGlue weights, SIFT with mutual nearest
neighbours (other ALIKED models, such as aliked-t16's 64-D descriptors, have no LightGlue weights here)."""
CONTRASTS = (None, "none", "clahe")
"""Contrast normalizations before feature extraction (None and "none": the image as it is)."""
LIGHTGLUE_LAYERS = 9
"""LightGlue's transformer layers (cvg/LightGlue and kornia's default): the screen may follow layers 0-7."""
NO_MODEL_MIN_INLIERS = 50
"""Inliers a footprint needs when no calibration applies (``calibration`` None): the decision is then the
inlier count alone (docs/decision.md)."""


@dataclass(frozen=True)
class SearchSettings(Settings):
    """How one photo is localized from its weak label (:class:`pipeline.footprint.search.FootprintSearch`)."""

    section = "footprint option"

    extractor: str = setting(
        "aliked", "local features: aliked, disk, superpoint (needs --weights-dir) or sift", choices=EXTRACTORS
    )
    weights_dir: str | None = setting(
        None,
        "folder with user-supplied weights: superpoint_v1.pth and "
        "superpoint_lightglue.pth (none: the shipped ALIKED/DISK weights)",
    )
    max_keypoints: int = setting(1024, "keypoints per image in the candidate search")
    contrast: str | None = setting(
        "clahe",
        "clahe: equalize lightness locally (CLAHE) before extracting features; none: the image as it is",
        choices=CONTRASTS,
    )
    zooms: tuple[int, ...] = setting(DEFAULT_ZOOMS, "candidate zooms, e.g. 8-12 or 9,11", parse=parse_zooms)
    size_tiles: int = setting(4, "database window side in 256-px tiles (even: half-window stride)")
    rotations: tuple[int, ...] = setting(
        (0, 90, 180, 270, 45, 135, 225, 315),
        "rotations tried, degrees: the quarter turns first (AstroLoc's 80 pairs), "
        "then the 45-degree offsets for photos they did not localize",
    )
    offset_zooms: int | None = setting(
        2, "the 45-degree offsets are tried at this many of the likeliest zooms (none: all)"
    )
    photo_px: int = setting(512, "long side of the photo when matched against a window, pixels")
    window_px: int = setting(
        768,
        "side of a database window when matched, pixels (a footprint two thirds of a "
        "window wide then has the photo's scale)",
    )
    min_valid: float = setting(0.05, "windows with less imagery than this fraction are skipped")
    refine_top: int = setting(2, "candidates refined")
    refine_iterations: int = setting(4, "refinement iterations at most (EarthMatch)")
    refine_px: int = setting(640, "long side of the photo when refining, pixels")
    refine_context: float = setting(1.5, "the surroundings rendered around the estimate, in footprint widths")
    refine_keypoints: int = setting(1536, "keypoints of the photo at refine_px")
    refine_surroundings_keypoints: int = setting(3072, "keypoints of the surroundings, before refine_crop")
    refine_crop: float = setting(
        1.2, "keep the surroundings' keypoints within this many footprint widths of its centre (0: all)"
    )
    refine_converged_px: float = setting(1.0, "stop refining once no corner moves more than this (pixels at refine_px)")
    calibration: str | None = setting(
        "packaged",
        "the decision model: a calibration.json (`run calibrate`), "
        "packaged (the package's, for ALIKED) or none (min_inliers "
        "alone decides)",
    )
    min_inliers: int = setting(0, "inliers a footprint also needs after refinement (without a model: the decision)")
    candidate_min_inliers: int = setting(15, "below this a candidate is not refined")
    early_stop_inliers: int = setting(
        30, "refine a candidate with this many inliers at once and stop when it is accepted (0: try all pairs)"
    )
    screen_inliers: int = setting(
        6,
        "end a candidate pair after LightGlue's layer screen_layer when that layer's "
        "matches have fewer homography inliers than this (0: never); pairs that match "
        "nothing mostly have 4-5 by chance, every localizable photo's best pair had 10 "
        "or more (bench/screen_study.py)",
    )
    screen_layer: int = setting(1, f"the LightGlue layer after which pairs are screened (0-{LIGHTGLUE_LAYERS - 2})")
    ransac_px: float = setting(3.0, "MAGSAC++ inlier threshold, pixels")
    label_scale: float = setting(
        1.2,
        "the footprint scaled by this about its centroid must contain the weak label "
        "(1.2: a tenth of its width beyond each edge; EarthMatch counts 3)",
    )
    min_area_km2: float = setting(10.0, "smallest plausible footprint, km2")
    max_area_km2: float = setting(2_000_000.0, "largest plausible footprint, km2")
    max_area_ratio: float = setting(
        6.0,
        "the footprint's area within this factor of the one the catalogue's lens "
        "predicts (0: no check); right footprints of the real sample are within "
        "1.5x, a DX body's crop makes 2.3x",
    )
    half: bool = setting(
        True,
        "the candidate search's LightGlue in mixed precision: float16 on CUDA, bfloat16 on a "
        "CPU with AVX512-BF16/AMX, float32 elsewhere (refinement and extractors: float32)",
    )
    feature_cache: int = setting(256, "database windows whose features are kept per process", runtime=True)
    feature_dir: str | None = setting(
        None,
        "also keep database-window features in this folder, for all workers and "
        "later runs (none: in memory, per worker)",
        runtime=True,
    )

    def check(self) -> None:
        need = self.need
        for key in ("photo_px", "window_px", "refine_px"):
            need(getattr(self, key) >= 16, key, "an integer of at least 16 (pixels)")
        need(
            len(self.rotations) > 0,
            "rotations",
            "a list of whole degrees, e.g. [0, 90, 180, 270, 45, 135, 225, "
            "315] (the manifest's rotation_deg is an integer)",
        )
        need(
            self.size_tiles >= 2 and self.size_tiles % 2 == 0,
            "size_tiles",
            "an even number of tiles, at least 2 (windows are laid with half-window stride)",
        )
        need(
            self.refine_iterations >= 1,
            "refine_iterations",
            "an integer of at least 1 (every footprint is refined: its inliers meet the calibrated threshold)",
        )
        for key in (
            "max_keypoints",
            "refine_top",
            "min_inliers",
            "candidate_min_inliers",
            "early_stop_inliers",
            "screen_inliers",
            "feature_cache",
            "refine_keypoints",
            "refine_surroundings_keypoints",
        ):
            need(getattr(self, key) >= 0, key, "an integer of at least 0")
        need(self.refine_context >= 1.0, "refine_context", "at least 1 (the surroundings contain the footprint)")
        need(
            self.max_area_ratio == 0 or self.max_area_ratio > 1.0, "max_area_ratio", "0 (no check) or a factor above 1"
        )
        need(
            self.refine_crop == 0 or self.refine_crop >= 1.0,
            "refine_crop",
            "0 (keep every keypoint) or at least 1 (footprint widths about the surroundings' centre)",
        )
        need(0.0 <= self.min_valid <= 1.0, "min_valid", "a fraction in [0, 1]")
        need(
            0 < self.min_area_km2 < self.max_area_km2,
            "min_area_km2",
            f"positive and below max_area_km2 = {self.max_area_km2}",
        )
        need(
            self.label_scale >= 1.0,
            "label_scale",
            "at least 1 (1: the footprint itself must contain the label; EarthMatch uses 3)",
        )
        need(self.ransac_px > 0, "ransac_px", "a positive number of pixels")
        need(self.offset_zooms is None or self.offset_zooms >= 0, "offset_zooms", "an integer of at least 0")
        need(
            not self.screen_inliers or self.extractor == "sift" or 0 <= self.screen_layer < LIGHTGLUE_LAYERS - 1,
            "screen_layer",
            f"LightGlue has {LIGHTGLUE_LAYERS} layers and screens after one of layers 0-"
            f"{LIGHTGLUE_LAYERS - 2}; or set screen_inliers = 0",
        )


__all__ = ["CONTRASTS", "EXTRACTORS", "LIGHTGLUE_LAYERS", "NO_MODEL_MIN_INLIERS", "SearchSettings"]
