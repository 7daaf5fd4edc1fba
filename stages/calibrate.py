"""``run calibrate``: fit the footprint decision threshold on a workspace with truth.

Footprints of the workspace's photos are computed with no inlier threshold (``run footprints
--min-inliers 0``, into ``WORKDIR/calibration/footprints.parquet``, resumable like any
footprints run) unless ``--footprints`` names such a manifest; each footprint is scored
against the truth (correct at IoU >= ``--iou``; any footprint of a negative photo is wrong,
and so is a photo left without one, at the inliers its decision saw); a logistic regression of correctness on inliers gives the smallest inlier count at the target
precision (:mod:`pipeline.footprint.calibration`). The result, ``WORKDIR/calibration.json``,
is what ``run footprints`` then uses for its threshold and its ``confidence`` column.

Refused, with what to do: footprints made with an inlier threshold (their ``.config.toml`` says
so) or with other features than ``--extractor`` (their ``matcher`` column says so), footprints
and truth with no photo in common, and fewer than 10 correct or 10 wrong footprints
(:data:`pipeline.footprint.calibration.MIN_EXAMPLES`).
"""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from manifests import ManifestError, Problem, read_manifest
from pipeline.config import config_path
from pipeline.footprint.calibration import DEFAULT_PRECISION, calibrate
from pipeline.footprint.search import BELOW_THRESHOLD
from pipeline.geometry.geodesy import footprint_polygon, iou

from .base import Stage, StageError
from .footprints import FootprintsStage, matcher_name

CORNERS = ("tl", "tr", "br", "bl")


def read_truth(path: str | Path) -> pd.DataFrame:
    """truth.parquet of a sample workspace, or a CSV like the real sample's truth.csv, indexed by photo_id.

    Needs ``localizable`` and the eight corner columns ``tl_lat``, ``tl_lon``, ... ``bl_lon``."""
    path = Path(path)
    check_truth_path(path)
    need = ["photo_id", "localizable"] + [f"{c}_{k}" for c in CORNERS for k in ("lat", "lon")]
    if path.suffix.lower() != ".csv":
        df = read_manifest(path, "truth", geometry=False)
    else:
        try:
            df = pd.read_csv(path, dtype={"photo_id": str})  # ids of digits stay text, as the footprints' ids
        except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as e:
            raise ManifestError(path, f"not a readable CSV table ({e}); a truth CSV has a header line with "
                                      f"{', '.join(need)}") from None
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise StageError(f"{path}: truth needs columns {missing}")
    problems = []
    flags = df["localizable"].map(_truth_flag)
    for i in np.flatnonzero(flags.isna().to_numpy()):
        problems.append(Problem(f"localizable must be True or False (also true/false, 1/0, yes/no), got "
                                f"{_shown(df['localizable'].iloc[i])}", row=int(i), column="localizable",
                                photo_id=str(df["photo_id"].iloc[i])))
    df = df.assign(localizable=flags.fillna(False).astype(bool))
    for c in need[2:]:  # a localizable photo's footprint: eight finite numbers
        v = pd.to_numeric(df[c], errors="coerce")
        for i in np.flatnonzero((df["localizable"] & ~np.isfinite(v.to_numpy(dtype=float))).to_numpy()):
            problems.append(Problem(f"a localizable photo needs its corner as a number, got {_shown(df[c].iloc[i])}",
                                    row=int(i), column=c, photo_id=str(df["photo_id"].iloc[i])))
        df[c] = v
    if problems:
        raise ManifestError(path, problems[:20] + ([Problem(f"... and {len(problems) - 20} more")]
                                                  if len(problems) > 20 else []))
    return df.set_index("photo_id")


def _shown(v: Any) -> str:
    return "nothing (an empty cell, or n/a)" if pd.isna(v) else repr(v.item() if isinstance(v, np.generic) else v)


def _truth_flag(v: Any) -> bool | None:
    """A truth file's localizable value as a bool; None when it is not one (``bool("no")`` is True)."""
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)) and v in (0, 1):
        return bool(v)
    if isinstance(v, str):
        return {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}.get(v.strip().lower())
    return None


def check_truth_path(path: Path) -> None:
    """Refuse a ``--truth`` that is a folder or names nothing."""
    if path.is_dir():
        raise StageError(f"--truth {path} is a folder; pass the truth file itself (truth.parquet or a truth CSV)")
    if not path.is_file():
        raise StageError(f"truth file not found: {path}; a sample workspace has truth.parquet "
                         "(`python -m pipeline run sample`), or pass --truth FILE")


def made_with_min_inliers(path: str | Path) -> int | None:
    """The ``min_inliers`` a footprints manifest was made with, from the config saved beside it by
    ``run footprints`` (None when there is none, or it does not say)."""
    cfg = config_path(path)
    try:
        with open(cfg, "rb") as f:
            value = tomllib.load(f).get("footprints", {}).get("min_inliers")
    except (OSError, tomllib.TOMLDecodeError):
        return None
    return value if isinstance(value, int) else None


def check_footprints(path: str | Path, footprints: pd.DataFrame, extractor: str) -> None:
    """Refuse footprints that would give a wrong threshold: made with an inlier threshold (their config
    beside them says so, or without it their rows "too few inliers after refinement (n < threshold)": photos
    under it lost their footprints, and would all count as wrong), or by
    other features than ``extractor`` (their ``matcher`` column says so)."""
    threshold = made_with_min_inliers(path)
    said = f"says {config_path(path).name}"
    if not threshold and "reason" in footprints:  # without its config (a copy): the rows the threshold turned down
        cut = footprints["reason"].dropna().astype(str).str.extract(rf"^{re.escape(BELOW_THRESHOLD)} \(\d+ < (\d+)\)")[0]
        if cut.notna().any():
            threshold, said = int(cut.dropna().astype(int).max()), "say its rows' reasons"
    if threshold:
        raise StageError(f"{path} was made with min_inliers = {threshold} ({said}): photos "
                         f"under {threshold} inliers lost their footprints and would all count as wrong; make the "
                         "footprints with `python -m pipeline run footprints --min-inliers 0`, or leave out "
                         "--footprints and calibrate computes them")
    matchers = sorted(footprints["matcher"].dropna().unique()) if "matcher" in footprints else []
    expected = matcher_name(extractor)
    others = [m for m in matchers if m != expected]
    if others:
        raise StageError(f"{path} holds footprints matched with {', '.join(matchers)} (its matcher column), not "
                         f"{expected} (--extractor {extractor}); pass --extractor {others[0].split('+')[0]}, or "
                         f"footprints made with {extractor}")


def check_common_photos(footprints: pd.DataFrame, truth: pd.DataFrame, fp_path: str | Path,
                        truth_path: str | Path) -> None:
    """Refuse footprints and truth that share no photo: nothing could be scored."""
    if not footprints["photo_id"].isin(truth.index).any():
        raise StageError(f"no photo_id in common between FOOTPRINTS {fp_path} (e.g. "
                         f"{', '.join(footprints['photo_id'].astype(str).head(2)) or 'none'}) and TRUTH {truth_path} "
                         f"(e.g. {', '.join(truth.index.astype(str)[:2]) or 'none'}); pass the truth of these "
                         "photos (--truth), or footprints of the truth's photos (--footprints)")


def score_footprints(footprints: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """IoU of every footprint with its true footprint (0 for photos that are not localizable).

    Returns photo_id, inliers, iou for the rows with an inlier count and a truth row; a row
    without a footprint (too few inliers, lost in refinement, implausible) scores IoU 0 at its
    best inliers: the decision saw those inliers and there was nothing right to accept."""
    rows = []
    for r in footprints.itertuples():
        if r.photo_id not in truth.index or pd.isna(r.inliers):
            continue
        if r.status != "localized":
            rows.append({"photo_id": r.photo_id, "inliers": int(r.inliers), "iou": 0.0})
            continue
        t = truth.loc[r.photo_id]
        est = np.array([[getattr(r, f"{c}_lon"), getattr(r, f"{c}_lat")] for c in CORNERS])
        score = 0.0
        if bool(t["localizable"]):
            true = np.array([[t[f"{c}_lon"], t[f"{c}_lat"]] for c in CORNERS])
            score = iou(footprint_polygon(est), footprint_polygon(true))
        rows.append({"photo_id": r.photo_id, "inliers": int(r.inliers), "iou": score})
    return pd.DataFrame(rows, columns=["photo_id", "inliers", "iou"])


class CalibrateStage(Stage):
    name = "calibrate"
    help = "fit the footprint decision threshold (inliers at 99.9 %% precision) on a workspace with truth"
    default_conf = {
        "footprints": "",
        "truth": "",
        "out": "",
        "precision": DEFAULT_PRECISION,
        "iou": 0.5,
        "extractor": "aliked",
        "limit": None,
        "workers": None,
    }
    runtime_keys = ("workers",)
    option_types = {"limit": int, "workers": int}

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--footprints", help="a footprints manifest made with --min-inliers 0 (default: computed "
                                            "into WORKDIR/calibration/footprints.parquet)")
        p.add_argument("--truth", help="truth.parquet or a truth CSV (default: WORKDIR/truth.parquet)")
        p.add_argument("--out", help="the calibration (default: WORKDIR/calibration.json)")
        p.add_argument("--precision", type=float, help="target precision of localized footprints (default 0.999)")
        p.add_argument("--iou", type=float, help="a footprint is correct from this IoU with the truth (default 0.5)")
        p.add_argument("--extractor", choices=["aliked", "disk", "superpoint", "sift"],
                       help="features the footprints are computed with (default aliked)")
        p.add_argument("--limit", type=int, help="only the first N photos")
        p.add_argument("--workers", type=int, help="local Dask worker processes for the footprints")

    def resolve(self, conf: dict[str, Any], workdir: Path) -> dict[str, Any]:
        conf = dict(conf)
        self._workdir = Path(workdir)
        conf["truth"] = str(Path(conf["truth"] or workdir / "truth.parquet").resolve())
        conf["out"] = str(Path(conf["out"] or workdir / "calibration.json").resolve())
        if not 0.5 <= float(conf["precision"]) < 1.0:
            raise StageError(f"--precision must be in [0.5, 1), got {conf['precision']}")
        if not 0.0 < float(conf["iou"]) <= 1.0:
            raise StageError(f"--iou must be in (0, 1] (a footprint is correct from this IoU with the truth), got "
                             f"{conf['iou']}; leave it out for 0.5")
        return conf

    def output(self, conf: dict[str, Any]) -> Path:
        return Path(conf["out"])

    def input_files(self, conf: dict[str, Any]) -> list[Path]:
        return [Path(p) for p in (conf["truth"], conf["footprints"]) if p and Path(p).is_file()]

    def prepare(self, conf: dict[str, Any]) -> None:
        truth = Path(conf["truth"])
        if not conf["footprints"] and not truth.exists() and truth == (self._workdir / "truth.parquet").resolve():
            from .sample import ensure_sample

            ensure_sample(self._workdir)

    def check(self, conf: dict[str, Any]) -> None:
        check_truth_path(Path(conf["truth"]))

    def execute(self, conf: dict[str, Any], overwrite: bool = False) -> str:
        self._overwrite = overwrite  # also for the footprints it makes, when their settings changed
        return super().execute(conf, overwrite)

    def _footprints(self, conf: dict[str, Any]) -> tuple[str, str]:
        """Localize the workspace's photos with no threshold (``calibration/footprints.parquet``): reused when
        up to date, redone under ``--overwrite`` when made with other settings. (summary, path)"""
        fp = FootprintsStage()
        fconf = fp.resolve({**fp.default_conf, "min_inliers": 0, "extractor": conf["extractor"],
                            "limit": conf["limit"], "workers": conf["workers"],
                            "out": str(self._workdir / "calibration" / "footprints.parquet"),
                            "calibration": "none"}, self._workdir)
        redo = False
        out = fp.output(fconf)
        if getattr(self, "_overwrite", False) and out.exists():
            try:
                redo = not config_path(out).exists() or bool(fp.changed_settings(fconf, fp._record(fconf)))
            except StageError:  # its config is unreadable
                redo = True
        return fp.execute(fconf, overwrite=redo), fconf["out"]

    def run(self, conf: dict[str, Any]) -> str:
        lines = []
        truth = read_truth(conf["truth"])  # before the footprints, which may take hours
        path = conf["footprints"]
        if not path:
            summary, path = self._footprints(conf)
            lines.append(summary)
        footprints = read_manifest(path, "footprints", geometry=False)
        check_footprints(path, footprints, conf["extractor"])
        check_common_photos(footprints, truth, path, conf["truth"])
        scored = score_footprints(footprints, truth)
        correct = scored["iou"].to_numpy() >= float(conf["iou"])
        try:
            cal = calibrate(scored["inliers"].to_numpy(), correct, float(conf["precision"]), conf["extractor"],
                            float(conf["iou"]))
        except ValueError as e:
            raise StageError(f"{path}: {e}") from None
        cal.save(conf["out"], before_replace=self.before_replace)
        wrong = scored[~correct]["inliers"]
        lines += [
            f"calibrate: {cal.footprints} photos with inliers of {len(footprints)} ({cal.correct} correct at IoU >= "
            f"{cal.iou:g}; wrong ones have at most {int(wrong.max()) if len(wrong) else 0} inliers)",
            f"  P(correct) = 1 / (1 + exp(-({cal.intercept:.3f} + {cal.slope:.4f} * inliers)))",
            f"  threshold at {cal.precision:.1%} precision: min_inliers = {cal.min_inliers}",
            f"  on these footprints: precision {cal.precision_measured:.3f}, recall {cal.recall_measured:.3f}",
            "  P(correct) at " + ", ".join(f"{n}: {cal.probability(n):.3f}" for n in (10, 20, 30, 40, 60, 100)),
            f"  wrote {conf['out']} (run footprints uses it from WORKDIR, or pass --calibration FILE)",
        ]
        return "\n".join(lines)
