"""The decision threshold: inliers -> probability that a footprint is right, fitted on truth.

As EarthMatch does, a logistic regression models ``P(correct | inliers)`` on footprints whose
truth is known (a footprint is correct when its IoU with the true one reaches ``iou``; any
footprint of a negative photo is wrong), and the threshold is the smallest inlier count whose
modelled probability reaches the target precision (99.9 % by default). The regression is
one-dimensional and fitted here by Newton's method with a small L2 penalty on the slope, so
perfectly separated data (common: wrong matches rarely get more than ~20 inliers) still gives
a finite, conservative slope.

A :class:`Calibration` is stored as JSON (``calibration.json``) and carries the fitted model,
the threshold and the figures it was fitted on.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..files import atomic_output

DEFAULT_PRECISION = 0.999
MIN_EXAMPLES = 10
"""Correct and wrong footprints that a fit needs at the least, of each: the usual ten events per parameter
of a logistic regression (two here). With fewer, the threshold is the penalty's guess, not the data's: one
right and one wrong footprint gave 134 inliers."""
PACKAGED = Path(__file__).with_name("calibration.json")
"""The calibration shipped with the package: ALIKED, fitted on photos 60-99 of the small sample (30 right
footprints, wrong ones at <= 15 inliers) with the search of that time (photo at 384 px, refinement context 3).
Kept for the current search (512 px, context 2): refitting there on photos 60-99 gives perfectly separated data
(no wrong footprint at all; right ones have >= 69 inliers), whose threshold only the fit's penalty decides (75).
Wrong candidates forced through refinement keep 0 inliers there and 5 on the real sample; the real sample's right
footprints have 26 or more. 25 lies between: far above the wrong ones, one inlier below the hardest right one."""


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0, iterations: int = 100) -> tuple[float, float]:
    """Fit ``P(y = 1 | x) = 1 / (1 + exp(-(a + b x)))``; returns ``(a, b)``.

    x: (N,) feature (inliers); y: (N,) 0/1 labels. ``l2`` penalizes ``b**2 / 2`` (not ``a``).
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if x.shape != y.shape or x.ndim != 1 or len(x) == 0:
        raise ValueError(f"need two (N,) arrays of the same length, got {x.shape} and {y.shape}")
    X = np.column_stack([np.ones_like(x), x])
    w = np.zeros(2)
    penalty = np.diag([0.0, l2])
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(X @ w, -500, 500)))
        grad = X.T @ (p - y) + penalty @ w
        hess = X.T @ (X * (p * (1 - p))[:, None]) + penalty + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return float(w[0]), float(w[1])


def threshold_for(intercept: float, slope: float, precision: float) -> int | None:
    """The smallest whole inlier count whose modelled probability reaches ``precision`` (None: never)."""
    if not 0.0 < precision < 1.0:
        raise ValueError(f"precision must be in (0, 1), got {precision}")
    if slope <= 0:
        return None
    return max(0, math.ceil((math.log(precision / (1.0 - precision)) - intercept) / slope))


@dataclass
class Calibration:
    """A fitted inliers -> P(correct) model and the threshold it gives."""

    intercept: float
    slope: float  # per inlier
    min_inliers: int
    precision: float  # the target
    extractor: str
    iou: float  # a footprint counted as correct from this IoU with the truth
    footprints: int  # fitted on this many footprints,
    correct: int  # of which this many were correct
    precision_measured: float  # among fitted footprints with inliers >= min_inliers
    recall_measured: float  # correct footprints kept at min_inliers

    def probability(self, inliers) -> np.ndarray:
        """P(correct) for inlier counts (any shape)."""
        z = self.intercept + self.slope * np.asarray(inliers, np.float64)
        return 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))

    def save(self, path: str | os.PathLike, before_replace: Callable[[Path], None] | None = None) -> None:
        """Write the calibration as JSON, atomically; ``before_replace(tmp)`` is called with the finished file just
        before it replaces ``path`` (see :class:`manifests.ManifestWriter`)."""
        with atomic_output(path) as tmp:
            Path(tmp).write_text(json.dumps(asdict(self), indent=2) + "\n")
            if before_replace is not None:
                before_replace(Path(tmp))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Calibration":
        try:
            d = json.loads(Path(path).read_text())
            return cls(**d)
        except (OSError, ValueError, TypeError) as e:
            raise ValueError(f"{path}: not a calibration file ({e}); make one with `python -m pipeline run "
                             "calibrate`") from None


def calibrate(inliers: np.ndarray, correct: np.ndarray, precision: float = DEFAULT_PRECISION,
              extractor: str = "aliked", iou: float = 0.5) -> Calibration:
    """Fit the model on footprints' inliers (N,) and correctness (N,) and derive the threshold.

    Raises ValueError with fewer than :data:`MIN_EXAMPLES` correct or wrong footprints."""
    inliers = np.asarray(inliers, np.float64)
    correct = np.asarray(correct, bool)
    n_correct, n_wrong = int(correct.sum()), int((~correct).sum())
    if min(n_correct, n_wrong) < MIN_EXAMPLES:
        raise ValueError(f"calibration needs at least {MIN_EXAMPLES} correct and {MIN_EXAMPLES} wrong footprints, "
                         f"got {n_correct} correct and {n_wrong} wrong; calibrate on more photos, with negatives "
                         "(a sample workspace has them: `python -m pipeline run sample --size small`)")
    a, b = fit_logistic(inliers, correct.astype(np.float64))
    t = threshold_for(a, b, precision)
    if t is None:
        raise ValueError("more inliers do not make a footprint more likely right on this data; check the truth")
    kept = inliers >= t
    return Calibration(intercept=a, slope=b, min_inliers=int(t), precision=precision, extractor=extractor, iou=iou,
                       footprints=int(len(inliers)), correct=int(correct.sum()),
                       precision_measured=float(correct[kept].mean()) if kept.any() else float("nan"),
                       recall_measured=float(kept[correct].mean()))
