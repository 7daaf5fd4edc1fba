"""``run pairs``: join localized footprints with the database windows at IoU >= a threshold.

Footprints are split into chunks; each chunk is one Dask task (a local cluster by default)
that joins it with the database (:func:`pipeline.pairs.join`, the database loaded once per
worker) and writes its pairs as an atomic part file; the parts are streamed into the pairs
manifest. An interrupted run resumes at the chunks without a part. ``--exclude`` keeps
evaluation photos out of the pairs (by region or by the queries' split), as AstroLoc drops
every pair whose query is in an evaluation set.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from manifests import (
    CORNER_COLUMNS,
    DATABASE,
    FOOTPRINTS,
    PAIRS,
    ManifestError,
    ManifestKind,
    ManifestWriter,
    detect_kind,
    read_manifest,
    write_manifest,
)
from manifests.queries import read_queries_table
from pipeline.geometry.windows import parse_zooms
from pipeline.settings import Settings, setting

from .base import Stage, StageError, StageRun
from .cluster import check_cluster_options, dask_client, gather

log = logging.getLogger(__name__)

CORNERS = ("tl", "tr", "br", "bl")
_DATABASES: dict[str, Any] = {}
"""Per worker process: the database keys, loaded once."""


def check_manifest_path(path: str, kind: ManifestKind, option: str) -> None:
    """Refuse, before any work, a ``--OPTION`` that names a folder, nothing, a file that is not Parquet
    (a CSV...) or a manifest of another kind (queries given as the database...)."""
    p = Path(path)
    if p.is_dir():
        raise StageError(
            f"--{option} {p} is a folder; pass the {kind.name} manifest file itself (made by {kind.produced_by})"
        )
    if not p.is_file():
        raise StageError(
            f"{kind.name} manifest not found: {p}; make it with {kind.produced_by} or pass --{option} FILE"
        )
    try:
        found = detect_kind(p)
    except Exception:  # pyarrow raises several types for non-Parquet input
        raise ManifestError(
            p,
            f"not a Parquet file (or a damaged one); pass --{option} with the {kind.name} "
            f"manifest made by {kind.produced_by}",
        ) from None
    if found is not None and found.name != kind.name:
        raise ManifestError(
            p,
            f"this is a {found.name} manifest, not a {kind.name} manifest; pass --{option} with "
            f"the one made by {kind.produced_by}",
        )


def load_database(path: str):
    """The database manifest as a :class:`pipeline.pairs.Database` (cached per process); refuses a file
    that is not a database manifest, or one without windows or with windows of several sizes."""
    if path not in _DATABASES:
        from pipeline.pairs import Database

        t = read_manifest(path, DATABASE, columns=["zoom", "x", "y", "size_tiles"], geometry=False)
        sizes = np.unique(t["size_tiles"].to_numpy())
        if not len(sizes):
            raise StageError(f"{path}: no database windows; index some with `python -m pipeline run index`")
        if len(sizes) > 1:
            raise StageError(f"{path}: windows of several sizes ({sizes.tolist()} tiles); index one size per database")
        _DATABASES.clear()
        _DATABASES[path] = Database.from_columns(
            t["zoom"].to_numpy(), t["x"].to_numpy(), t["y"].to_numpy(), int(sizes[0])
        )
    return _DATABASES[path]


def localized_footprints(path: str) -> pd.DataFrame:
    """photo_id and the corner columns of the photos with a footprint: a footprints manifest's localized rows, or
    a truth file's localizable ones (the sample's ``truth.parquet``, a CSV like the real sample's ``truth.csv``:
    footprints known by other means, such as a hand-checked set). Refuses a manifest without corner columns."""
    from .calibrate import read_truth

    p = Path(path)
    if p.suffix.lower() == ".parquet" and (kind := detect_kind(p)) is not None and kind.name == "footprints":
        fp = read_manifest(p, FOOTPRINTS, geometry=False)
        missing = [c for c in CORNER_COLUMNS if c not in fp.columns]
        if missing:
            raise ManifestError(
                path,
                f"no corner columns {', '.join(missing)}: pairs are made from the footprints' "
                "corners; regenerate it with `python -m pipeline run footprints`",
            )
        fp = fp[fp["status"] == "localized"]
    else:
        fp = read_truth(p).reset_index()
        fp = fp[fp["localizable"]]
    return (
        fp[["photo_id", *CORNER_COLUMNS]]
        .assign(photo_id=lambda d: d["photo_id"].astype(str))
        .drop_duplicates("photo_id")
        .reset_index(drop=True)
    )


def is_truth_file(path: str) -> bool:
    """Whether ``path`` is a truth file (a truth manifest or a CSV) rather than a footprints manifest."""
    p = Path(path)
    if p.suffix.lower() == ".csv":
        return True
    try:
        kind = detect_kind(p) if p.is_file() else None
    except Exception:  # noqa: BLE001 - not Parquet: check_manifest_path says so
        return False
    return kind is not None and kind.name == "truth"


def run_chunk(
    photo_ids: list[str],
    lon: np.ndarray,
    lat: np.ndarray,
    database: str,
    iou: float,
    zooms: list[int] | None,
    part: str,
) -> dict:
    """A Dask task: the pairs of one chunk of footprints, written atomically to ``part``."""
    from pipeline.pairs import footprint_rings, join

    db = load_database(database)
    pairs = join(footprint_rings(lon, lat), db, iou, zooms)
    ids = np.asarray(photo_ids, dtype=object)
    df = pd.DataFrame(
        {
            "photo_id": ids[pairs["fp"].to_numpy()],
            "tile_id": [f"{z}_{x}_{y}" for z, x, y in zip(pairs["zoom"], pairs["x"], pairs["y"])],
            "iou": pairs["iou"],
            "zoom": pairs["zoom"],
            "intersection_km2": pairs["intersection_km2"],
            "photo_area_km2": pairs["photo_area_km2"],
            "tile_area_km2": pairs["tile_area_km2"],
        }
    )
    write_manifest(df, part, PAIRS)
    return {"photos": len(photo_ids), "pairs": len(df)}


def _present(values: pd.Series) -> str:
    """The distinct values of a split column, in order of appearance, for a message."""
    return ", ".join(str(v) for v in pd.unique(values.dropna())) or "none"


def split_photo_ids(queries: str | None, name: str) -> set[str]:
    """photo_id of the queries whose ``split`` is ``name`` (``--exclude split:NAME``); refuses a name
    that no query has, which would exclude nothing."""
    spec = f"split:{name}"
    if not queries or not Path(queries).is_file():
        raise StageError(f"--exclude {spec} needs the queries manifest with a split column (--queries FILE)")
    q, _ = read_queries_table(queries)
    missing = [c for c in ("photo_id", "split") if c not in q.columns]
    if missing:
        raise StageError(
            f"{queries} has no {' or '.join(missing)} column for --exclude {spec}; exclude by region "
            "instead (--exclude regions.geojson#eval)"
        )
    chosen = q["split"] == name
    if not chosen.any():
        raise StageError(
            f"--exclude {spec}: no query of {queries} has split {name!r} (present: "
            f"{_present(q['split'])}); name one of those"
        )
    return set(q.loc[chosen, "photo_id"].astype(str))


def read_regions(path: str, name: str) -> np.ndarray:
    """The geometries of a region file (GeoJSON, GeoPackage...: whatever GDAL reads), or of its features
    whose ``split`` property is ``name`` when given; refuses a file with none."""
    import geopandas as gpd

    spec = f"{path}#{name}" if name else path
    if not Path(path).is_file():
        raise StageError(f"--exclude {spec}: region file not found: {path} (or use split:NAME)")
    try:
        regions = gpd.read_file(path)
    except Exception as e:  # GDAL raises several types for what it cannot read
        raise StageError(
            f"--exclude {spec}: not a region file GDAL can read ({str(e).split(';')[0]}); "
            "pass a GeoJSON of polygons, or use split:NAME"
        ) from None
    if not isinstance(regions, gpd.GeoDataFrame) or not regions.geometry.notna().any():
        raise StageError(
            f"--exclude {spec}: no region in the file (no geometry); pass a GeoJSON of polygons, or use split:NAME"
        )
    if name:
        if "split" not in regions.columns:
            raise StageError(f"{path} has no 'split' property to select {name!r}; drop '#{name}' to use every region")
        chosen = regions["split"] == name
        if not chosen.any():
            raise StageError(
                f"--exclude {spec}: no region of {path} has split {name!r} (present: "
                f"{_present(regions['split'])}); name one of those after '#'"
            )
        regions = regions[chosen]
    return regions.geometry.to_numpy()


def excluded_photos(footprints: pd.DataFrame, spec: str, queries: str | None) -> np.ndarray:
    """Boolean mask of footprints excluded by ``spec``: ``split:NAME`` (the queries' split column),
    ``FILE`` (any polygon of a GeoJSON/GeoParquet/... file) or ``FILE#NAME`` (its features whose
    ``split`` property is NAME); a footprint is excluded when it touches an excluded region."""
    if spec.startswith("split:"):
        ids = split_photo_ids(queries, spec.split(":", 1)[1])
        return footprints["photo_id"].astype(str).isin(ids).to_numpy()
    import shapely

    path, _, name = spec.partition("#")
    area = shapely.union_all(read_regions(path, name))
    return shapely.intersects(footprint_polygons(footprints), area)


def footprint_polygons(fp: pd.DataFrame) -> np.ndarray:
    """Shapely polygons (N,) of footprints' corner columns (lon/lat degrees)."""
    import shapely

    return shapely.polygons(
        np.stack([fp[[f"{c}_lon" for c in CORNERS]].to_numpy(), fp[[f"{c}_lat" for c in CORNERS]].to_numpy()], axis=2)
    )


def photo_rate(photos: int, seconds: float) -> str:
    """``", 1,234 photos/s"`` for the summary, with three significant digits below 100 (0.476, not 0);
    empty when there is no rate to tell (no photo, or no measurable time)."""
    if not photos or seconds < 0.01:
        return ""
    rate = photos / seconds
    return f", {rate:,.0f} photos/s" if rate >= 100 else f", {rate:.3g} photos/s"


def _specs(value) -> tuple[str, ...]:
    """One spec (text) or a list of them; specs are not split at commas."""
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, (list, tuple)):
        raise ValueError('a list of specs (split:NAME or regions.geojson#NAME), e.g. exclude = ["split:test"]')
    return tuple(value)


@dataclass(frozen=True)
class PairsSettings(Settings):
    section = "pairs setting"

    footprints: str = setting("", "footprints manifest (default: WORKDIR/footprints.parquet)")
    database: str = setting("", "database manifest (default: WORKDIR/database.parquet)")
    queries: str = setting("", "queries, for --exclude split:NAME (default: WORKDIR/queries.parquet)")
    out: str = setting("", "pairs manifest (default: WORKDIR/pairs.parquet)")
    iou: float = setting(0.2, "minimum IoU on the ellipsoid (AstroLoc's 0.2)")
    zooms: tuple[int, ...] | None = setting(None, "only these database zooms, e.g. 8-12 (none: all)", parse=parse_zooms)
    exclude: tuple[str, ...] = setting(
        (),
        "keep these photos out of the pairs: split:eval (the queries' split), "
        "regions.geojson (any region) or regions.geojson#eval (its features with "
        "split=eval); repeatable",
        repeat=True,
        parse=_specs,
        metavar="SPEC",
    )
    chunk: int = setting(10_000, "footprints per Dask task", partition=True)
    workers: int | None = setting(None, "local Dask worker processes (default: one per core)", runtime=True)
    scheduler: str | None = setting(None, "address of an existing Dask scheduler, e.g. tcp://host:8786", runtime=True)

    def check(self) -> None:
        self.need(0.0 < self.iou <= 1.0, "iou", "must be in (0, 1]")
        self.need(self.chunk >= 1, "chunk", "must be at least 1")


class PairsStage(Stage):
    name = "pairs"
    help = "join localized footprints with the database windows at IoU >= a threshold (training pairs)"
    settings_class = PairsSettings

    def resolve(self, s: PairsSettings, workdir: Path) -> PairsSettings:
        return s.replace(
            **{
                key: str(Path(getattr(s, key) or workdir / default).resolve())
                for key, default in (
                    ("footprints", "footprints.parquet"),
                    ("database", "database.parquet"),
                    ("queries", "queries.parquet"),
                    ("out", "pairs.parquet"),
                )
            }
        )

    def output(self, s: PairsSettings) -> Path:
        return Path(s.out)

    def input_files(self, s: PairsSettings) -> list[Path]:
        files = [Path(s.footprints), Path(s.database)]
        files += [Path(e.partition("#")[0]) for e in s.exclude if not e.startswith("split:")]
        return [f for f in files if f.is_file()]

    def check(self, run: StageRun) -> None:
        conf = run.settings
        if not is_truth_file(conf.footprints):
            check_manifest_path(conf.footprints, FOOTPRINTS, "footprints")
        check_manifest_path(conf.database, DATABASE, "database")
        load_database(conf.database)  # validated here, not in the first task
        check_cluster_options(conf.scheduler, conf.workers)

    def run(self, run: StageRun) -> str:
        conf = run.settings
        fp = localized_footprints(conf.footprints)
        lines = [f"pairs: {len(fp)} localized footprints"]
        keep = np.ones(len(fp), bool)
        for spec in conf.exclude:
            drop = excluded_photos(fp, spec, conf.queries) & keep
            lines.append(f"  excluded by {spec}: {int(drop.sum())} photos")
            keep &= ~drop
        fp = fp[keep].reset_index(drop=True)
        lon = fp[[f"{c}_lon" for c in CORNERS]].to_numpy(np.float64)
        lat = fp[[f"{c}_lat" for c in CORNERS]].to_numpy(np.float64)
        ids = fp["photo_id"].astype(str).tolist()
        parts = run.parts_dir()
        parts.mkdir(parents=True, exist_ok=True)
        step = int(conf.chunk)
        chunks = [slice(i, i + step) for i in range(0, len(fp), step)]
        todo = [k for k in range(len(chunks)) if not (parts / f"chunk{k:05d}.parquet").exists()]
        t0 = time.perf_counter()
        if todo:
            self._run_dask(conf, ids, lon, lat, chunks, todo, parts)
        out = Path(conf.out)
        # streamed: one part in memory at a time
        with ManifestWriter(out, PAIRS, before_replace=run.before_replace) as writer:
            for k in range(len(chunks)):
                writer.write(pq.read_table(parts / f"chunk{k:05d}.parquet"))
        lines += self._summary(out, ids, time.perf_counter() - t0)
        return "\n".join(lines)

    @staticmethod
    def _summary(out: Path, ids: list[str], seconds: float) -> list[str]:
        t = pq.read_table(out, columns=["photo_id", "iou", "zoom"]).to_pandas()
        per = t.groupby("photo_id").size().reindex(ids, fill_value=0) if ids else pd.Series(dtype=int)
        lines = [f"  {len(t)} pairs -> {out} ({seconds:.1f} s{photo_rate(len(ids), seconds)})"]
        if len(per):
            lines.append(
                f"  pairs per photo: mean {per.mean():.2f}, median {per.median():.0f}, max {per.max()}; "
                f"photos with no pair: {int((per == 0).sum())} of {len(per)}"
            )
        if len(t):
            q = np.quantile(t["iou"], [0.05, 0.25, 0.5, 0.75, 0.95])
            lines.append("  IoU quantiles 5/25/50/75/95 %: " + " / ".join(f"{v:.3f}" for v in q))
            lines.append(
                "  pairs per zoom: " + ", ".join(f"z{z}: {n}" for z, n in t["zoom"].value_counts().sort_index().items())
            )
        return lines

    def _run_dask(self, conf, ids, lon, lat, chunks, todo, parts) -> None:
        with dask_client(conf.scheduler, conf.workers) as (client, _):
            futures = [
                client.submit(
                    run_chunk,
                    ids[chunks[k]],
                    lon[chunks[k]],
                    lat[chunks[k]],
                    conf.database,
                    float(conf.iou),
                    conf.zooms,
                    str(parts / f"chunk{k:05d}.parquet"),
                    key=f"pairs-{parts.name}-{k}",
                    retries=2,
                    pure=False,
                )
                for k in todo
            ]
            gather(futures, sum(len(ids[chunks[k]]) for k in todo), "pairs", "pairs")
