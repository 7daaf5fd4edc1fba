"""``run describe``: descriptors of the database windows (at four rotations) and of the photos, into a store.

Windows and photos are cut into batches; each batch is one Dask task
(:func:`pipeline.descriptors.describe_batch`, the model loaded once per worker) that writes its shard and its
index rows atomically; an interrupted run resumes at the batches without an index part. The store
(``WORKDIR/descriptors/``: ``index.parquet``, ``shards-*/``) records the model beside its index: a store of
another model or preprocessing is refused (changed settings) rather than mixed.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from manifests import DATABASE, read_manifest, read_queries
from manifests.files import atomic_output
from pipeline.config import fingerprint
from pipeline.descriptors import INDEX_SCHEMA, describe_batch
from pipeline.geometry.windows import parse_zooms
from pipeline.model.checkpoint import model_identity
from pipeline.model.retrieval import CONFIGS
from pipeline.settings import Settings, setting

from .base import Stage, StageError, StageRun, source_files
from .cluster import check_cluster_options, check_device, cluster_device, dask_client, gather, resolve_device

log = logging.getLogger(__name__)


def _rotations(value) -> tuple[int, ...]:
    out = tuple(int(v) for v in (value if isinstance(value, (list, tuple)) else str(value).split(",")))
    if not out or any(r % 90 or not 0 <= r < 360 for r in out):
        raise ValueError(f"rotations must be some of 0, 90, 180, 270, got {value!r}")
    return out


@dataclass(frozen=True)
class DescribeSettings(Settings):
    section = "describe setting"

    database: str = setting("", "database manifest (default: WORKDIR/database.parquet)")
    tiles: str = setting("", "tile source of the database's windows (default: WORKDIR/tiles)")
    queries: str = setting(
        "",
        "photos to describe: queries CSV/Parquet or photo folder (default: "
        "WORKDIR/queries.parquet when it exists; none: windows only)",
    )
    out: str = setting("", "the store's index (default: WORKDIR/descriptors/index.parquet; shards beside it)")
    model: str = setting("cpu", f"a checkpoint of `run train`, or an untrained configuration: {', '.join(CONFIGS)}")
    backbone_weights: str | None = setting(
        None, "the official DINOv2 checkpoint for the paper configuration (dinov2_vitb14_pretrain.pth)"
    )
    region: str | None = setting(
        None,
        "only windows that touch this region and photos whose weak label lies in it: "
        "regions.geojson or regions.geojson#eval (its features with split=eval)",
    )
    zooms: tuple[int, ...] | None = setting(
        None, "only database windows of these zooms, e.g. 9-11 (none: all)", parse=parse_zooms
    )
    rotations: tuple[int, ...] = setting(
        (0, 90, 180, 270), "rotations of each database window, degrees clockwise", parse=_rotations
    )
    from_store: str | None = setting(
        None,
        "take the descriptors from this store (its index.parquet) instead of rendering the images again (seconds "
        "instead of hours): a store of --model itself (to keep a part of it: --region), or, when --model is an "
        "adapter checkpoint, of its frozen model (the adapter applied to them)",
    )
    limit: int | None = setting(None, "only the first N windows and the first N photos")
    dtype: str = setting("float16", "storage type of the descriptors", choices=("float16", "float32"))
    half: bool = setting(
        True,
        "the model in reduced precision: float16 autocast on CUDA, bfloat16 on a CPU with "
        "AVX512-BF16/AMX (3x faster here, descriptors within cosine 0.997), float32 "
        "elsewhere",
    )
    batch_size: int = setting(32, "windows or photos per Dask task", partition=True)
    images_per_forward: int = setting(16, "images per forward pass of the model", runtime=True)
    device: str = setting("auto", "auto, cpu, cuda or cuda:N", runtime=True)
    workers: int | None = setting(None, "local Dask worker processes (default: one per core)", runtime=True)
    scheduler: str | None = setting(None, "address of an existing Dask scheduler, e.g. tcp://host:8786", runtime=True)
    model_id: str | None = setting(None, "a fingerprint of the model and its weights files", derived=True)

    def check(self) -> None:
        self.need(self.limit is None or self.limit >= 1, "limit", "must be at least 1")
        self.need(self.batch_size >= 1, "batch_size", "must be at least 1")
        self.need(self.images_per_forward >= 1, "images_per_forward", "must be at least 1")


class DescribeStage(Stage):
    name = "describe"
    help = "descriptors of the database windows (four rotations) and of the photos, with a retrieval model"
    settings_class = DescribeSettings

    def resolve(self, s: DescribeSettings, workdir: Path) -> DescribeSettings:
        queries = s.queries or str(workdir / "queries.parquet")
        if queries != "none":
            queries = str(Path(queries).resolve()) if Path(queries).exists() or s.queries else "none"
        model = s.model if s.model in CONFIGS else str(Path(s.model).resolve())
        weights = str(Path(s.backbone_weights).resolve()) if s.backbone_weights else None
        return replace(
            s,
            database=str(Path(s.database or workdir / "database.parquet").resolve()),
            tiles=str(Path(s.tiles or workdir / "tiles").resolve()),
            queries=queries,
            out=str(Path(s.out or workdir / "descriptors" / "index.parquet").resolve()),
            model=model,
            backbone_weights=weights,
            device=resolve_device(s.device, remote=bool(s.scheduler)),
            model_id=fingerprint(model_identity(model, weights)),
            from_store=str(Path(s.from_store).resolve()) if s.from_store else None,
        )

    def output(self, s: DescribeSettings) -> Path:
        return Path(s.out)

    def input_files(self, s: DescribeSettings) -> list[Path]:
        files = [Path(s.database), *source_files(s.tiles)]
        if s.queries != "none":
            files += source_files(s.queries, image_folder=True)
        if s.region:
            files.append(Path(s.region.partition("#")[0]))
        if s.from_store:
            files += [Path(s.from_store), Path(s.from_store + ".config.toml")]
        return [f for f in files if f.is_file()]

    def check(self, run: StageRun) -> None:
        s = run.settings
        if not Path(s.database).is_file():
            raise StageError(
                f"database manifest not found: {s.database}; make it with `python -m pipeline run index` "
                "or pass --database FILE"
            )
        if s.model not in CONFIGS and not Path(s.model).is_file():
            raise StageError(f"--model {s.model}: neither a checkpoint file nor a configuration ({', '.join(CONFIGS)})")
        try:  # here, once: a missing weights file fails every task otherwise
            from pipeline.model.checkpoint import load_model

            model = load_model(s.model, s.backbone_weights)
            run.memo["dim"] = model.config.out_dim
        except ValueError as e:
            raise StageError(str(e)) from None
        if s.from_store:
            self._check_from_store(s, model)
        check_device(s.device, remote=bool(s.scheduler))
        check_cluster_options(s.scheduler, s.workers)

    @staticmethod
    def _check_from_store(s: DescribeSettings, model) -> None:
        """``--from-store`` needs a store of ``--model`` itself, or of the adapter's frozen model as it is now."""
        import tomllib

        from pipeline.model.adapter import AdaptedModel

        cfg_path = Path(s.from_store + ".config.toml")
        if not Path(s.from_store).is_file() or not cfg_path.is_file():
            raise StageError(f"--from-store {s.from_store}: no descriptor store there (index.parquet and its config)")
        cfg = tomllib.loads(cfg_path.read_text())["describe"]
        if not isinstance(model, AdaptedModel):
            if cfg.get("model_id") != s.model_id:
                raise StageError(
                    f"--from-store {s.from_store}: made by {cfg.get('model')}, not by --model {s.model}; "
                    "--from-store takes a store of the same model (to keep a part of it) or of an adapter's "
                    "frozen model"
                )
            return
        ref = model.reference
        now = fingerprint(model_identity(ref["model"], ref.get("backbone_weights") or None))
        if cfg.get("model") != ref["model"] or cfg.get("model_id") != now:
            raise StageError(
                f"--from-store {s.from_store}: made by {cfg.get('model')} (model id {cfg.get('model_id')}), not by "
                f"the adapter's frozen model {ref['model']} as it is now (model id {now}); describe with the "
                "frozen model again, or leave --from-store out"
            )

    def _work(self, s: DescribeSettings) -> tuple[list[tuple], list[tuple]]:
        """(windows as (tile_id, zoom), photos as (photo_id, image_path)) to describe."""
        db = read_manifest(s.database, DATABASE, columns=["tile_id", "zoom", "size_tiles", "geometry"], geometry=True)
        if s.zooms:
            db = db[db["zoom"].isin(s.zooms)]
        photos = []
        if s.queries != "none":
            q, _ = read_queries(s.queries, check_images=False, on_error="collect")
            photos = list(zip(q["photo_id"].astype(str), q["image_path"], q["center_lon"], q["center_lat"]))
        if s.region:
            import shapely

            from .pairs import read_regions

            path, _, name = s.region.partition("#")
            area = shapely.union_all(read_regions(path, name))
            db = db[shapely.intersects(db.geometry.to_numpy(), area)]
            photos = [p for p in photos if shapely.intersects(shapely.Point(p[2], p[3]), area)]
        windows = list(zip(db["tile_id"].astype(str), db["zoom"].astype(int)))
        photos = [(p[0], p[1]) for p in photos]
        if s.limit:
            windows, photos = windows[: s.limit], photos[: s.limit]
        return windows, photos

    def run(self, run: StageRun) -> str:
        s = run.settings
        out = Path(s.out)
        windows, photos = self._work(s)
        sizes = read_manifest(s.database, DATABASE, columns=["size_tiles"], geometry=False)["size_tiles"].unique()
        if len(sizes) > 1:
            raise StageError(f"{s.database}: windows of several sizes ({sorted(sizes)}); index one size per database")
        parts = run.parts_dir()
        parts.mkdir(parents=True, exist_ok=True)
        shards = (
            f"shards-{parts.name}"  # beside the index; an earlier run's shards are removed once this one's index is in
        )
        (out.parent / shards).mkdir(parents=True, exist_ok=True)
        bs = s.batch_size
        work = [("window", k, windows[i : i + bs]) for k, i in enumerate(range(0, len(windows), bs))]
        work += [("photo", k, photos[i : i + bs]) for k, i in enumerate(range(0, len(photos), bs))]
        todo = [w for w in work if not (parts / f"{w[0]}-{w[1]:05d}.parquet").exists()]
        if len(todo) < len(work):
            log.info("resuming: %d of %d batches already done", len(work) - len(todo), len(work))
        t0 = time.perf_counter()
        if todo and s.from_store:
            self._run_from_store(s, todo, out.parent, shards, parts, run.memo["dim"])
        elif todo:
            self._run_dask(s, todo, out.parent, shards, parts, int(sizes[0]) if len(sizes) else 4)
        wall = time.perf_counter() - t0
        index = (
            pa.concat_tables(
                [pq.read_table(parts / f"{kind}-{k:05d}.parquet").cast(INDEX_SCHEMA) for kind, k, _ in work]
            )
            if work
            else INDEX_SCHEMA.empty_table()
        )
        with atomic_output(out) as tmp:
            pq.write_table(index, tmp)
            run.before_replace(tmp)
        for old in out.parent.glob("shards-*"):
            if old.name != shards and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
        kinds = index.column("kind").to_numpy(zero_copy_only=False)
        n_w, n_p = int((kinds == "window").sum()), int((kinds == "photo").sum())
        done = sum(len(items) * (len(s.rotations) if kind == "window" else 1) for kind, _, items in todo)
        disk = sum(f.stat().st_size for f in (out.parent / shards).glob("*.npy"))
        return "\n".join(
            [
                f"describe: {len(windows)} windows x {len(s.rotations)} rotations ({n_w} descriptors) and {n_p} of "
                f"{len(photos)} photos -> {out}",
                f"  model {s.model}: {run.memo.get('dim', '?')} values, stored as {s.dtype} ({disk / 2**20:.1f} MiB in "
                f"{shards}/)",
                f"  this run: {done} images in {wall:.0f} s ({done / max(wall, 1e-9):.1f} images/s)"
                + (f", {len(work) - len(todo)} batches resumed" if len(todo) < len(work) else ""),
            ]
        )

    @staticmethod
    def _run_from_store(s: DescribeSettings, todo: list, folder: Path, shards: str, parts: Path, run_dim: int) -> None:
        """The adapter applied to the frozen store's descriptors (or, for the store's own model, those
        descriptors), batch by batch, each written as describe_batch writes its own: the shard, then its index
        part."""
        import torch

        from pipeline.descriptors import read_index, read_rows, write_shard
        from pipeline.model.checkpoint import load_model
        from pipeline.progress import progress

        adapter = getattr(load_model(s.model, s.backbone_weights), "adapter", None)  # none: the same model's store
        src = Path(s.from_store).parent
        index = read_index(src)
        where = {
            (k, i, int(r)): n for n, (k, i, r) in enumerate(zip(index["kind"], index["id"], index["rotation_deg"]))
        }
        missing = 0
        bar = progress(total=sum(len(items) for _, _, items in todo), desc="describe (adapt)", unit="item")
        for kind, k, items in todo:
            want = [(i[0], r) for i in items for r in (s.rotations if kind == "window" else (0,))]
            rows = [where.get((kind, i, r)) for i, r in want]
            missing += sum(r is None for r in rows)
            keep = [(w, n) for w, n in zip(want, rows) if n is not None]
            sel = index.iloc[[n for _, n in keep]]
            vecs = read_rows(src, sel, dim=run_dim if adapter is None else adapter.config.in_dim)
            with torch.no_grad():
                out = adapter(torch.from_numpy(vecs)).numpy() if adapter is not None else vecs
            write_shard(folder / f"{shards}/{kind}-{k:05d}.npy", out, s.dtype)
            table = pa.table(
                {
                    "kind": [kind] * len(sel),
                    "id": sel["id"].tolist(),
                    "rotation_deg": sel["rotation_deg"].tolist(),
                    "zoom": [None if z != z else int(z) for z in sel["zoom"].tolist()],  # photos: none
                    "shard": [f"{shards}/{kind}-{k:05d}.npy"] * len(sel),
                    "row": list(range(len(sel))),
                },
                schema=INDEX_SCHEMA,
            )
            with atomic_output(parts / f"{kind}-{k:05d}.parquet") as tmp:
                pq.write_table(table, tmp)
            bar.update(len(items))
        bar.close()
        if missing:
            log.warning("--from-store: %d descriptors asked for are not in %s; left out", missing, s.from_store)

    @staticmethod
    def _run_dask(s: DescribeSettings, todo: list, folder: Path, shards: str, parts: Path, size_tiles: int) -> None:
        from pipeline.runtime import worker_environ

        device = s.device
        with dask_client(s.scheduler, s.workers, device.startswith("cuda"), worker_environ()) as (client, threads):
            if s.scheduler:
                device = cluster_device(device, client, s.scheduler)
            gpu = device.startswith("cuda")
            futures = [
                client.submit(
                    describe_batch,
                    kind,
                    items,
                    str(folder),
                    f"{shards}/{kind}-{k:05d}.npy",
                    str(parts / f"{kind}-{k:05d}.parquet"),
                    s.model,
                    s.backbone_weights,
                    device,
                    s.tiles,
                    size_tiles,
                    s.rotations,
                    s.dtype,
                    s.images_per_forward,
                    threads,
                    s.half,
                    key=f"describe-{parts.name}-{kind}-{k}",
                    retries=2,
                    resources={"GPU": 1} if gpu else None,
                    pure=False,
                )
                for kind, k, items in todo
            ]
            gather(futures, sum(len(items) for _, _, items in todo), "describe", "described")


__all__ = ["DescribeSettings", "DescribeStage"]
