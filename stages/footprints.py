"""``run footprints``: weak labels -> full footprints, on a Dask cluster (local by default).

Photos are split into batches; each batch is one Dask task (:func:`pipeline.footprint.batch.run_batch`)
that localizes its photos with :class:`pipeline.footprint.search.FootprintSearch` (one per worker
process, models loaded once) and writes its rows as an atomic part file. An interrupted run resumes
at the batches that have no part file; a task whose worker dies is retried. Every photo ends in the
manifest: ``localized``, ``not_localized`` with a reason, or ``error`` with a reason.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from manifests import FOOTPRINTS, ManifestWriter, read_queries
from pipeline.config import config_path, files_fingerprint, fingerprint
from pipeline.footprint.batch import CATALOGUE, matcher_name, rows_in_file_order, run_batch
from pipeline.footprint.calibration import choose_calibration, decision_line
from pipeline.footprint.settings import NO_MODEL_MIN_INLIERS, SearchSettings
from pipeline.geometry.mercator import ORIGIN_SHIFT_M, mercator_to_lonlat, near_extent
from pipeline.settings import Settings, group, setting

from .base import Stage, StageError, StageRun, source_files
from .cluster import check_cluster_options, check_device, cluster_device, dask_client, gather_isolating, resolve_device

log = logging.getLogger(__name__)

WORKER_MEMORY_BYTES = 5 * 2**30
"""Memory a footprints worker should have: it peaks at 3.8-4.0 GB (``python bench/heap.py`` over 20 sample
photos): the models, caches and a photo's prepared features, plus up to 1.1 GB of ALIKED dense maps during one
extraction. Dask pauses a worker above 80 % of its limit and restarts it above 95 %. Bounds the default number
of local workers."""


@dataclass(frozen=True)
class FootprintsSettings(Settings):
    """The footprints stage's settings: its own, and the search's (:class:`SearchSettings`, flat beside them)."""

    section = "footprints setting"

    queries: str = setting(
        "",
        "queries CSV/Parquet or photo folder (default: WORKDIR/queries.parquet, the sample "
        "workspace, created when missing)",
    )
    tiles: str = setting("", "tile source (default: WORKDIR/tiles)")
    out: str = setting("", "footprints manifest (default: WORKDIR/footprints.parquet)")
    calibration: str | None = setting(
        "",
        "calibration.json from `run calibrate` (default: WORKDIR/calibration.json "
        "if present, else the packaged one for aliked; none: no calibration)",
    )
    min_inliers: int | None = setting(
        None,
        "inliers a footprint needs besides the calibrated decision (default 0; "
        f"with --calibration none it is the decision: {NO_MODEL_MIN_INLIERS})",
    )
    limit: int | None = setting(None, "only the first N rows of the queries (bad rows among them end as errors)")
    batch_size: int = setting(4, "photos per Dask task", partition=True)
    device: str = setting(
        "auto",
        "auto (cuda when a GPU is visible, on --scheduler when a worker declares one; else cpu), cpu, cuda or cuda:N",
        runtime=True,
    )
    # device: like the threads per worker, it changes inlier counts by a few at most (float16 autocast on CUDA), and
    # an output made on a GPU machine must be up to date, resumable and retryable on another
    workers: int | None = setting(
        None,
        "local Dask worker processes (default: one per core, one thread each; with cuda: one per GPU)",
        runtime=True,
    )
    scheduler: str | None = setting(None, "address of an existing Dask scheduler, e.g. tcp://host:8786", runtime=True)
    retry_errors: bool = setting(
        False,
        "localize again only the photos whose rows in the existing --out are errors "
        "(and any photo of the queries it lacks), keeping every other row; after "
        "fixing files or paths",
        partition=True,
    )
    calibration_model: str | None = setting(None, "a fingerprint of the calibration's model", derived=True)
    search: SearchSettings = group(SearchSettings, exclude=("calibration", "min_inliers"))

    def check(self) -> None:
        self.need(
            self.limit is None or self.limit >= 1, "limit", "must be at least 1 (the first N rows of the queries)"
        )
        self.need(self.batch_size >= 1, "batch_size", "must be at least 1")
        self.need(self.min_inliers is None or self.min_inliers >= 0, "min_inliers", "an integer of at least 0")

    def search_settings(self) -> SearchSettings:
        """The search of resolved settings: with their decision (calibration, min_inliers) and, with a feature
        folder, one subfolder per tile source: its path and its top-level files' names, sizes and times (a
        raster, a folder of rasters, a VRT file, world.toml: replaced, they get new features; an XYZ folder's tiles
        are not listed: after replacing them, empty the feature folder). The search adds one subfolder per feature
        config."""
        feature_dir = self.search.feature_dir
        if feature_dir:
            tiles_id = fingerprint({"tiles": self.tiles, "files": files_fingerprint(source_files(self.tiles))})
            feature_dir = str(Path(feature_dir).resolve() / f"tiles-{tiles_id}")
        return replace(
            self.search, calibration=self.calibration, min_inliers=self.min_inliers or 0, feature_dir=feature_dir
        )


class FootprintsStage(Stage):
    name = "footprints"
    help = "localize photos from their weak labels: full footprints (candidates, LightGlue, refinement)"
    settings_class = FootprintsSettings
    options = (
        "queries",
        "tiles",
        "out",
        "extractor",
        "weights_dir",
        "zooms",
        "min_inliers",
        "calibration",
        "batch_size",
        "limit",
        "feature_dir",
        "device",
        "workers",
        "scheduler",
        "retry_errors",
    )

    def resolve(self, s: FootprintsSettings, workdir: Path) -> FootprintsSettings:
        """Absolute paths, the device, the calibration that applies and the inliers floor."""
        search = s.search
        if search.weights_dir:
            search = replace(search, weights_dir=str(Path(search.weights_dir).resolve()))
        if search.extractor == "superpoint":  # fail here, with the list of files, not in every worker
            from pipeline.matching.weights import WeightsNotFoundError, user_weights_path

            try:
                for kind in ("superpoint", "superpoint_lightglue"):
                    user_weights_path(search.weights_dir, kind)
            except WeightsNotFoundError as e:
                raise StageError(str(e)) from None
        try:
            calibration, model = choose_calibration(
                "none" if s.calibration is None else s.calibration,
                workdir / "calibration.json",
                search.extractor,
                s.identity(),
            )
        except ValueError as e:
            raise StageError(str(e)) from None
        min_inliers = s.min_inliers if s.min_inliers is not None else (0 if calibration else NO_MODEL_MIN_INLIERS)
        return replace(
            s,
            queries=str(Path(s.queries or workdir / "queries.parquet").resolve()),
            tiles=str(Path(s.tiles or workdir / "tiles").resolve()),
            out=str(Path(s.out or workdir / "footprints.parquet").resolve()),
            device=resolve_device(s.device, remote=bool(s.scheduler)),
            calibration=calibration,
            calibration_model=model,
            min_inliers=min_inliers,
            search=search,
        )

    def output(self, s: FootprintsSettings) -> Path:
        return Path(s.out)

    def input_files(self, s: FootprintsSettings) -> list[Path]:
        return source_files(s.queries, image_folder=True) + source_files(s.tiles)

    def prepare(self, run: StageRun) -> None:
        qpath = Path(run.settings.queries)
        if not qpath.exists() and qpath == (run.workdir / "queries.parquet").resolve():
            from .sample import ensure_sample

            ensure_sample(run.workdir)

    def check(self, run: StageRun) -> None:
        s = run.settings
        qpath = Path(s.queries)
        if not qpath.exists():
            raise StageError(
                f"queries not found: {qpath}; pass --queries with a CSV or Parquet file (photo_id, "
                "image_path, center_lat, center_lon) or a folder of EarthLoc-named photos"
            )
        try:  # here, once, not in every Dask task: a wrong path would make every photo an error row
            from pipeline.tile_sources import open_tile_source

            source = open_tile_source(s.tiles)
        except (FileNotFoundError, ValueError, OSError) as e:
            raise StageError(f"--tiles: {e}") from None
        # a label within one coarsest-zoom window of the imagery still has candidates (windows with 5 % imagery)
        pad = s.search.size_tiles * 2 * ORIGIN_SHIFT_M / 2 ** min(s.search.zooms)
        self._check_coverage(run, source.bounds_mercator, pad)
        check_device(s.device, remote=bool(s.scheduler))
        check_cluster_options(s.scheduler, s.workers)
        if s.search.feature_dir:
            fdir = Path(s.search.feature_dir)
            try:
                fdir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StageError(
                    f"--feature-dir {fdir}: cannot make this folder ({e.strerror or e}); pass a "
                    "folder that exists or can be made"
                ) from None

    def _check_coverage(self, run: StageRun, bounds, pad: float = 0.0) -> None:
        """Refuse a run in which no weak label lies in the tile source's extent ``bounds`` (EPSG:3857) grown by
        ``pad`` metres (the sample workspace's imagery with your own --queries): every photo would end as
        not_localized after a full search."""
        try:
            queries, _ = self._read_queries(run)
        except Exception:  # noqa: BLE001 - run() reports a bad queries file with its own message
            return
        if not len(queries) or near_extent(queries["center_lon"], queries["center_lat"], bounds, pad).any():
            return
        xmin, ymin, xmax, ymax = bounds
        (lo0, lo1), (la0, la1) = mercator_to_lonlat(np.array([xmin, xmax]), np.array([ymin, ymax]))
        raise StageError(
            f"none of the {len(queries)} weak labels of {run.settings.queries} lies in the imagery of "
            f"--tiles {run.settings.tiles} (lon {lo0:.2f} to {lo1:.2f}, lat {la0:.2f} to {la1:.2f}; the "
            f"labels span lon {queries['center_lon'].min():.2f} to {queries['center_lon'].max():.2f}, "
            f"lat {queries['center_lat'].min():.2f} to {queries['center_lat'].max():.2f}): pass --tiles "
            "with imagery that covers the photos (without --tiles it is the sample workspace's)"
        )

    def up_to_date(self, run: StageRun) -> str:
        out = run.output
        try:
            status = pq.read_table(out, columns=["status"])["status"].to_pandas()
        except Exception as e:  # noqa: BLE001
            raise StageError(
                f"{out} cannot be read as a footprints manifest ({type(e).__name__}: {e}); pass "
                "--overwrite to rebuild it"
            ) from None
        n = int((status == "error").sum())
        return (
            (
                f"; {n} of its {len(status)} rows are errors: once their files or paths are fixed, the same "
                "command with --retry-errors redoes only them"
            )
            if n
            else ""
        )

    def execute(self, settings: FootprintsSettings, workdir="workspace", overwrite: bool = False) -> str:
        """As every stage, except with ``retry_errors``: the existing output must come from the same
        settings (its inputs may have changed: fixed paths, restored files), and only its error rows
        and the photos it lacks are localized again."""
        if not settings.retry_errors:
            return super().execute(settings, workdir, overwrite)
        if overwrite:
            raise StageError("--retry-errors keeps the output's other rows, --overwrite redoes them all: pass one")
        # the old output stays until the new one replaces it
        run = StageRun(self, self.resolve(settings, Path(workdir)), Path(workdir), overwrite=True)
        out = run.output
        cfg = config_path(out)
        self.take_pending_config(out)
        if not (out.is_file() and cfg.is_file()):
            raise StageError(
                f"--retry-errors needs an existing output and its config ({out}, {cfg.name}); "
                "run without --retry-errors first"
            )
        # inputs may differ: fixed paths or restored photos are the point of a retry
        run.record = self.record(run.settings)
        diff = self.changed_settings(run, inputs=False)
        if diff:
            raise StageError(
                f"{out} was made with different settings (changed: {', '.join(diff)}); its rows "
                "cannot be kept beside new ones: use the same settings, or --overwrite to redo all"
            )
        return self._execute(run)

    @staticmethod
    def _retry_split(out: Path, queries: pd.DataFrame, rejected: pd.DataFrame):
        """For ``--retry-errors``: (the old rows to keep, as a table; the queries and rejected rows still to
        do). An old error row is redone when its photo is in the queries; every other old row is kept."""
        import pyarrow.compute as pc

        try:
            old = pq.read_table(out)
        except Exception as e:  # noqa: BLE001
            raise StageError(
                f"--retry-errors: {out} cannot be read as a footprints manifest ({type(e).__name__}: "
                f"{e}); its rows cannot be kept: run with --overwrite to redo them all"
            ) from None
        ids = set(queries["photo_id"]) | (set(rejected["photo_id"]) if len(rejected) else set())
        redo = pc.and_(pc.equal(old["status"], "error"), pc.is_in(old["photo_id"], value_set=pa.array(sorted(ids))))
        kept = old.filter(pc.invert(redo))
        done = set(kept["photo_id"].to_pylist())
        return (
            kept,
            queries[~queries["photo_id"].isin(done)],
            rejected[~rejected["photo_id"].isin(done)] if len(rejected) else rejected,
        )

    @staticmethod
    def _read_queries(run: StageRun) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(queries, rejected rows) of the run's queries, parsed once for :meth:`check` and :meth:`run`."""
        if "queries" not in run.memo:
            run.memo["queries"] = read_queries(Path(run.settings.queries), check_images=False, on_error="collect")
        return run.memo["queries"]

    def run(self, run: StageRun) -> str:
        s = run.settings
        qpath = Path(s.queries)
        queries, rejected = self._read_queries(run)
        if not len(queries) and not len(rejected):
            raise StageError(f"{qpath} has no photos (no data rows); nothing to localize")
        bad_rows = rejected["row"].to_numpy() if len(rejected) else np.empty(0, dtype=np.int64)
        queries = queries.assign(_row=np.setdiff1d(np.arange(len(queries) + len(rejected)), bad_rows))
        file_rows = None
        if s.retry_errors:  # old rows and new are sorted together: every photo's row in the file
            file_rows = pd.Series(
                np.concatenate([queries["_row"].to_numpy(), bad_rows]),
                index=pd.concat(
                    [queries["photo_id"], rejected["photo_id"].astype(str)] if len(rejected) else [queries["photo_id"]]
                ).to_numpy(),
            )
        if s.limit is not None:  # the first N rows of the file, bad ones (reported as errors) included
            rejected = rejected[rejected["row"] < s.limit] if len(rejected) else rejected
            queries = queries.head(max(0, s.limit - len(rejected)))
        out = Path(s.out)
        kept = None
        if s.retry_errors:
            kept, queries, rejected = self._retry_split(out, queries, rejected)
        records = queries[["photo_id", "image_path", "center_lat", "center_lon", *CATALOGUE]].to_dict("records")
        parts = run.parts_dir()
        # keyed by the photos to do, too: a --retry-errors stopped after replacing the output, run again, cuts its
        # batches from fewer error rows and must not take the stopped run's parts for them
        work = fingerprint({"photos": [str(r["photo_id"]) for r in records]})
        parts = parts.with_name(f"{parts.name}-{work}")
        parts.mkdir(parents=True, exist_ok=True)
        bs = s.batch_size
        batches = [records[i : i + bs] for i in range(0, len(records), bs)]
        todo = [k for k in range(len(batches)) if not (parts / f"batch{k:05d}.parquet").exists()]
        if len(todo) < len(batches):
            log.info("resuming: %d of %d batches already done", len(batches) - len(todo), len(batches))
        t0 = time.perf_counter()
        if todo:
            self._run_dask(s, batches, todo, parts)
        part_files = [parts / f"batch{k:05d}.parquet" for k in range(len(batches))]
        # in the file's order, bad rows where they are
        with ManifestWriter(out, FOOTPRINTS, before_replace=run.before_replace) as writer:
            for table in rows_in_file_order(queries, rejected, part_files, bs, kept, file_rows):
                writer.write(table)
        n_run = sum(len(batches[k]) for k in todo)
        resumed = len(batches) - len(todo)
        retried = (len(records) + len(rejected), kept.num_rows) if kept is not None else None
        return self._summary(s, out, n_run, time.perf_counter() - t0, resumed, retried)

    @staticmethod
    def _summary(
        s: FootprintsSettings, out: Path, n_run: int, wall_s: float, resumed: int, retried: tuple[int, int] | None
    ) -> str:
        table = pq.read_table(out, columns=["status", "reason", "elapsed_s"]).to_pandas()
        counts = table["status"].value_counts()
        lines = [
            f"footprints: {len(table)} photos -> {out}",
            "  decision: " + decision_line(s.calibration, s.min_inliers),
        ]
        for status in ("localized", "not_localized", "error"):
            lines.append(f"  {status:<14} {int(counts.get(status, 0)):>7d}")
        secs = table.loc[table["status"] != "error", "elapsed_s"].dropna()  # searched photos only
        lines.append(
            f"  {secs.mean() if len(secs) else 0.0:.1f} s per searched photo of worker time (median "
            f"{secs.median() if len(secs) else 0.0:.1f}); this run: {n_run} photos in {wall_s:.0f} s wall"
            + (f", {resumed} batches resumed" if resumed else "")
        )
        if retried is not None:
            lines.append(f"  retry: {retried[0]} photos searched again, {retried[1]} rows kept")
        errors = table.loc[table["status"] == "error", "reason"]
        if len(errors):
            lines.append(f"  {len(errors)} photos ended as errors; the commonest reasons (with counts):")
            for reason, n in errors.value_counts().head(3).items():
                lines.append(f"    {n:>7d}  {reason[:160]}")
            lines.append(
                f"  all rows: python -m pipeline inspect {out}; once fixed, the same command with "
                "--retry-errors redoes only these"
            )
        return "\n".join(lines)

    @staticmethod
    def _run_dask(s: FootprintsSettings, batches: list, todo: list[int], parts: Path) -> None:
        from pipeline.runtime import worker_environ

        search = s.search_settings()
        device = s.device
        matcher = matcher_name(search.extractor)
        with dask_client(s.scheduler, s.workers, device.startswith("cuda"), worker_environ(), WORKER_MEMORY_BYTES) as (
            client,
            threads,
        ):
            if s.scheduler:
                device = cluster_device(device, client, s.scheduler)
            gpu = device.startswith("cuda")

            def submit(rows: list[dict], part: str, suffix: str):
                return client.submit(
                    run_batch,
                    rows,
                    s.tiles,
                    search,
                    device,
                    part,
                    threads,
                    key=f"footprints-{parts.name}-{suffix}",
                    retries=2,
                    resources={"GPU": 1} if gpu else None,
                    pure=False,
                )

            def failed_rows(row: dict, e: BaseException) -> pd.DataFrame:
                why = (
                    "its worker process died each time it ran (out of memory, or a crash in native code)"
                    if type(e).__name__ == "KilledWorker"
                    else f"its task failed each time it ran ({type(e).__name__}: {e})"
                )
                return pd.DataFrame(
                    [
                        {
                            "photo_id": row["photo_id"],
                            "status": "error",
                            "matcher": matcher,
                            "reason": f"{why}; the other photos went on. Check {row['image_path']} by hand, "
                            "or give the workers more memory (fewer --workers)",
                        }
                    ]
                )

            def assemble(part: str, pieces: list) -> None:
                with ManifestWriter(part, FOOTPRINTS) as writer:
                    for piece in pieces:
                        writer.write(pq.read_table(piece) if isinstance(piece, str) else piece)

            work = [(str(parts / f"batch{k:05d}.parquet"), batches[k]) for k in todo]
            gather_isolating(client, work, submit, failed_rows, assemble, "footprints", "localized")
