"""``run calibrate``: fit the footprint decision on photos with truth (synthetic, real, or both).

For every source of truth (``--truth``, fitted on; ``--validation``, only scored) the photos are
searched as ``run footprints`` would, except that every pair is matched and the ``--top`` best
candidates of each photo are refined and weighed, whatever they give: one row per refined candidate,
with its evidence (:mod:`pipeline.footprint.evidence`) and its footprint, into
``WORKDIR/calibration/decisions-<source>-<key>.parquet`` (resumable like any footprints run; reused
while the search settings and the source's files are the same). Each footprint is scored against the
truth (right at IoU >= ``--iou``; any footprint of a photo whose imagery does not contain it is wrong);
a logistic regression of rightness on ``--features`` of the evidence is fitted on the decisions of the
``--truth`` sources that kept a plausible footprint (:mod:`pipeline.footprint.calibration`). The
result, ``calibration.json``, holds the model, its operating point (``--precision``) and, per source,
the right and wrong decisions and the precision and recall at the operating point with 95 % intervals.
``run footprints`` then decides with it and writes its probability as ``confidence``.

A source is a truth file (the sample's ``truth.parquet`` or a CSV such as the real sample's
``truth.csv``) with its queries and tiles beside it (``queries.parquet`` or ``queries.csv``, ``tiles/``),
or elsewhere: ``TRUTH,queries=Q,tiles=T`` (and ``decisions=D`` to score a decisions manifest made
before instead of searching). Refused, with what to do: a source with no photo in common with its
truth, and fewer than 10 right or 10 wrong decisions (:data:`pipeline.footprint.calibration.MIN_EXAMPLES`).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from manifests import DECISIONS, ManifestError, ManifestWriter, Problem, read_manifest, read_queries, write_manifest
from pipeline.config import files_fingerprint, fingerprint
from pipeline.footprint.batch import CATALOGUE, matcher_name
from pipeline.footprint.calibration import (
    DEFAULT_FEATURES,
    CORNERS,
    DEFAULT_PRECISION,
    EVIDENCE_SETTINGS,
    Calibration,
    SourceReport,
    fit_model,
    score_decisions,
    weighed,
)
from pipeline.footprint.evidence import FEATURES
from pipeline.footprint.search import EXTRACTORS, default_conf as search_conf, validate_conf

from .base import Stage, StageError, source_files
from .cluster import check_cluster_options, dask_client, gather_isolating
from .footprints import WORKER_MEMORY_BYTES, run_batch



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


@dataclass(frozen=True)
class Source:
    """One source of truth: the truth file, the photos' queries and tiles, and decisions made before (or None)."""

    truth: str
    queries: str
    tiles: str
    decisions: str | None = None

    @property
    def name(self) -> str:
        p = Path(self.truth)
        return f"{p.parent.name}/{p.name}"

    @classmethod
    def parse(cls, spec: str) -> "Source":
        """``TRUTH[,queries=Q][,tiles=T][,decisions=D]``; queries and tiles default to the files beside the truth."""
        head, *rest = [s.strip() for s in str(spec).split(",")]
        truth = Path(head).resolve()
        opts: dict[str, str] = {}
        for item in rest:
            key, eq, value = item.partition("=")
            if not eq or key not in ("queries", "tiles", "decisions") or not value:
                raise StageError(f"source {spec!r}: {item!r} is not queries=PATH, tiles=PATH or decisions=PATH; a "
                                 "source is TRUTH[,queries=Q][,tiles=T][,decisions=D]")
            opts[key] = str(Path(value).resolve())
        if "queries" not in opts:
            found = [truth.parent / n for n in ("queries.parquet", "queries.csv") if (truth.parent / n).is_file()]
            opts["queries"] = str(found[0] if found else truth.parent / "queries.parquet")
        opts.setdefault("tiles", str(truth.parent / "tiles"))
        return cls(str(truth), opts["queries"], opts["tiles"], opts.get("decisions"))


def decisions_path(calibration: str | Path) -> Path:
    """Where a calibration's scored decisions are written: ``calibration-decisions.parquet`` beside
    ``calibration.json``."""
    p = Path(calibration)
    return p.with_name(f"{p.stem}-decisions.parquet")


class CalibrateStage(Stage):
    name = "calibrate"
    help = "fit the footprint decision (a calibrated model of the evidence) on photos with truth"
    default_conf = {
        "truth": [],  # sources fitted on (default: WORKDIR/truth.parquet)
        "validation": [],  # sources only scored
        "out": "",
        "features": list(DEFAULT_FEATURES),
        "precision": DEFAULT_PRECISION,
        "iou": 0.5,
        "top": 3,
        "limit": None,
        "batch_size": 4,
        "workers": None,
        # the search that makes the evidence (`--set key=value`, or a config file's [calibrate] table): the
        # footprint search's settings, without its decision
        **{k: v for k, v in search_conf.items() if k not in ("calibration", "min_inliers")},
    }
    runtime_keys = ("workers", "batch_size", "feature_dir", "feature_cache")
    option_types = {"limit": int, "workers": int, "weights_dir": str, "feature_dir": str, "offset_zooms": int,
                    "contrast": str}

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--truth", action="append", metavar="SOURCE",
                       help="photos with truth to fit on: TRUTH[,queries=Q][,tiles=T][,decisions=D] (queries and "
                            "tiles default to queries.parquet/.csv and tiles/ beside the truth); repeat for more "
                            "sources (default: WORKDIR/truth.parquet)")
        p.add_argument("--validation", action="append", metavar="SOURCE",
                       help="photos with truth to score but not fit on (same form); repeat for more")
        p.add_argument("--out", help="the calibration (default: WORKDIR/calibration.json)")
        p.add_argument("--features", type=lambda s: [f.strip() for f in s.split(",") if f.strip()],
                       help=f"evidence the model weighs, of {', '.join(FEATURES)} (default "
                            f"{','.join(DEFAULT_FEATURES)})")
        p.add_argument("--precision", type=float, help="the operating point: a footprint is localized from this "
                                                       "probability of being right (default 0.999)")
        p.add_argument("--iou", type=float, help="a footprint is right from this IoU with the truth (default 0.5)")
        p.add_argument("--extractor", choices=list(EXTRACTORS), help="features of the search (default aliked)")
        p.add_argument("--top", type=int, help="distinct candidates refined per photo (default 3)")
        p.add_argument("--limit", type=int, help="only the first N photos of each source")
        p.add_argument("--batch-size", dest="batch_size", type=int, help="photos per Dask task (default 4)")
        p.add_argument("--workers", type=int, help="local Dask worker processes")

    def resolve(self, conf: dict[str, Any], workdir: Path) -> dict[str, Any]:
        conf = dict(conf)
        conf["workdir"] = str(Path(workdir).resolve())
        truth = [str(t) for t in conf["truth"]] or [str(Path(workdir) / "truth.parquet")]
        conf["truth"] = [_spec(Source.parse(t)) for t in truth]
        conf["validation"] = [_spec(Source.parse(t)) for t in conf["validation"]]
        conf["out"] = str(Path(conf["out"] or Path(workdir) / "calibration.json").resolve())
        if not 0.5 <= float(conf["precision"]) < 1.0:
            raise StageError(f"--precision must be in [0.5, 1), got {conf['precision']}")
        if not 0.0 < float(conf["iou"]) <= 1.0:
            raise StageError(f"--iou must be in (0, 1] (a footprint is right from this IoU with the truth), got "
                             f"{conf['iou']}; leave it out for 0.5")
        unknown = [f for f in conf["features"] if f not in FEATURES]
        if unknown or not conf["features"]:
            raise StageError(f"--features {','.join(conf['features'])}: choose one or more of {', '.join(FEATURES)}")
        if int(conf["top"]) < 1:
            raise StageError(f"--top must be at least 1 (candidates refined per photo), got {conf['top']}")
        for key in ("limit", "batch_size"):
            if conf[key] is not None and int(conf[key]) < 1:
                raise StageError(f"--{key.replace('_', '-')} must be at least 1, got {conf[key]}")
        try:
            validate_conf(self.search_settings(conf))
        except ValueError as e:
            raise StageError(f"{e} (in --config or --set)") from None
        return conf

    @staticmethod
    def search_settings(conf: dict[str, Any]) -> dict[str, Any]:
        """The search that makes the evidence: the footprint search's settings of ``conf`` with no decision (every
        footprint is weighed)."""
        return {**{k: conf[k] for k in search_conf if k in conf}, "calibration": None, "min_inliers": 0}

    def output(self, conf: dict[str, Any]) -> Path:
        return Path(conf["out"])

    def sources(self, conf: dict[str, Any]) -> list[tuple[Source, str]]:
        return ([(Source.parse(s), "fit") for s in conf["truth"]]
                + [(Source.parse(s), "validation") for s in conf["validation"]])

    def input_files(self, conf: dict[str, Any]) -> list[Path]:
        files = []
        for src, _ in self.sources(conf):
            files += [Path(p) for p in (src.truth, src.decisions) if p and Path(p).is_file()]
            if not src.decisions:
                files += source_files(src.queries, image_folder=True) + source_files(src.tiles)
        return files

    def prepare(self, conf: dict[str, Any]) -> None:
        default = Path(conf["workdir"]) / "truth.parquet"
        if any(Path(src.truth) == default for src, _ in self.sources(conf)) and not default.exists():
            from .sample import ensure_sample

            ensure_sample(conf["workdir"])

    def check(self, conf: dict[str, Any]) -> None:
        for src, _ in self.sources(conf):
            check_truth_path(Path(src.truth))
            if src.decisions:
                if not Path(src.decisions).is_file():
                    raise StageError(f"decisions not found: {src.decisions} (source {src.truth})")
                continue
            if not Path(src.queries).exists():
                raise StageError(f"queries not found: {src.queries} (source {src.truth}); give them as "
                                 f"{src.truth},queries=PATH")
            if not Path(src.tiles).exists():
                raise StageError(f"tiles not found: {src.tiles} (source {src.truth}); give them as "
                                 f"{src.truth},tiles=PATH")
        check_cluster_options(None, conf["workers"])

    def run(self, conf: dict[str, Any]) -> str:
        lines = []
        scored: list[tuple[Source, str, pd.DataFrame, int]] = []
        for src, role in self.sources(conf):
            truth = read_truth(src.truth)  # before the search, which may take hours
            path, summary = (src.decisions, "") if src.decisions else self._decisions(conf, src)
            if summary:
                lines.append(summary)
            d = score_decisions(read_manifest(path, DECISIONS), truth, float(conf["iou"])).assign(source=src.name)
            if d.empty:
                raise StageError(f"no photo_id in common between the decisions {path} and the truth {src.truth}; "
                                 "pass the truth of these photos, or their queries")
            scored.append((src, role, d, int(d["photo_id"].nunique())))
        fit = pd.concat([weighed(d) for _, role, d, _ in scored if role == "fit"], ignore_index=True)
        try:
            model = fit_model(fit[list(FEATURES)].to_numpy(np.float64), fit["right"].to_numpy(bool),
                              conf["features"], float(conf["precision"]))
        except ValueError as e:
            raise StageError(f"{', '.join(s.truth for s, role, _, _ in scored if role == 'fit')}: {e}") from None
        reports = []
        for src, role, d, photos in scored:
            w = weighed(d)
            p = model.probabilities(w[list(FEATURES)].to_numpy(np.float64))
            reports.append(SourceReport.of(src.name, role, photos, p, w["right"].to_numpy(bool), model.operating_point))
        search = {k: v for k, v in self.search_settings(conf).items() if k in EVIDENCE_SETTINGS}
        cal = Calibration(model, conf["extractor"], float(conf["iou"]), search, reports)
        decisions_out = decisions_path(conf["out"])
        write_manifest(pd.concat([d.assign(role=role) for _, role, d, _ in scored], ignore_index=True), decisions_out,
                       DECISIONS)
        cal.save(conf["out"], before_replace=self.before_replace)
        terms = " + ".join(f"{w:+.3f} z({f})" for f, w in zip(model.features, model.weights))
        lines += [f"calibrate: fitted on {len(fit)} decisions ({int(fit['right'].sum())} right, "
                  f"{int((~fit['right']).sum())} wrong) of {len([r for r in reports if r.role == 'fit'])} sources",
                  f"  P(right) = 1 / (1 + exp(-({model.intercept:.3f} {terms})))",
                  f"  operating point: localized at P >= {model.operating_point:g}"]
        lines += ["  " + line for r in reports for line in r.lines()]
        lines.append(f"  wrote {conf['out']} (run footprints uses it from WORKDIR, or pass --calibration FILE) and the "
                     f"scored decisions {decisions_out.name}")
        return "\n".join(lines)

    def _decisions(self, conf: dict[str, Any], src: Source) -> tuple[str, str]:
        """The decisions of a source's photos (searched now, or found from an earlier run with the same search and
        files); resumable from its parts. (path, summary)"""
        search = self.search_settings(conf)
        key = fingerprint({"search": search, "top": conf["top"], "limit": conf["limit"], "floor": 0,
                           "files": files_fingerprint(source_files(src.queries, image_folder=True)
                                                      + source_files(src.tiles)), "queries": src.queries,
                           "tiles": src.tiles})
        out = Path(conf["workdir"]) / "calibration" / f"decisions-{Path(src.truth).parent.name}-{key}.parquet"
        if out.is_file():
            return str(out), f"calibrate: {src.name}: decisions found in {out}"
        queries, rejected = read_queries(src.queries, check_images=False, on_error="collect")
        if conf["limit"] is not None:
            queries = queries.head(int(conf["limit"]))
        queries = queries.assign(source=src.name)
        records = queries[["photo_id", "image_path", "center_lat", "center_lon", *CATALOGUE]].to_dict("records")
        bs = int(conf["batch_size"])
        parts = out.with_name(out.name + ".parts")
        parts.mkdir(parents=True, exist_ok=True)
        work = [(str(parts / f"batch{k:05d}.parquet"), records[i : i + bs])
                for k, i in enumerate(range(0, len(records), bs))]
        todo = [(part, rows) for part, rows in work if not Path(part).exists()]
        t0 = time.perf_counter()
        if todo:
            self._run_dask(conf, search, src, todo, key)
        with ManifestWriter(out, DECISIONS) as writer:
            for part, _ in work:
                writer.write(read_manifest(part, DECISIONS).assign(source=src.name))
        for part, _ in work:
            Path(part).unlink(missing_ok=True)
        parts.rmdir()
        n_bad = len(rejected)
        return str(out), (f"calibrate: {src.name}: {len(records)} photos searched in {time.perf_counter() - t0:.0f} s"
                          + (f" ({n_bad} bad queries rows left out)" if n_bad else "") + f" -> {out}")

    def _run_dask(self, conf: dict[str, Any], search: dict[str, Any], src: Source, todo: list[tuple[str, list]],
                  key: str) -> None:
        matcher = matcher_name(conf["extractor"])
        with dask_client(None, conf["workers"], False, _worker_environ(), WORKER_MEMORY_BYTES) as (client, threads):
            def submit(rows: list[dict], part: str, suffix: str):
                return client.submit(run_batch, rows, src.tiles, search, "cpu", part, threads,
                                     int(conf["top"]), key=f"decisions-{key}-{suffix}", retries=2, pure=False)

            def failed_rows(row: dict, e: BaseException) -> pd.DataFrame:
                return pd.DataFrame([{"photo_id": row["photo_id"], "status": "error", "matcher": matcher,
                                      "reason": f"its task failed each time it ran ({type(e).__name__}: {e})"}])

            def assemble(part: str, pieces: list) -> None:
                with ManifestWriter(part, DECISIONS) as writer:
                    for piece in pieces:
                        writer.write(read_manifest(piece, DECISIONS) if isinstance(piece, str) else piece)

            gather_isolating(client, todo, submit, failed_rows, assemble, f"decisions {src.name}", "localized")


def _spec(src: Source) -> str:
    """A source as a string with absolute paths (the config file records it so)."""
    return ",".join([src.truth, f"queries={src.queries}", f"tiles={src.tiles}"]
                    + ([f"decisions={src.decisions}"] if src.decisions else []))


def _worker_environ() -> dict[str, str]:
    from pipeline.runtime import worker_environ

    return worker_environ()
