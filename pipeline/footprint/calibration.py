"""The footprint decision: evidence -> probability that a refined footprint is right, fitted on truth.

A :class:`DecisionModel` is a logistic regression of correctness (IoU with the true footprint of at
least ``iou``; any footprint of a photo whose imagery does not contain it is wrong) on a few of the
evidence's numbers (:mod:`pipeline.footprint.evidence`), each standardized; counts enter as
``log(1 + n)`` and the refinement's ``shift`` as ``log(shift + 0.001)``. A number the evidence lacks (no
focal length in the catalogue) is replaced by its mean over the fitted decisions, so it moves the
probability neither way. The fit is Newton's method with an L2 penalty on the weights (not on the
intercept), so perfectly separated data (common: wrong candidates rarely survive refinement with many
inliers) still give finite, conservative weights.

A footprint is accepted when its probability reaches the model's ``operating_point``. Where the fitted
decisions are separated (every right one likelier than every wrong one: wrong candidates collapse when
refined), the probabilities between them are the penalty's guess, not the data's, and no nominal target
such as 99.9 % can be read off them: the operating point is then the middle of the gap, in log-odds
(:func:`operating_point`), the widest margin on both sides. Where they overlap, it is the lowest
probability at which the fitted decisions reach the target precision (``--precision``). What precision
the data support is in :class:`SourceReport`: per source of truth, the right and wrong decisions fitted
or validated on and the precision and recall at the operating point, with exact (Clopper-Pearson) 95 %
intervals. With ``w`` wrong decisions, none of them accepted, the data bound the share of wrong ones
accepted by about ``3 / w`` and no closer.

A :class:`Calibration` is stored as JSON (``calibration.json``, ``version`` 2): the model, the extractor
and search settings it was fitted under, and the reports.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from manifests.files import atomic_output

from ..geometry.geodesy import footprint_polygon, iou
from .evidence import FEATURES, Evidence
from .settings import NO_MODEL_MIN_INLIERS

log = logging.getLogger(__name__)

DEFAULT_PRECISION = 0.999
DEFAULT_FEATURES = ("inliers",)
"""The evidence the stage fits by default; why this alone: docs/decision.md (the other numbers separate the
sample's decisions too, but real right footprints of hazy or half-clouded photos sit where the sample's wrong
ones do)."""
MIN_EXAMPLES = 10
"""Right and wrong decisions that a fit needs at the least, of each (the usual ten events per parameter)."""
VERSION = 2
PACKAGED = Path(__file__).with_name("calibration.json")
"""The calibration shipped with the package (ALIKED): how it was fitted is in its ``sources`` and in
docs/decision.md."""
PACKAGED_DECISIONS = Path(__file__).with_name("calibration-decisions.parquet")
"""The decisions the packaged calibration was fitted and validated on (``role``: fit or validation)."""
EVIDENCE_SETTINGS = (
    "extractor",
    "max_keypoints",
    "contrast",
    "photo_px",
    "window_px",
    "refine_iterations",
    "refine_px",
    "refine_context",
    "refine_keypoints",
    "refine_surroundings_keypoints",
    "refine_crop",
    "candidate_min_inliers",
    "ransac_px",
    "half",
)
"""The search settings that shape the evidence: a calibration records them, and a footprints run whose settings
differ is warned that its evidence is not what the model was fitted on."""
_LOG1P = ("inliers", "candidate_inliers")
CORNERS = ("tl", "tr", "br", "bl")
_LOG = {"shift": 1e-3}


def transform(features: Sequence[str], x: np.ndarray) -> np.ndarray:
    """Evidence (N, len(features)) in natural units -> the model's inputs (log counts, log shift)."""
    x = np.array(x, np.float64, copy=True).reshape(-1, len(features))
    for j, name in enumerate(features):
        if name in _LOG1P:
            x[:, j] = np.log1p(np.maximum(x[:, j], 0.0))
        elif name in _LOG:
            x[:, j] = np.log(np.maximum(x[:, j], 0.0) + _LOG[name])
    return x


def columns(evidence: np.ndarray, features: Sequence[str]) -> np.ndarray:
    """The columns of ``features`` from evidence vectors (N, len(FEATURES)) in :data:`FEATURES` order."""
    unknown = [f for f in features if f not in FEATURES]
    if unknown:
        raise ValueError(f"unknown evidence features {unknown}; choose from {', '.join(FEATURES)}")
    return np.asarray(evidence, np.float64).reshape(-1, len(FEATURES))[:, [FEATURES.index(f) for f in features]]


@dataclass(frozen=True)
class DecisionModel:
    """``P(right | evidence) = 1 / (1 + exp(-(intercept + sum_k weights[k] * z_k)))`` with
    ``z_k = (transform(x_k) - mean[k]) / scale[k]`` (a missing x_k: z_k = 0); accepted at
    ``P >= operating_point`` (see :func:`operating_point`)."""

    features: tuple[str, ...]
    weights: tuple[float, ...]
    intercept: float
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    operating_point: float = DEFAULT_PRECISION

    def __post_init__(self) -> None:
        n = len(self.features)
        if not (len(self.weights) == len(self.mean) == len(self.scale) == n) or n == 0:
            raise ValueError(f"a decision model needs one weight, mean and scale per feature ({n} features)")
        columns(np.zeros((1, len(FEATURES))), self.features)  # known names
        if not 0.0 < self.operating_point < 1.0:
            raise ValueError(f"operating_point must be in (0, 1), got {self.operating_point}")

    def logits(self, evidence: np.ndarray) -> np.ndarray:
        """(N,) log-odds for evidence vectors (N, len(FEATURES)) in :data:`FEATURES` order."""
        z = (transform(self.features, columns(evidence, self.features)) - np.array(self.mean)) / np.array(self.scale)
        z = np.where(np.isfinite(z), z, 0.0)
        return self.intercept + z @ np.array(self.weights)

    def probabilities(self, evidence: np.ndarray) -> np.ndarray:
        """(N,) probabilities of being right."""
        return 1.0 / (1.0 + np.exp(-np.clip(self.logits(evidence), -500.0, 500.0)))

    def probability(self, evidence: Evidence) -> float:
        return float(self.probabilities(evidence.vector()[None])[0])

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> DecisionModel:
        return cls(
            tuple(d["features"]),
            tuple(float(v) for v in d["weights"]),
            float(d["intercept"]),
            tuple(float(v) for v in d["mean"]),
            tuple(float(v) for v in d["scale"]),
            float(d.get("operating_point", DEFAULT_PRECISION)),
        )


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0, iterations: int = 100) -> tuple[float, np.ndarray]:
    """Fit ``P(y = 1 | x) = 1 / (1 + exp(-(a + x @ b)))``; returns ``(a, b)``.

    x: (N, K) inputs (or (N,)); y: (N,) 0/1 labels. ``l2`` penalizes ``|b|**2 / 2`` (not ``a``)."""
    x = np.asarray(x, np.float64)
    x = x[:, None] if x.ndim == 1 else x
    y = np.asarray(y, np.float64)
    if x.ndim != 2 or y.shape != (len(x),) or len(x) == 0:
        raise ValueError(f"need (N, K) inputs and (N,) labels, got {x.shape} and {y.shape}")
    X = np.column_stack([np.ones(len(x)), x])
    w = np.zeros(X.shape[1])
    penalty = np.diag([0.0] + [l2] * x.shape[1])
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(X @ w, -500, 500)))
        grad = X.T @ (p - y) + penalty @ w
        hess = X.T @ (X * (p * (1 - p))[:, None]) + penalty + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return float(w[0]), w[1:]


def fit_model(
    evidence: np.ndarray,
    right: np.ndarray,
    features: Sequence[str] = DEFAULT_FEATURES,
    precision: float = DEFAULT_PRECISION,
    l2: float = 1.0,
) -> DecisionModel:
    """Fit a :class:`DecisionModel` on evidence vectors (N, len(FEATURES)) and their rightness (N,), and place its
    operating point (:func:`operating_point`).

    Raises ValueError with fewer than :data:`MIN_EXAMPLES` right or wrong decisions."""
    right = np.asarray(right, bool)
    n_right, n_wrong = int(right.sum()), int((~right).sum())
    if min(n_right, n_wrong) < MIN_EXAMPLES:
        raise ValueError(
            f"calibration needs at least {MIN_EXAMPLES} right and {MIN_EXAMPLES} wrong decisions, got "
            f"{n_right} right and {n_wrong} wrong; calibrate on more photos, with negatives (a sample "
            "workspace has them: `python -m pipeline run sample --size small`)"
        )
    features = tuple(features)
    x = transform(features, columns(evidence, features))
    mean = np.array([np.nanmean(c) if np.isfinite(c).any() else 0.0 for c in x.T])
    scale = np.array([np.nanstd(c) if np.isfinite(c).sum() > 1 else 1.0 for c in x.T])
    scale = np.where(scale > 1e-9, scale, 1.0)
    z = np.where(np.isfinite(x), (x - mean) / scale, 0.0)
    a, b = fit_logistic(z, right.astype(np.float64), l2=l2)
    model = DecisionModel(
        features, tuple(float(v) for v in b), a, tuple(float(v) for v in mean), tuple(float(v) for v in scale), 0.5
    )
    return replace(model, operating_point=operating_point(model.probabilities(evidence), right, precision))


def operating_point(p: np.ndarray, right: np.ndarray, precision: float = DEFAULT_PRECISION) -> float:
    """Where to accept, from the fitted decisions' probabilities (N,) and rightness (N,).

    Separated (every right decision likelier than every wrong one, the usual case: wrong candidates collapse at
    refinement): halfway, in log-odds, between the strongest wrong and the weakest right decision, the widest
    margin on both sides; the data cannot place it more finely, and say how much precision that supports
    (:class:`SourceReport`). Overlapping: the lowest probability at which the decisions accepted reach
    ``precision`` (the strongest decisions alone when none does)."""
    p, right = np.asarray(p, np.float64), np.asarray(right, bool)
    if p[~right].max() < p[right].min():
        lo, hi = (np.log(v / (1.0 - v)) for v in np.clip([p[~right].max(), p[right].min()], 1e-12, 1 - 1e-12))
        return float(1.0 / (1.0 + np.exp(-(lo + hi) / 2.0)))
    order = np.argsort(-p, kind="stable")
    ok = np.cumsum(right[order]) / np.arange(1, len(p) + 1) >= precision
    k = int(np.flatnonzero(ok).max()) if ok.any() else 0
    return float(np.clip(p[order][k], 1e-12, 1 - 1e-12))


def score_decisions(decisions: pd.DataFrame, truth: pd.DataFrame, min_iou: float) -> pd.DataFrame:
    """``decisions`` with ``iou`` (with the true footprint; 0 for a photo whose imagery does not contain it, NaN
    without a footprint) and ``right`` (IoU >= ``min_iou``) for the rows whose photo the truth knows."""
    d = decisions[decisions["photo_id"].isin(truth.index)].copy()
    ious = np.full(len(d), np.nan)
    for i, r in enumerate(d.itertuples()):
        if pd.isna(getattr(r, "tl_lat", np.nan)):
            continue
        t = truth.loc[r.photo_id]
        ious[i] = 0.0
        if bool(t["localizable"]):
            est = np.array([[getattr(r, f"{c}_lon"), getattr(r, f"{c}_lat")] for c in CORNERS])
            true = np.array([[t[f"{c}_lon"], t[f"{c}_lat"]] for c in CORNERS])
            ious[i] = iou(footprint_polygon(est), footprint_polygon(true))
    return d.assign(iou=ious, right=np.nan_to_num(ious) >= min_iou)


def weighed(decisions: pd.DataFrame) -> pd.DataFrame:
    """The decisions the model is fitted on and scored with: the refined candidates whose footprint reached the
    model, and those refinement lost. A lost one is a wrong decision at the evidence of its failed re-match (it
    gives no footprint), as a candidate the model turns down would be: easy negatives, which make the model more
    cautious, never less. A footprint the geometric checks refused (outside the map, without the weak label, ...)
    is refused whatever its evidence, and says nothing about the model: left out."""
    if "refined" not in decisions:
        return decisions.iloc[:0]
    refined = decisions["refined"].fillna(False).astype(bool)
    lost = decisions["survived"].fillna(True).astype(bool) == False  # noqa: E712 - a nullable column
    return decisions[refined & (decisions["tl_lat"].notna() | lost)]


def binomial_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval of a proportion seen as ``k`` of ``n``; (nan, nan) for n = 0."""
    if n == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - confidence) / 2.0

    def cdf(p: float, upto: int) -> float:  # P(X <= upto), X ~ Binomial(n, p)
        if p <= 0.0:
            return 1.0
        if p >= 1.0:
            return 0.0 if upto < n else 1.0
        lp, lq = math.log(p), math.log1p(-p)
        terms = [
            math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq
            for i in range(upto + 1)
        ]
        m = max(terms)
        return min(1.0, math.exp(m) * sum(math.exp(t - m) for t in terms))

    def solve(f: Callable[[float], float], target: float) -> float:  # f decreasing in p
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2.0
            lo, hi = (mid, hi) if f(mid) > target else (lo, mid)
        return (lo + hi) / 2.0

    lower = 0.0 if k == 0 else solve(lambda p: cdf(p, k - 1), 1.0 - alpha)
    upper = 1.0 if k == n else solve(lambda p: cdf(p, k), alpha)
    return lower, upper


@dataclass
class SourceReport:
    """One source of truth's decisions under a model: counts, and precision and recall at its operating point
    with 95 % intervals. ``role``: ``fit`` (the model was fitted on them) or ``validation``."""

    name: str
    role: str
    photos: int
    right: int  # right decisions (refined candidates at IoU >= iou with the truth)
    wrong: int
    accepted_right: int
    accepted_wrong: int
    precision: list[float] = field(default_factory=list)  # [value, low, high]
    recall: list[float] = field(default_factory=list)
    wrong_accepted: list[float] = field(default_factory=list)  # share of wrong decisions accepted
    strongest_wrong: float = float("nan")  # the highest probability a wrong decision got

    @classmethod
    def of(
        cls, name: str, role: str, photos: int, p: np.ndarray, right: np.ndarray, operating_point: float
    ) -> SourceReport:
        p, right = np.asarray(p, np.float64), np.asarray(right, bool)
        acc = p >= operating_point
        ar, aw = int((acc & right).sum()), int((acc & ~right).sum())
        nr, nw = int(right.sum()), int((~right).sum())

        def share(k: int, n: int) -> list[float]:
            lo, hi = binomial_interval(k, n)
            return [k / n if n else float("nan"), lo, hi]

        return cls(
            name,
            role,
            photos,
            nr,
            nw,
            ar,
            aw,
            share(ar, ar + aw),
            share(ar, nr),
            share(aw, nw),
            float(p[~right].max()) if nw else float("nan"),
        )

    def lines(self) -> list[str]:
        def iv(v: list[float]) -> str:
            return "n/a" if not v or math.isnan(v[0]) else f"{v[0]:.4f} [{v[1]:.4f}, {v[2]:.4f}]"

        return [
            f"{self.name} ({self.role}): {self.photos} photos, {self.right} right and {self.wrong} wrong decisions",
            f"    precision {iv(self.precision)}, recall {iv(self.recall)}, wrong accepted {self.accepted_wrong}/"
            f"{self.wrong} (share {iv(self.wrong_accepted)}); strongest wrong P = {self.strongest_wrong:.3g}",
        ]


@dataclass
class Calibration:
    """A fitted :class:`DecisionModel` and what it was fitted and validated on."""

    model: DecisionModel
    extractor: str
    iou: float  # a footprint counted as right from this IoU with the truth
    search: dict = field(default_factory=dict)  # the search settings that made the evidence
    sources: list[SourceReport] = field(default_factory=list)

    @property
    def operating_point(self) -> float:
        return self.model.operating_point

    def save(self, path: str | os.PathLike, before_replace: Callable[[Path], None] | None = None) -> None:
        """Write the calibration as JSON, atomically; ``before_replace(tmp)`` is called with the finished file just
        before it replaces ``path`` (see :class:`manifests.ManifestWriter`)."""
        d = {
            "version": VERSION,
            "model": self.model.to_dict(),
            "extractor": self.extractor,
            "iou": self.iou,
            "search": self.search,
            "sources": [asdict(s) for s in self.sources],
        }
        with atomic_output(path) as tmp:
            Path(tmp).write_text(json.dumps(d, indent=2, allow_nan=True) + "\n")
            if before_replace is not None:
                before_replace(Path(tmp))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Calibration:
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise ValueError(
                f"{path}: not a calibration file ({e}); make one with `python -m pipeline run calibrate`"
            ) from None
        if not isinstance(d, dict) or d.get("version") != VERSION:
            raise ValueError(
                f"{path}: a calibration of an older search (an inlier threshold fitted before the "
                "refinement matched denser keypoints: its inlier counts are not today's); fit a new one "
                "with `python -m pipeline run calibrate`, or pass --calibration none"
            )
        try:
            return cls(
                DecisionModel.from_dict(d["model"]),
                str(d["extractor"]),
                float(d["iou"]),
                dict(d.get("search", {})),
                [SourceReport(**s) for s in d.get("sources", [])],
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(
                f"{path}: not a calibration file ({type(e).__name__}: {e}); make one with "
                "`python -m pipeline run calibrate`"
            ) from None


def choose_calibration(given: str, default: Path, extractor: str, search: dict) -> tuple[str | None, str | None]:
    """The calibration a footprints run decides with, from what the user gave (``given``: a file, "packaged",
    "none", or "" for ``default`` when it exists, else the packaged one): ("packaged", a file's absolute path or None for the
    search; a fingerprint of its model for the output's record, as a refitted file is another decision).

    ValueError for a file that is missing or not a calibration, or one fitted for other features; the packaged
    calibration of other features is dropped with a warning (footprints are then accepted on inliers alone). A
    calibration fitted under other evidence settings than ``search``'s (flat keys) is warned about."""
    from ..config import fingerprint

    if given == "none":
        return None, None
    path = PACKAGED if given == "packaged" else Path(given) if given else Path(default)
    if given and not path.is_file():
        raise ValueError(
            f"calibration file not found: {path}; make one with `python -m pipeline run calibrate`, "
            "or pass --calibration none"
        )
    packaged = given == "packaged" or not path.is_file()
    cal = Calibration.load(PACKAGED if packaged else path)
    if cal.extractor != extractor:
        if given or not packaged:
            raise ValueError(
                f"{path} was fitted for {cal.extractor} features, this run uses {extractor}; "
                f"calibrate for them (`run calibrate --extractor {extractor}`) or pass --calibration none"
            )
        log.warning(
            "no calibration for %s features (the packaged one is for %s): footprints are accepted on "
            "--min-inliers alone (default %d) and have no confidence; fit one with `python -m pipeline run "
            "calibrate --extractor %s`",
            extractor,
            cal.extractor,
            NO_MODEL_MIN_INLIERS,
            extractor,
        )
        return None, None
    norm = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731 - TOML and JSON keep lists
    differ = [
        f"{k} = {search[k]!r} (fitted with {v!r})"
        for k, v in cal.search.items()
        if k in search and norm(search[k]) != v
    ]
    if differ:
        log.warning(
            "the calibration %s was fitted on evidence of another search: %s; the confidence of these "
            "footprints is not what it was fitted for: fit one with these settings (`python -m pipeline "
            "run calibrate`)",
            "packaged with the pipeline" if packaged else path,
            ", ".join(differ),
        )
    return ("packaged" if packaged else str(path.resolve())), fingerprint(cal.model.to_dict())


def decision_line(calibration: str | None, min_inliers: int) -> str:
    """How a footprints run decides, for its summary."""
    if not calibration:
        return f"{min_inliers} inliers after refinement (no calibration)"
    model = Calibration.load(PACKAGED if calibration == "packaged" else calibration).model
    floor = f", and {min_inliers} inliers" if min_inliers else ""
    return (
        f"P(right | {', '.join(model.features)}) >= {model.operating_point:.3g}{floor} "
        f"({'the packaged calibration' if calibration == 'packaged' else calibration})"
    )
