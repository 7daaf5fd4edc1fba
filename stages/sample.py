"""``run sample``: a synthetic workspace with simulated astronaut photos and their ground truth.

Writes into the workspace folder (``--workdir``, or ``--out``):

- ``tiles/world.toml``: the procedural world (a tile source every stage can open), covering
  the region and a margin of :data:`IMAGERY_MARGIN_DEG` around it;
- ``photos/<photo_id>.jpg``: the simulated photos;
- ``database.parquet``: the database windows (zooms 8-12) at least :data:`INDEX_MIN_VALID`
  covered, made by the index stage;
- ``truth.parquet``: per photo the exact footprint, localizable or why not, the camera;
- ``regions.geojson``: the training (west) and held-out evaluation (east) regions;
- ``queries.parquet``: the photos and their weak labels, with their split; written last.

Photos are rendered in batches; each finished batch is kept as a part file, so an
interrupted run resumes at the first unfinished batch.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from manifests import QUERIES, TRUTH, read_manifest, write_manifest
from manifests.files import atomic_output
from pipeline.geometry.windows import DEFAULT_ZOOMS, parse_zooms
from pipeline.progress import progress
from pipeline.runtime import host_cores
from pipeline.settings import Settings, setting
from pipeline.simulate.sample import SIZES, PhotoPlan, plan_photos, query_row, render_photo, split_boxes
from pipeline.world import ProceduralWorld, save_world

from .base import Stage, StageRun
from .index import IndexSettings, IndexStage

log = logging.getLogger(__name__)

BATCH = 16
"""Photos per part file."""
IMAGERY_MARGIN_DEG = 1.0
"""The world's imagery extends this far beyond the photos' region on every side."""
INDEX_MIN_VALID = 0.25
"""Database windows at least this valid are kept: a zoom-8 window is 5.6 deg wide, so over a
small region most are partly empty, and the footprint search still wants them."""


def _init_worker() -> None:
    # one process per core: each render single-threaded
    from pipeline.world import procedural

    procedural.RENDER_THREADS = 1


def _render(args: tuple[PhotoPlan, int, str]) -> dict:
    plan, seed, photos_dir = args
    jpeg, truth, _ = render_photo(plan, seed)
    rel = f"photos/{plan.photo_id}.jpg"
    with atomic_output(Path(photos_dir) / f"{plan.photo_id}.jpg") as tmp:
        tmp.write_bytes(jpeg)
    nadir = (truth["nadir_lon"], truth["nadir_lat"])
    return {"truth": truth, "query": query_row(plan, nadir, rel)}


@dataclass(frozen=True)
class SampleSettings(Settings):
    section = "sample setting"

    out: str = setting("", "workspace folder to create (default: --workdir)")
    size: str = setting(
        "small",
        "tiny (2x2 deg, 10 photos, for tests), small (6x4 deg, 200 photos), large "
        "(30x20 deg, 3000 photos, for benchmarks)",
        choices=sorted(SIZES),
    )
    seed: int = setting(0, "random seed: the same seed gives byte-identical manifests")
    photos: int | None = setting(None, "number of photos (default: the size's)")
    zooms: tuple[int, ...] = setting(DEFAULT_ZOOMS, "database zoom levels, e.g. 8-12", parse=parse_zooms)
    workers: int | None = setting(None, "rendering processes (default: up to 2, one per core)", runtime=True)
    preview: str | None = setting(
        None,
        "also write a contact sheet of photos beside their north-up truth to this PNG",
        runtime=True,
        metavar="PNG",
    )

    def check(self) -> None:
        self.need(self.photos is None or self.photos >= 1, "photos", "must be at least 1")
        self.need(0 <= self.seed < 2**32, "seed", "must lie in [0, 2**32)")


class SampleStage(Stage):
    name = "sample"
    help = "create a synthetic workspace: a procedural world, simulated ISS photos and their ground truth"
    settings_class = SampleSettings

    def resolve(self, s: SampleSettings, workdir: Path) -> SampleSettings:
        return s.replace(
            out=str(Path(s.out or workdir).resolve()), preview=str(Path(s.preview).resolve()) if s.preview else None
        )

    def output(self, s: SampleSettings) -> Path:
        return Path(s.out) / "queries.parquet"

    def execute(self, settings: SampleSettings, workdir="workspace", overwrite: bool = False) -> str:
        summary = super().execute(settings, workdir, overwrite)
        if settings.preview:
            from pipeline.simulate.preview import contact_sheet

            s = self.resolve(settings, Path(workdir))
            n = contact_sheet(s.out, s.preview)
            summary += f"\n  preview: {s.preview} ({n} photos beside their north-up truth)"
        return summary

    def run(self, run: StageRun) -> str:
        conf = run.settings
        out = Path(conf.out)
        size = SIZES[conf.size]
        seed = int(conf.seed)
        w, s, e, n = size.region
        m = IMAGERY_MARGIN_DEG
        world = ProceduralWorld((w - m, s - m, e + m, n + m), seed=seed, year=0)
        save_world(world, out / "tiles" / "world.toml")
        plans = plan_photos(size, seed, world, conf.photos)
        parts = run.parts_dir()
        parts.mkdir(parents=True, exist_ok=True)
        photos_dir = out / "photos"
        photos_dir.mkdir(parents=True, exist_ok=True)
        batches = [plans[i : i + BATCH] for i in range(0, len(plans), BATCH)]
        todo = [k for k in range(len(batches)) if not (parts / f"batch{k:05d}.pkl").exists()]
        if len(todo) < len(batches):
            log.info("resuming: %d of %d photo batches already done", len(batches) - len(todo), len(batches))
        workers = int(conf.workers or min(2, host_cores()))
        with progress(total=sum(len(batches[k]) for k in todo), desc="sample photos", unit="photo") as bar:
            if workers > 1 and todo:
                ctx = multiprocessing.get_context("forkserver")
                with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker) as pool:
                    for k in todo:
                        rows = []
                        for r in pool.map(_render, [(p, seed, str(photos_dir)) for p in batches[k]]):
                            rows.append(r)
                            bar.update(1)
                        self._save_part(parts / f"batch{k:05d}.pkl", rows)
            else:
                for k in todo:
                    rows = []
                    for p in batches[k]:
                        rows.append(_render((p, seed, str(photos_dir))))
                        bar.update(1)
                    self._save_part(parts / f"batch{k:05d}.pkl", rows)
        rows = [r for k in range(len(batches)) for r in pd.read_pickle(parts / f"batch{k:05d}.pkl")]
        truth = pd.DataFrame([r["truth"] for r in rows])
        queries = pd.DataFrame([r["query"] for r in rows])

        index = IndexSettings(
            tiles=str(out / "tiles"), out=str(out / "database.parquet"), zooms=conf.zooms, min_valid=INDEX_MIN_VALID
        )
        index_summary = IndexStage().execute(index, workdir=out, overwrite=True)
        write_manifest(truth, out / "truth.parquet", TRUTH)
        self._write_regions(out / "regions.geojson", size.region, size.eval_fraction)
        write_manifest(queries, self.output(conf), QUERIES, before_replace=run.before_replace)
        return self._summary(conf, truth, index_summary)

    @staticmethod
    def _save_part(path: Path, rows: list[dict]) -> None:
        with atomic_output(path) as tmp:
            pd.to_pickle(rows, tmp)

    @staticmethod
    def _write_regions(path: Path, region, eval_fraction: float) -> None:
        feats = []
        for split, (w, s, e, n) in split_boxes(region, eval_fraction).items():
            ring = [[w, s], [e, s], [e, n], [w, n], [w, s]]
            feats.append(
                {
                    "type": "Feature",
                    "properties": {"split": split},
                    "geometry": {"type": "Polygon", "coordinates": [ring]},
                }
            )
        with atomic_output(path) as tmp:
            tmp.write_text(json.dumps({"type": "FeatureCollection", "features": feats}, indent=1))

    @staticmethod
    def _summary(conf: SampleSettings, truth: pd.DataFrame, index_summary: str) -> str:
        out = Path(conf.out)
        by = truth.groupby(["reason", "split"]).size().unstack(fill_value=0)
        area = truth["area_km2"].dropna()
        lines = [f"sample: {len(truth)} photos ({conf.size}, seed {conf.seed}) in {out}"]
        for reason, row in by.iterrows():
            lines.append(f"  {reason:<12} " + "  ".join(f"{s} {int(v):>4d}" for s, v in row.items()))
        if len(area):
            q = area.quantile([0.05, 0.5, 0.95])
            lines.append(f"  footprint area km2: 5% {q[0.05]:.0f}  median {q[0.5]:.0f}  95% {q[0.95]:.0f}")
        lines.append(
            "  wrote queries.parquet, truth.parquet, database.parquet, regions.geojson, photos/, tiles/world.toml"
        )
        lines += ["  " + line for line in index_summary.splitlines()[:1]]
        return "\n".join(lines)


def ensure_sample(workdir: str | os.PathLike, size: str = "small") -> Path:
    """The workspace's queries manifest, creating the sample workspace first when missing."""
    out = Path(workdir) / "queries.parquet"
    if not out.exists():
        log.info("no workspace at %s: creating the %s sample (python -m pipeline run sample)", workdir, size)
        log.info(SampleStage().execute(SampleSettings(size=size), workdir=workdir))
    read_manifest(out, QUERIES)
    return out
