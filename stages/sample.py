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

import argparse
import json
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd

from manifests import QUERIES, TRUTH, read_manifest, write_manifest

from pipeline.files import atomic_output
from pipeline.progress import progress
from pipeline.simulate.sample import SIZES, PhotoPlan, plan_photos, query_row, render_photo, split_boxes
from pipeline.world import ProceduralWorld, save_world

from .base import Stage, StageError
from .index import IndexStage, parse_zooms

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


class SampleStage(Stage):
    name = "sample"
    help = "create a synthetic workspace: a procedural world, simulated ISS photos and their ground truth"
    default_conf = {
        "out": "",  # default: the workdir
        "size": "small",
        "seed": 0,
        "photos": None,  # default: the size's
        "zooms": [8, 9, 10, 11, 12],
        "workers": None,
        "preview": None,
    }
    runtime_keys = ("workers", "preview")
    option_types = {"photos": int, "workers": int, "preview": str}

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--out", help="workspace folder to create (default: --workdir)")
        p.add_argument("--size", choices=sorted(SIZES), help="tiny (2x2 deg, 10 photos, for tests), small "
                       "(6x4 deg, 200 photos), large (30x20 deg, 3000 photos, for benchmarks)")
        p.add_argument("--seed", type=int, help="random seed: the same seed gives byte-identical manifests")
        p.add_argument("--photos", type=int, help="number of photos (default: the size's)")
        p.add_argument("--zooms", type=parse_zooms, help="database zoom levels (default 8-12)")
        p.add_argument("--workers", type=int, help="rendering processes (default: up to 2, one per core)")
        p.add_argument("--preview", metavar="PNG", help="also write a contact sheet of photos beside their "
                       "north-up truth to this PNG")

    def resolve(self, conf: dict[str, Any], workdir: Path) -> dict[str, Any]:
        conf = dict(conf)
        conf["out"] = str(Path(conf["out"] or workdir).resolve())
        if conf["size"] not in SIZES:
            raise StageError(f"--size must be one of {', '.join(sorted(SIZES))}, got {conf['size']!r}")
        if conf["photos"] is not None and int(conf["photos"]) < 1:
            raise StageError(f"--photos must be at least 1, got {conf['photos']}")
        if not 0 <= conf["seed"] < 2**32:
            raise StageError(f"--seed must lie in [0, 2**32), got {conf['seed']}")

        conf["zooms"] = parse_zooms(conf["zooms"])
        if conf["preview"]:
            conf["preview"] = str(Path(conf["preview"]).resolve())
        return conf

    def output(self, conf: dict[str, Any]) -> Path:
        return Path(conf["out"]) / "queries.parquet"

    def execute(self, conf: dict[str, Any], overwrite: bool = False) -> str:
        summary = super().execute(conf, overwrite)
        if conf.get("preview"):
            from pipeline.simulate.preview import contact_sheet

            n = contact_sheet(conf["out"], conf["preview"])
            summary += f"\n  preview: {conf['preview']} ({n} photos beside their north-up truth)"
        return summary

    def run(self, conf: dict[str, Any]) -> str:
        out = Path(conf["out"])
        size = SIZES[conf["size"]]
        seed = int(conf["seed"])
        w, s, e, n = size.region
        m = IMAGERY_MARGIN_DEG
        world = ProceduralWorld((w - m, s - m, e + m, n + m), seed=seed, year=0)
        save_world(world, out / "tiles" / "world.toml")
        plans = plan_photos(size, seed, world, conf["photos"])
        parts = self.parts_dir(conf)
        parts.mkdir(parents=True, exist_ok=True)
        photos_dir = out / "photos"
        photos_dir.mkdir(parents=True, exist_ok=True)
        batches = [plans[i : i + BATCH] for i in range(0, len(plans), BATCH)]
        todo = [k for k in range(len(batches)) if not (parts / f"batch{k:05d}.pkl").exists()]
        if len(todo) < len(batches):
            log.info("resuming: %d of %d photo batches already done", len(batches) - len(todo), len(batches))
        workers = int(conf["workers"] or min(2, os.cpu_count() or 1))
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

        index = IndexStage()
        iconf = index.resolve(dict(index.default_conf, tiles=str(out / "tiles"), out=str(out / "database.parquet"),
                                   zooms=conf["zooms"], min_valid=INDEX_MIN_VALID), out)
        index_summary = index.execute(iconf, overwrite=True)
        write_manifest(truth, out / "truth.parquet", TRUTH)
        self._write_regions(out / "regions.geojson", size.region, size.eval_fraction)
        write_manifest(queries, self.output(conf), QUERIES, before_replace=self.before_replace)
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
            feats.append({"type": "Feature", "properties": {"split": split},
                          "geometry": {"type": "Polygon", "coordinates": [ring]}})
        with atomic_output(path) as tmp:
            tmp.write_text(json.dumps({"type": "FeatureCollection", "features": feats}, indent=1))

    @staticmethod
    def _summary(conf: dict[str, Any], truth: pd.DataFrame, index_summary: str) -> str:
        out = Path(conf["out"])
        by = truth.groupby(["reason", "split"]).size().unstack(fill_value=0)
        area = truth["area_km2"].dropna()
        lines = [f"sample: {len(truth)} photos ({conf['size']}, seed {conf['seed']}) in {out}"]
        for reason, row in by.iterrows():
            lines.append(f"  {reason:<12} " + "  ".join(f"{s} {int(v):>4d}" for s, v in row.items()))
        if len(area):
            q = area.quantile([0.05, 0.5, 0.95])
            lines.append(f"  footprint area km2: 5% {q[0.05]:.0f}  median {q[0.5]:.0f}  95% {q[0.95]:.0f}")
        lines.append("  wrote queries.parquet, truth.parquet, database.parquet, regions.geojson, photos/, "
                     "tiles/world.toml")
        lines += ["  " + line for line in index_summary.splitlines()[:1]]
        return "\n".join(lines)


def ensure_sample(workdir: str | os.PathLike, size: str = "small") -> Path:
    """The workspace's queries manifest, creating the sample workspace first when missing."""
    out = Path(workdir) / "queries.parquet"
    if not out.exists():
        log.info("no workspace at %s: creating the %s sample (python -m pipeline run sample)", workdir, size)
        stage = SampleStage()
        conf = stage.resolve(dict(stage.default_conf, size=size), Path(workdir))
        log.info(stage.execute(conf))
    read_manifest(out, QUERIES)
    return out
