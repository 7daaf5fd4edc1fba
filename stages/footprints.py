"""``run footprints``: weak labels -> full footprints, on a Dask cluster (local by default).

Photos are split into batches; each batch is one Dask task that localizes its photos with
:class:`pipeline.footprint.search.FootprintSearch` (one per worker process, models loaded once)
and writes its rows as an atomic part file. An interrupted run resumes at the batches that
have no part file; a task whose worker dies is retried. Every photo ends in the manifest:
``localized``, ``not_localized`` with a reason, or ``error`` with a reason.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from manifests import DECISIONS, FOOTPRINTS, ManifestWriter, read_queries, to_table, write_manifest
from pipeline.config import config_path, files_fingerprint, fingerprint
from pipeline.footprint.batch import CATALOGUE, decision_rows, footprint_row, matcher_name
from pipeline.footprint.search import NO_MODEL_MIN_INLIERS, default_conf as search_conf, validate_conf
from pipeline.geometry.mercator import MAX_LATITUDE, ORIGIN_SHIFT_M
from pipeline.runtime import release_heap_over, worker_device, worker_memory_limit

from .base import Stage, StageError, source_files
from .cluster import check_cluster_options, dask_client, gather_isolating
from .index import parse_zooms

log = logging.getLogger(__name__)

WORKER_MEMORY_BYTES = 5 * 2**30
"""Memory a footprints worker should have: it peaks at 3.8-4.0 GB (``python bench/heap.py`` over 20 sample
photos): the models, caches and a photo's prepared features, plus up to 1.1 GB of ALIKED dense maps during one
extraction. Dask pauses a worker above 80 % of its limit and restarts it above 95 %. Bounds the default number
of local workers."""

_SEARCHERS: dict[str, Any] = {}
"""Per worker process: one FootprintSearch (models, feature cache) per config."""


def _searcher(tiles: str, conf: dict, device: str):
    cal = conf.get("calibration")  # a calibration refitted in place is another decision
    cal_id = files_fingerprint([Path(cal)]) if cal and cal != "packaged" and Path(cal).is_file() else None
    key = fingerprint({"tiles": tiles, "device": device, "calibration_file": cal_id, **conf})
    if key not in _SEARCHERS:
        from pipeline.footprint.search import FootprintSearch
        from pipeline.imagery import open_tile_source

        _SEARCHERS.clear()
        _SEARCHERS[key] = FootprintSearch(open_tile_source(tiles), device=device, **conf)
    return _SEARCHERS[key]


def check_device(device: Any, remote: bool = False) -> None:
    """``device`` must be ``auto``, ``cpu``, ``cuda`` (one GPU per worker) or ``cuda:N``; CUDA must exist here
    unless the workers are ``remote`` (an existing cluster's machines may have GPUs this one lacks)."""
    import re

    if not isinstance(device, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise StageError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if device.startswith("cuda") and not remote:
        import torch

        if not torch.cuda.is_available():
            why = "torch was built without CUDA" if torch.version.cuda is None else "no GPU is visible"
            raise StageError(f"--device {device}: CUDA is not available here ({why}); use --device cpu, or "
                             "--scheduler with a cluster whose workers have GPUs")


def resolve_device(device: str, remote: bool = False) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU here, else ``cpu``; other values as given. With ``remote``
    workers ``auto`` stays: it is settled by the cluster's workers (:func:`cluster_device`)."""
    if device != "auto" or remote:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cluster_device(device: str, client: Any, scheduler: str) -> str:
    """The device on an existing cluster: ``auto`` -> ``cuda`` when a worker declares the ``GPU`` resource,
    else ``cpu``; ``cuda`` when none declares it is refused (its tasks, annotated ``{"GPU": 1}``, would wait
    for ever)."""
    if not client.scheduler_info().get("workers"):  # a scheduler started before its (jobqueue, SLURM) workers
        log.info("waiting for the first worker of %s to decide the device", scheduler)
        client.wait_for_workers(1)
    workers = client.scheduler_info().get("workers", {})
    gpus = sum(1 for w in workers.values() if (w.get("resources") or {}).get("GPU", 0) >= 1)
    if device == "auto":
        device = "cuda" if gpus else "cpu"
        log.info("--device auto: %s (%d of the %d workers of %s declare a GPU)", device, gpus, len(workers), scheduler)
    elif device.startswith("cuda") and not gpus:
        raise StageError(f"--device {device}: none of the {len(workers)} workers of {scheduler} declares the GPU "
                         "resource, so the tasks would wait for ever; start the workers with `dask worker "
                         f"{scheduler} --resources GPU=1` on machines with a GPU, or pass --device cpu")
    return device


def _decision_line(conf: dict[str, Any]) -> str:
    """How this run decides, for its summary."""
    from pipeline.footprint.calibration import PACKAGED, Calibration

    cal = conf["calibration"]
    if not cal:
        return f"{conf['min_inliers']} inliers after refinement (no calibration)"
    model = Calibration.load(PACKAGED if cal == "packaged" else cal).model
    floor = f", and {conf['min_inliers']} inliers" if conf["min_inliers"] else ""
    return (f"P(right | {', '.join(model.features)}) >= {model.operating_point:.3g}{floor} "
            f"({'the packaged calibration' if cal == 'packaged' else cal})")


def run_batch(rows: list[dict], tiles: str, conf: dict, device: str, part: str, threads: int = 0,
              decisions: int = 0) -> dict:
    """A Dask task: localize a batch of photos and write their rows to ``part`` (atomically).

    ``threads``: torch threads in this worker (Dask sets OMP_NUM_THREADS=1 in its workers;
    with fewer workers than cores that leaves cores idle). ``decisions`` > 0: for calibration, the
    decisions of that many refined candidates per photo (a decisions manifest) instead of footprints."""
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    device = worker_device(device)  # "cuda" -> this worker's GPU
    search = _searcher(tiles, conf, device)
    matcher = matcher_name(conf["extractor"])
    limit = worker_memory_limit()
    out = []
    for r in rows:
        out += decision_rows(search, r, matcher, decisions) if decisions else [footprint_row(search, r, matcher)]
        release_heap_over(limit)  # else a Dask worker paused for memory would never resume
    write_manifest(pd.DataFrame(out), part, DECISIONS if decisions else FOOTPRINTS)
    return {"photos": len(rows), "localized": sum(o["status"] == "localized" for o in out),
            "seconds": sum(o["elapsed_s"] for o in out if o.get("elapsed_s"))}


def _in_file_order(queries: pd.DataFrame, rejected: pd.DataFrame, part_files: list[Path], batch_size: int,
                   kept: pa.Table | None = None, file_rows: pd.Series | None = None):
    """Yield the manifest's rows in the queries file's order.

    ``queries`` (with ``_row``, the file row) were searched in batches of ``batch_size`` whose rows are in
    ``part_files``; ``rejected`` (with ``row``) are the bad rows, each one error row put where it is in the file.
    Streams a part file at a time. With ``kept`` (``--retry-errors``: the old manifest's rows to keep, already in
    memory) all rows are sorted at once by ``file_rows`` (photo_id -> file row, the whole file); kept rows of
    photos the file no longer has come last, in their old order."""
    def order(table: pa.Table, rows: pd.Series) -> pa.Table:
        key = rows.reindex(table.column("photo_id").to_pandas()).to_numpy(dtype=np.float64, copy=True)
        gone = np.isnan(key)
        key[gone] = np.inf
        return table.take(pa.array(np.argsort(key, kind="stable")))

    if len(rejected):
        err = to_table(pd.DataFrame({"photo_id": rejected["photo_id"].astype(str), "status": "error",
                                     "reason": "bad queries row: " + rejected["reason"].astype(str)}), FOOTPRINTS)
        err_rows = rejected["row"].to_numpy()
    else:
        err, err_rows = None, np.empty(0, dtype=np.int64)
    if kept is not None:
        tables = [kept, *(pq.read_table(f) for f in part_files)] + ([err] if err is not None else [])
        yield order(pa.concat_tables([t.cast(FOOTPRINTS.schema) for t in tables]), file_rows)
        return
    done = 0  # bad rows yielded so far (err_rows is sorted)
    for k, f in enumerate(part_files):
        batch = queries.iloc[k * batch_size : (k + 1) * batch_size]
        upto = int(np.searchsorted(err_rows, int(batch["_row"].iloc[-1]), side="right"))
        rows = pd.Series(np.concatenate([batch["_row"].to_numpy(), err_rows[done:upto]]),
                         index=np.concatenate([batch["photo_id"].to_numpy(dtype=object),
                                               rejected["photo_id"].iloc[done:upto].astype(str).to_numpy(dtype=object)]))
        pieces = [pq.read_table(f).cast(FOOTPRINTS.schema)] + ([err.slice(done, upto - done)] if err is not None else [])
        done = upto
        yield order(pa.concat_tables(pieces), rows)
    if err is not None:
        yield err.slice(done)


class FootprintsStage(Stage):
    name = "footprints"
    help = "localize photos from their weak labels: full footprints (candidates, LightGlue, refinement)"
    default_conf = {
        "queries": "",
        "tiles": "",
        "out": "",
        "batch_size": 4,
        "limit": None,
        "device": "auto",
        "workers": None,
        "scheduler": None,
        "retry_errors": False,
        **{k: v for k, v in search_conf.items()},
        "min_inliers": None,  # None: 0 with a calibration, NO_MODEL_MIN_INLIERS without
        "calibration": "",  # "": WORKDIR/calibration.json if present, else the packaged one; "none": no calibration
    }
    runtime_keys = ("workers", "scheduler", "device", "batch_size", "feature_dir", "feature_cache", "retry_errors")
    # device: like the threads per worker, it changes inlier counts by a few at most (float16 autocast on CUDA), and
    # an output made on a GPU machine must be up to date, resumable and retryable on another
    option_types = {"limit": int, "workers": int, "scheduler": str, "min_inliers": int, "feature_dir": str,
                    "weights_dir": str, "offset_zooms": int, "contrast": str}
    partition_keys = ("batch_size", "retry_errors")

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--queries", help="queries CSV/Parquet or photo folder (default: WORKDIR/queries.parquet, "
                                         "the sample workspace, created when missing)")
        p.add_argument("--tiles", help="tile source (default: WORKDIR/tiles)")
        p.add_argument("--out", help="footprints manifest (default: WORKDIR/footprints.parquet)")
        p.add_argument("--extractor", choices=["aliked", "disk", "superpoint", "sift"],
                       help="local features (default aliked; superpoint needs --weights-dir)")
        p.add_argument("--weights-dir", dest="weights_dir",
                       help="folder with user-supplied weights: superpoint_v1.pth and superpoint_lightglue.pth")
        p.add_argument("--zooms", type=parse_zooms, help="candidate zooms (default 8-12)")
        p.add_argument("--min-inliers", dest="min_inliers", type=int,
                       help="inliers a footprint needs besides the calibrated decision (default 0; with --calibration "
                            f"none it is the decision: default {NO_MODEL_MIN_INLIERS})")
        p.add_argument("--calibration", help="calibration.json from `run calibrate` (default: WORKDIR/calibration.json "
                                             "if present, else the packaged one for aliked; 'none' for no calibration)")
        p.add_argument("--batch-size", dest="batch_size", type=int, help="photos per Dask task (default 4)")
        p.add_argument("--limit", type=int, help="only the first N rows of the queries (bad rows among them end as errors)")
        p.add_argument("--feature-dir", dest="feature_dir",
                       help="keep database-window features on disk here, for all workers and later runs "
                            "(default: in memory, per worker)")
        p.add_argument("--device", help="auto (default: cuda when a GPU is visible, on --scheduler when a worker "
                                        "declares one; else cpu), cpu, cuda or cuda:N")
        p.add_argument("--workers", type=int, help="local Dask worker processes (default: one per core, one thread each; "
                                                      "with cuda: one per GPU)")
        p.add_argument("--scheduler", help="address of an existing Dask scheduler, e.g. tcp://host:8786")
        p.add_argument("--retry-errors", dest="retry_errors", action="store_true", default=None,
                       help="localize again only the photos whose rows in the existing --out are errors (and any "
                            "photo of the queries it lacks), keeping every other row; after fixing files or paths")

    def resolve(self, conf: dict[str, Any], workdir: Path) -> dict[str, Any]:

        conf = dict(conf)
        self._workdir = workdir
        conf["queries"] = str(Path(conf["queries"] or workdir / "queries.parquet").resolve())
        conf["tiles"] = str(Path(conf["tiles"] or workdir / "tiles").resolve())
        conf["out"] = str(Path(conf["out"] or workdir / "footprints.parquet").resolve())
        conf["zooms"] = parse_zooms(conf["zooms"])
        if conf["weights_dir"]:
            conf["weights_dir"] = str(Path(conf["weights_dir"]).resolve())
        if conf["extractor"] == "superpoint":  # fail here, with the list of files, not in every worker
            from pipeline.matching.weights import WeightsNotFoundError, user_weights_path

            try:
                for kind in ("superpoint", "superpoint_lightglue"):
                    user_weights_path(conf["weights_dir"], kind)
            except WeightsNotFoundError as e:
                raise StageError(str(e)) from None
        if conf["feature_dir"]:  # one subfolder per tile source: its path and its top-level files' names, sizes and
            # times (a raster, a folder of rasters, a VRT file, world.toml: replaced, they get new features; an XYZ
            # folder's tiles are not listed: after replacing them, empty the feature folder); the search adds one
            # subfolder per feature config
            tiles_id = fingerprint({"tiles": conf["tiles"], "files": files_fingerprint(source_files(conf["tiles"]))})
            conf["feature_dir"] = str(Path(conf["feature_dir"]).resolve() / f"tiles-{tiles_id}")
        if conf["device"] == "auto":
            conf["device"] = resolve_device("auto", remote=bool(conf["scheduler"]))
        if conf["limit"] is not None and conf["limit"] < 1:
            raise StageError(f"--limit must be at least 1 (the first N rows of the queries), got {conf['limit']}")
        if conf["batch_size"] < 1:
            raise StageError(f"--batch-size must be at least 1, got {conf['batch_size']}")
        try:  # here, once, rather than in every Dask task; before the calibration is compared with the settings
            validate_conf({**{k: conf[k] for k in search_conf}, "min_inliers": conf["min_inliers"] or 0})
        except ValueError as e:
            raise StageError(f"{e} (in --config or the options)") from None
        conf["calibration"], conf["calibration_model"] = self._calibration(conf, workdir)
        if conf["min_inliers"] is None:
            conf["min_inliers"] = 0 if conf["calibration"] else NO_MODEL_MIN_INLIERS
        return conf

    @staticmethod
    def _calibration(conf: dict[str, Any], workdir: Path) -> tuple[str | None, str | None]:
        """The calibration that applies to this run, for the search ("packaged", a file's absolute path, or None)
        and a fingerprint of its model for the output's record (a refitted file is another decision)."""
        from pipeline.footprint.calibration import PACKAGED, Calibration

        given = conf["calibration"]
        if given == "none":
            return None, None
        path = Path(given) if given else workdir / "calibration.json"
        if given and not path.is_file():
            raise StageError(f"calibration file not found: {path}; make one with `python -m pipeline run calibrate`, "
                             "or pass --calibration none")
        packaged = not path.is_file()
        try:
            cal = Calibration.load(PACKAGED if packaged else path)
        except ValueError as e:
            raise StageError(str(e)) from None
        if cal.extractor != conf["extractor"]:
            if given or not packaged:
                raise StageError(f"{path} was fitted for {cal.extractor} features, this run uses {conf['extractor']}; "
                                 f"calibrate for them (`run calibrate --extractor {conf['extractor']}`) or pass "
                                 "--calibration none")
            log.warning("no calibration for %s features (the packaged one is for %s): footprints are accepted on "
                        "--min-inliers alone (default %d) and have no confidence; fit one with `python -m pipeline run "
                        "calibrate --extractor %s`", conf["extractor"], cal.extractor, NO_MODEL_MIN_INLIERS,
                        conf["extractor"])
            return None, None
        differ = [f"{k} = {conf[k]!r} (fitted with {v!r})" for k, v in cal.search.items() if k in conf and conf[k] != v]
        if differ:
            log.warning("the calibration %s was fitted on evidence of another search: %s; the confidence of these "
                        "footprints is not what it was fitted for: fit one with these settings (`python -m pipeline "
                        "run calibrate`)", "packaged with the pipeline" if packaged else path, ", ".join(differ))
        return ("packaged" if packaged else str(path.resolve())), fingerprint(cal.model.to_dict())

    def output(self, conf: dict[str, Any]) -> Path:
        return Path(conf["out"])

    def input_files(self, conf: dict[str, Any]) -> list[Path]:
        return source_files(conf["queries"], image_folder=True) + source_files(conf["tiles"])

    def prepare(self, conf: dict[str, Any]) -> None:
        qpath = Path(conf["queries"])
        if not qpath.exists() and qpath == (Path(self._workdir) / "queries.parquet").resolve():
            from .sample import ensure_sample

            ensure_sample(self._workdir)

    def check(self, conf: dict[str, Any]) -> None:
        qpath = Path(conf["queries"])
        if not qpath.exists():
            raise StageError(f"queries not found: {qpath}; pass --queries with a CSV or Parquet file (photo_id, "
                             "image_path, center_lat, center_lon) or a folder of EarthLoc-named photos")
        tiles = conf["tiles"]
        try:  # here, once, not in every Dask task: a wrong path would make every photo an error row
            from pipeline.imagery import open_tile_source

            source = open_tile_source(tiles)
        except (FileNotFoundError, ValueError, OSError) as e:
            raise StageError(f"--tiles: {e}") from None
        # a label within one coarsest-zoom window of the imagery still has candidates (windows with 5 % imagery)
        pad = conf["size_tiles"] * 2 * ORIGIN_SHIFT_M / 2 ** min(conf["zooms"])
        self._check_coverage(qpath, tiles, source.bounds_mercator, pad)
        check_device(conf["device"], remote=bool(conf["scheduler"]))
        check_cluster_options(conf["scheduler"], conf["workers"])
        if conf["feature_dir"]:
            fdir = Path(conf["feature_dir"]).parent  # the folder given; the search writes below it
            try:
                fdir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StageError(f"--feature-dir {fdir}: cannot make this folder ({e.strerror or e}); pass a "
                                 "folder that exists or can be made") from None

    def _check_coverage(self, qpath: Path, tiles: str, bounds, pad: float = 0.0) -> None:
        """Refuse a run in which no weak label lies in the tile source's extent ``bounds`` (EPSG:3857) grown by
        ``pad`` metres (the sample workspace's imagery with your own --queries): every photo would end as
        not_localized after a full search."""
        from pipeline.geometry.mercator import lonlat_to_mercator

        try:
            queries, _ = self._read_queries(qpath)
        except Exception:  # noqa: BLE001 - run() reports a bad queries file with its own message
            return
        if not len(queries):
            return
        lat = queries["center_lat"].to_numpy(float).clip(-MAX_LATITUDE, MAX_LATITUDE)
        x, y = lonlat_to_mercator(queries["center_lon"].to_numpy(float), lat)
        xmin, ymin, xmax, ymax = bounds
        world = 2.0 * ORIGIN_SHIFT_M  # a label at lon -179.9 is next to imagery at 179.9 (windows wrap)
        near_x = np.zeros(len(x), bool)
        for shift in (-world, 0.0, world):
            near_x |= (x + shift >= xmin - pad) & (x + shift <= xmax + pad)
        if np.any(near_x & (y >= ymin - pad) & (y <= ymax + pad)):
            return
        from pipeline.geometry.mercator import mercator_to_lonlat

        (lo0, lo1), (la0, la1) = mercator_to_lonlat(np.array([xmin, xmax]), np.array([ymin, ymax]))
        raise StageError(f"none of the {len(queries)} weak labels of {qpath} lies in the imagery of --tiles {tiles} "
                         f"(lon {lo0:.2f} to {lo1:.2f}, lat {la0:.2f} to {la1:.2f}; the labels span lon "
                         f"{queries['center_lon'].min():.2f} to {queries['center_lon'].max():.2f}, lat "
                         f"{queries['center_lat'].min():.2f} to {queries['center_lat'].max():.2f}): pass --tiles with "
                         "imagery that covers the photos (without --tiles it is the sample workspace's)")

    def up_to_date(self, conf: dict[str, Any]) -> str:
        out = self.output(conf)
        try:
            status = pq.read_table(out, columns=["status"])["status"].to_pandas()
        except Exception as e:  # noqa: BLE001
            raise StageError(f"{out} cannot be read as a footprints manifest ({type(e).__name__}: {e}); pass "
                             "--overwrite to rebuild it") from None
        n = int((status == "error").sum())
        return (f"; {n} of its {len(status)} rows are errors: once their files or paths are fixed, the same "
                "command with --retry-errors redoes only them") if n else ""

    def execute(self, conf: dict[str, Any], overwrite: bool = False) -> str:
        """As every stage, except with ``retry_errors``: the existing output must come from the same
        settings (its inputs may have changed: fixed paths, restored files), and only its error rows
        and the photos it lacks are localized again."""
        if not conf["retry_errors"]:
            return super().execute(conf, overwrite)
        if overwrite:
            raise StageError("--retry-errors keeps the output's other rows, --overwrite redoes them all: pass one")
        out = self.output(conf)
        cfg = config_path(out)
        self.take_pending_config(out)
        if not (out.is_file() and cfg.is_file()):
            raise StageError(f"--retry-errors needs an existing output and its config ({out}, {cfg.name}); "
                             "run without --retry-errors first")
        # inputs may differ: fixed paths or restored photos are the point of a retry
        diff = self.changed_settings(conf, self._record(conf), inputs=False)
        if diff:
            raise StageError(f"{out} was made with different settings (changed: {', '.join(diff)}); its rows "
                             "cannot be kept beside new ones: use the same settings, or --overwrite to redo all")
        return super().execute(conf, overwrite=True)  # the old output stays until the new one replaces it

    def _retry_split(self, out: Path, queries: pd.DataFrame, rejected: pd.DataFrame):
        """For ``--retry-errors``: (the old rows to keep, as a table; the queries and rejected rows still to
        do). An old error row is redone when its photo is in the queries; every other old row is kept."""
        import pyarrow.compute as pc

        try:
            old = pq.read_table(out)
        except Exception as e:  # noqa: BLE001
            raise StageError(f"--retry-errors: {out} cannot be read as a footprints manifest ({type(e).__name__}: "
                             f"{e}); its rows cannot be kept: run with --overwrite to redo them all") from None
        ids = set(queries["photo_id"]) | (set(rejected["photo_id"]) if len(rejected) else set())
        redo = pc.and_(pc.equal(old["status"], "error"), pc.is_in(old["photo_id"], value_set=pa.array(sorted(ids))))
        kept = old.filter(pc.invert(redo))
        done = set(kept["photo_id"].to_pylist())
        return (kept, queries[~queries["photo_id"].isin(done)],
                rejected[~rejected["photo_id"].isin(done)] if len(rejected) else rejected)

    def _read_queries(self, qpath: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(queries, rejected rows) of ``qpath``, parsed once for :meth:`check` and :meth:`run` of one execution:
        the second call reuses the first's while the file (or folder) keeps its size and modification time."""
        st = qpath.stat()
        key = (str(qpath.resolve()), st.st_mtime_ns, st.st_size)
        cached = getattr(self, "_queries_cache", None)
        if cached is None or cached[0] != key:
            cached = (key, read_queries(qpath, check_images=False, on_error="collect"))
            self._queries_cache = cached
        return cached[1]

    def run(self, conf: dict[str, Any]) -> str:
        qpath = Path(conf["queries"])
        queries, rejected = self._read_queries(qpath)
        self._queries_cache = None  # the next execution reads the file afresh
        if not len(queries) and not len(rejected):
            raise StageError(f"{qpath} has no photos (no data rows); nothing to localize")
        bad_rows = rejected["row"].to_numpy() if len(rejected) else np.empty(0, dtype=np.int64)
        queries = queries.assign(_row=np.setdiff1d(np.arange(len(queries) + len(rejected)), bad_rows))
        file_rows = None
        if conf["retry_errors"]:  # old rows and new are sorted together: every photo's row in the file
            file_rows = pd.Series(np.concatenate([queries["_row"].to_numpy(), bad_rows]),
                                  index=pd.concat([queries["photo_id"], rejected["photo_id"].astype(str)]
                                                  if len(rejected) else [queries["photo_id"]]).to_numpy())
        if conf["limit"] is not None:  # the first N rows of the file, bad ones (reported as errors) included
            n = int(conf["limit"])
            rejected = rejected[rejected["row"] < n] if len(rejected) else rejected
            queries = queries.head(max(0, n - len(rejected)))
        out = Path(conf["out"])
        kept = None
        if conf["retry_errors"]:
            kept, queries, rejected = self._retry_split(out, queries, rejected)
        search = {k: conf[k] for k in search_conf}
        records = queries[["photo_id", "image_path", "center_lat", "center_lon", *CATALOGUE]].to_dict("records")
        parts = self.parts_dir(conf)
        # keyed by the photos to do, too: a --retry-errors stopped after replacing the output, run again, cuts its
        # batches from fewer error rows and must not take the stopped run's parts for them
        work = fingerprint({"photos": [str(r["photo_id"]) for r in records]})
        parts = parts.with_name(f"{parts.name}-{work}")
        parts.mkdir(parents=True, exist_ok=True)
        bs = int(conf["batch_size"])
        batches = [records[i : i + bs] for i in range(0, len(records), bs)]
        todo = [k for k in range(len(batches)) if not (parts / f"batch{k:05d}.parquet").exists()]
        if len(todo) < len(batches):
            log.info("resuming: %d of %d batches already done", len(batches) - len(todo), len(batches))
        t0 = time.perf_counter()
        if todo:
            self._run_dask(conf, search, batches, todo, parts)
        part_files = [parts / f"batch{k:05d}.parquet" for k in range(len(batches))]
        # in the file's order, bad rows where they are
        with ManifestWriter(out, FOOTPRINTS, before_replace=self.before_replace) as writer:
            for table in _in_file_order(queries, rejected, part_files, bs, kept, file_rows):
                writer.write(table)
        table = pq.read_table(out, columns=["status", "reason", "elapsed_s"]).to_pandas()
        counts = table["status"].value_counts()
        lines = [f"footprints: {len(table)} photos -> {out}", "  decision: " + _decision_line(conf)]
        for s in ("localized", "not_localized", "error"):
            lines.append(f"  {s:<14} {int(counts.get(s, 0)):>7d}")
        secs = table.loc[table["status"] != "error", "elapsed_s"].dropna()  # searched photos only
        n_run = sum(len(batches[k]) for k in todo)
        lines.append(f"  {secs.mean() if len(secs) else 0.0:.1f} s per searched photo of worker time (median "
                     f"{secs.median() if len(secs) else 0.0:.1f}); this run: {n_run} photos in "
                     f"{time.perf_counter() - t0:.0f} s wall" + (f", {len(batches) - len(todo)} batches resumed"
                                                                 if len(todo) < len(batches) else ""))
        if kept is not None:
            lines.append(f"  retry: {len(records) + len(rejected)} photos searched again, {kept.num_rows} rows kept")
        errors = table.loc[table["status"] == "error", "reason"]
        if len(errors):
            lines.append(f"  {len(errors)} photos ended as errors; the commonest reasons (with counts):")
            for reason, n in errors.value_counts().head(3).items():
                lines.append(f"    {n:>7d}  {reason[:160]}")
            lines.append(f"  all rows: python -m pipeline inspect {out}; once fixed, the same command with "
                         "--retry-errors redoes only these")
        return "\n".join(lines)

    def _run_dask(self, conf: dict, search: dict, batches: list, todo: list[int], parts: Path) -> None:
        from pipeline.runtime import worker_environ

        device = conf["device"]
        matcher = matcher_name(conf["extractor"])
        with dask_client(conf["scheduler"], conf["workers"], device.startswith("cuda"), worker_environ(),
                         WORKER_MEMORY_BYTES) as (client, threads):
            if conf["scheduler"]:
                device = cluster_device(device, client, conf["scheduler"])
            gpu = device.startswith("cuda")

            def submit(rows: list[dict], part: str, suffix: str):
                return client.submit(run_batch, rows, conf["tiles"], search, device, part, threads, key=f"footprints-{parts.name}-{suffix}", retries=2,
                                     resources={"GPU": 1} if gpu else None, pure=False)

            def failed_rows(row: dict, e: BaseException) -> pd.DataFrame:
                why = ("its worker process died each time it ran (out of memory, or a crash in native code)"
                       if type(e).__name__ == "KilledWorker" else f"its task failed each time it ran ({type(e).__name__}: {e})")
                return pd.DataFrame([{"photo_id": row["photo_id"], "status": "error", "matcher": matcher,
                                      "reason": f"{why}; the other photos went on. Check {row['image_path']} by hand, "
                                                "or give the workers more memory (fewer --workers)"}])

            def assemble(part: str, pieces: list) -> None:
                with ManifestWriter(part, FOOTPRINTS) as writer:
                    for piece in pieces:
                        writer.write(pq.read_table(piece) if isinstance(piece, str) else piece)

            work = [(str(parts / f"batch{k:05d}.parquet"), batches[k]) for k in todo]
            gather_isolating(client, work, submit, failed_rows, assemble, "footprints", "localized")
