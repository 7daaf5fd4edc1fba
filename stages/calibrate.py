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

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from manifests import DECISIONS, ManifestError, ManifestWriter, Problem, read_manifest, read_queries, write_manifest
from pipeline.config import files_fingerprint, fingerprint
from pipeline.footprint.batch import CATALOGUE, matcher_name, run_batch
from pipeline.footprint.calibration import (
    CORNERS,
    DEFAULT_FEATURES,
    DEFAULT_PRECISION,
    EVIDENCE_SETTINGS,
    Calibration,
    SourceReport,
    fit_model,
    score_decisions,
    weighed,
)
from pipeline.footprint.evidence import FEATURES
from pipeline.footprint.settings import SearchSettings
from pipeline.settings import Settings, group, setting

from .base import Stage, StageError, StageRun, source_files
from .cluster import check_cluster_options, dask_client, gather_isolating
from .footprints import WORKER_MEMORY_BYTES


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
            raise ManifestError(
                path, f"not a readable CSV table ({e}); a truth CSV has a header line with {', '.join(need)}"
            ) from None
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise StageError(f"{path}: truth needs columns {missing}")
    problems = []
    flags = df["localizable"].map(_truth_flag)
    for i in np.flatnonzero(flags.isna().to_numpy()):
        problems.append(
            Problem(
                f"localizable must be True or False (also true/false, 1/0, yes/no), got "
                f"{_shown(df['localizable'].iloc[i])}",
                row=int(i),
                column="localizable",
                photo_id=str(df["photo_id"].iloc[i]),
            )
        )
    df = df.assign(localizable=flags.fillna(False).astype(bool))
    for c in need[2:]:  # a localizable photo's footprint: eight finite numbers
        v = pd.to_numeric(df[c], errors="coerce")
        for i in np.flatnonzero((df["localizable"] & ~np.isfinite(v.to_numpy(dtype=float))).to_numpy()):
            problems.append(
                Problem(
                    f"a localizable photo needs its corner as a number, got {_shown(df[c].iloc[i])}",
                    row=int(i),
                    column=c,
                    photo_id=str(df["photo_id"].iloc[i]),
                )
            )
        df[c] = v
    if problems:
        raise ManifestError(
            path, problems[:20] + ([Problem(f"... and {len(problems) - 20} more")] if len(problems) > 20 else [])
        )
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
        raise StageError(
            f"truth file not found: {path}; a sample workspace has truth.parquet "
            "(`python -m pipeline run sample`), or pass --truth FILE"
        )


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
    def parse(cls, spec: str) -> Source:
        """``TRUTH[,queries=Q][,tiles=T][,decisions=D]``; queries and tiles default to the files beside the truth."""
        head, *rest = [s.strip() for s in str(spec).split(",")]
        truth = Path(head).resolve()
        opts: dict[str, str] = {}
        for item in rest:
            key, eq, value = item.partition("=")
            if not eq or key not in ("queries", "tiles", "decisions") or not value:
                raise StageError(
                    f"source {spec!r}: {item!r} is not queries=PATH, tiles=PATH or decisions=PATH; a "
                    "source is TRUTH[,queries=Q][,tiles=T][,decisions=D]"
                )
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


def _specs(value) -> tuple[str, ...]:
    """One source (text) or a list of them; a source's own commas (``TRUTH,queries=Q``) stay in it."""
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, (list, tuple)):
        raise ValueError('a list of sources (TRUTH[,queries=Q][,tiles=T]), e.g. truth = ["truth.csv"]')
    return tuple(value)


@dataclass(frozen=True)
class CalibrateSettings(Settings):
    """The calibrate stage's settings, and the search that makes the evidence (the footprint search's settings
    without its decision: every footprint is weighed)."""

    section = "calibrate setting"

    truth: tuple[str, ...] = setting(
        (),
        "photos with truth to fit on: TRUTH[,queries=Q][,tiles=T][,decisions=D] "
        "(queries and tiles default to queries.parquet/.csv and tiles/ beside the "
        "truth); repeat for more sources (default: WORKDIR/truth.parquet)",
        repeat=True,
        parse=_specs,
        metavar="SOURCE",
    )
    validation: tuple[str, ...] = setting(
        (),
        "photos with truth to score but not fit on (same form); repeat for more",
        repeat=True,
        parse=_specs,
        metavar="SOURCE",
    )
    out: str = setting("", "the calibration (default: WORKDIR/calibration.json)")
    features: tuple[str, ...] = setting(
        DEFAULT_FEATURES, f"evidence the model weighs, comma-separated, of {', '.join(FEATURES)}"
    )
    precision: float = setting(
        DEFAULT_PRECISION, "the operating point: a footprint is localized from this probability of being right"
    )
    iou: float = setting(0.5, "a footprint is right from this IoU with the truth")
    top: int = setting(3, "distinct candidates refined per photo")
    limit: int | None = setting(None, "only the first N photos of each source")
    batch_size: int = setting(4, "photos per Dask task", runtime=True)
    workers: int | None = setting(None, "local Dask worker processes", runtime=True)
    workdir: str | None = setting(None, "the workspace (where the decisions are kept)", derived=True)
    search: SearchSettings = group(SearchSettings, exclude=("calibration", "min_inliers"))

    def check(self) -> None:
        self.need(0.5 <= self.precision < 1.0, "precision", "must be in [0.5, 1)")
        self.need(
            0.0 < self.iou <= 1.0,
            "iou",
            "must be in (0, 1] (a footprint is right from this IoU with the truth); leave it out for 0.5",
        )
        self.need(
            bool(self.features) and all(f in FEATURES for f in self.features),
            "features",
            f"choose one or more of {', '.join(FEATURES)}",
        )
        self.need(self.top >= 1, "top", "must be at least 1 (candidates refined per photo)")
        self.need(self.limit is None or self.limit >= 1, "limit", "must be at least 1")
        self.need(self.batch_size >= 1, "batch_size", "must be at least 1")

    def search_settings(self) -> SearchSettings:
        """The search that makes the evidence: no decision (every footprint is weighed)."""
        return replace(self.search, calibration=None, min_inliers=0)


class CalibrateStage(Stage):
    name = "calibrate"
    help = "fit the footprint decision (a calibrated model of the evidence) on photos with truth"
    settings_class = CalibrateSettings
    options = (
        "truth",
        "validation",
        "out",
        "features",
        "precision",
        "iou",
        "extractor",
        "top",
        "limit",
        "batch_size",
        "workers",
    )

    def resolve(self, s: CalibrateSettings, workdir: Path) -> CalibrateSettings:
        truth = s.truth or (str(Path(workdir) / "truth.parquet"),)
        return replace(
            s,
            workdir=s.workdir or str(Path(workdir).resolve()),
            truth=tuple(_spec(Source.parse(t)) for t in truth),
            validation=tuple(_spec(Source.parse(t)) for t in s.validation),
            out=str(Path(s.out or Path(workdir) / "calibration.json").resolve()),
        )

    def output(self, s: CalibrateSettings) -> Path:
        return Path(s.out)

    @staticmethod
    def sources(conf: CalibrateSettings) -> list[tuple[Source, str]]:
        return [(Source.parse(s), "fit") for s in conf.truth] + [
            (Source.parse(s), "validation") for s in conf.validation
        ]

    def input_files(self, conf: CalibrateSettings) -> list[Path]:
        files = []
        for src, _ in self.sources(conf):
            files += [Path(p) for p in (src.truth, src.decisions) if p and Path(p).is_file()]
            if not src.decisions:
                files += source_files(src.queries, image_folder=True) + source_files(src.tiles)
        return files

    def prepare(self, run: StageRun) -> None:
        conf = run.settings
        default = Path(conf.workdir) / "truth.parquet"
        if any(Path(src.truth) == default for src, _ in self.sources(conf)) and not default.exists():
            from .sample import ensure_sample

            ensure_sample(conf.workdir)

    def check(self, run: StageRun) -> None:
        conf = run.settings
        for src, _ in self.sources(conf):
            check_truth_path(Path(src.truth))
            if src.decisions:
                if not Path(src.decisions).is_file():
                    raise StageError(f"decisions not found: {src.decisions} (source {src.truth})")
                continue
            if not Path(src.queries).exists():
                raise StageError(
                    f"queries not found: {src.queries} (source {src.truth}); give them as {src.truth},queries=PATH"
                )
            if not Path(src.tiles).exists():
                raise StageError(
                    f"tiles not found: {src.tiles} (source {src.truth}); give them as {src.truth},tiles=PATH"
                )
        check_cluster_options(None, conf.workers)

    def run(self, run: StageRun) -> str:
        conf = run.settings
        lines = []
        scored: list[tuple[Source, str, pd.DataFrame, int]] = []
        for src, role in self.sources(conf):
            truth = read_truth(src.truth)  # before the search, which may take hours
            path, summary = (src.decisions, "") if src.decisions else self._decisions(conf, src)
            if summary:
                lines.append(summary)
            d = score_decisions(read_manifest(path, DECISIONS), truth, float(conf.iou)).assign(source=src.name)
            if d.empty:
                raise StageError(
                    f"no photo_id in common between the decisions {path} and the truth {src.truth}; "
                    "pass the truth of these photos, or their queries"
                )
            scored.append((src, role, d, int(d["photo_id"].nunique())))
        fit = pd.concat([weighed(d) for _, role, d, _ in scored if role == "fit"], ignore_index=True)
        try:
            model = fit_model(
                fit[list(FEATURES)].to_numpy(np.float64),
                fit["right"].to_numpy(bool),
                conf.features,
                float(conf.precision),
            )
        except ValueError as e:
            raise StageError(f"{', '.join(s.truth for s, role, _, _ in scored if role == 'fit')}: {e}") from None
        reports = []
        for src, role, d, photos in scored:
            w = weighed(d)
            p = model.probabilities(w[list(FEATURES)].to_numpy(np.float64))
            reports.append(SourceReport.of(src.name, role, photos, p, w["right"].to_numpy(bool), model.operating_point))
        search = {k: v for k, v in conf.search_settings().identity().items() if k in EVIDENCE_SETTINGS}
        cal = Calibration(model, conf.search.extractor, float(conf.iou), search, reports)
        decisions_out = decisions_path(conf.out)
        write_manifest(
            pd.concat([d.assign(role=role) for _, role, d, _ in scored], ignore_index=True), decisions_out, DECISIONS
        )
        cal.save(conf.out, before_replace=run.before_replace)
        terms = " + ".join(f"{w:+.3f} z({f})" for f, w in zip(model.features, model.weights))
        lines += [
            f"calibrate: fitted on {len(fit)} decisions ({int(fit['right'].sum())} right, "
            f"{int((~fit['right']).sum())} wrong) of {len([r for r in reports if r.role == 'fit'])} sources",
            f"  P(right) = 1 / (1 + exp(-({model.intercept:.3f} {terms})))",
            f"  operating point: localized at P >= {model.operating_point:g}",
        ]
        lines += ["  " + line for r in reports for line in r.lines()]
        lines.append(
            f"  wrote {conf.out} (run footprints uses it from WORKDIR, or pass --calibration FILE) and the "
            f"scored decisions {decisions_out.name}"
        )
        return "\n".join(lines)

    def _decisions(self, conf: CalibrateSettings, src: Source) -> tuple[str, str]:
        """The decisions of a source's photos (searched now, or found from an earlier run with the same search and
        files); resumable from its parts. (path, summary)"""
        search = conf.search_settings()
        key = fingerprint(
            {
                "search": search.flat(),
                "top": conf.top,
                "limit": conf.limit,
                "floor": 0,
                "files": files_fingerprint(source_files(src.queries, image_folder=True) + source_files(src.tiles)),
                "queries": src.queries,
                "tiles": src.tiles,
            }
        )
        out = Path(conf.workdir) / "calibration" / f"decisions-{Path(src.truth).parent.name}-{key}.parquet"
        if out.is_file():
            return str(out), f"calibrate: {src.name}: decisions found in {out}"
        queries, rejected = read_queries(src.queries, check_images=False, on_error="collect")
        if conf.limit is not None:
            queries = queries.head(int(conf.limit))
        queries = queries.assign(source=src.name)
        records = queries[["photo_id", "image_path", "center_lat", "center_lon", *CATALOGUE]].to_dict("records")
        bs = int(conf.batch_size)
        parts = out.with_name(out.name + ".parts")
        parts.mkdir(parents=True, exist_ok=True)
        work = [
            (str(parts / f"batch{k:05d}.parquet"), records[i : i + bs])
            for k, i in enumerate(range(0, len(records), bs))
        ]
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
        return str(out), (
            f"calibrate: {src.name}: {len(records)} photos searched in {time.perf_counter() - t0:.0f} s"
            + (f" ({n_bad} bad queries rows left out)" if n_bad else "")
            + f" -> {out}"
        )

    def _run_dask(
        self, conf: CalibrateSettings, search: SearchSettings, src: Source, todo: list[tuple[str, list]], key: str
    ) -> None:
        matcher = matcher_name(search.extractor)
        with dask_client(None, conf.workers, False, _worker_environ(), WORKER_MEMORY_BYTES) as (client, threads):

            def submit(rows: list[dict], part: str, suffix: str):
                return client.submit(
                    run_batch,
                    rows,
                    src.tiles,
                    search,
                    "cpu",
                    part,
                    threads,
                    int(conf.top),
                    key=f"decisions-{key}-{suffix}",
                    retries=2,
                    pure=False,
                )

            def failed_rows(row: dict, e: BaseException) -> pd.DataFrame:
                return pd.DataFrame(
                    [
                        {
                            "photo_id": row["photo_id"],
                            "status": "error",
                            "matcher": matcher,
                            "reason": f"its task failed each time it ran ({type(e).__name__}: {e})",
                        }
                    ]
                )

            def assemble(part: str, pieces: list) -> None:
                with ManifestWriter(part, DECISIONS) as writer:
                    for piece in pieces:
                        writer.write(read_manifest(piece, DECISIONS) if isinstance(piece, str) else piece)

            gather_isolating(client, todo, submit, failed_rows, assemble, f"decisions {src.name}", "localized")


def _spec(src: Source) -> str:
    """A source as a string with absolute paths (the config file records it so)."""
    return ",".join(
        [src.truth, f"queries={src.queries}", f"tiles={src.tiles}"]
        + ([f"decisions={src.decisions}"] if src.decisions else [])
    )


def _worker_environ() -> dict[str, str]:
    from pipeline.runtime import worker_environ

    return worker_environ()
