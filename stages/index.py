"""``run index``: the database manifest of satellite windows a tile source covers.

Each zoom is written as its own part file first (atomically), so an interrupted run resumes
at the first unfinished zoom; the parts are then streamed into the final GeoParquet.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from manifests import DATABASE, ManifestWriter
from pipeline.config import ConfigError
from pipeline.database import count_candidate_windows, iter_database_windows
from pipeline.imagery import open_tile_source
from pipeline.progress import progress

from .base import Stage, StageError, source_files

log = logging.getLogger(__name__)

MANY_WINDOWS = 50_000_000
"""Above this many candidate windows a run warns first: AstroLoc's whole database is 5.2 M windows."""


class ZoomsError(ConfigError, argparse.ArgumentTypeError):
    """Zoom levels that cannot be parsed: a usage error on the command line, a config error in a file."""


def parse_zooms(value) -> list[int]:
    """'8-12', '8,10,12', 9 or [8, 9] (from a TOML config) -> sorted unique zooms."""
    text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    out: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                a, b = part.split("-", 1)
                out += list(range(int(a), int(b) + 1))
            elif part:
                out.append(int(part))
    except ValueError:
        out = []
    if not out or any(z < 0 or z > 24 for z in out):
        raise ZoomsError(f"zooms must be integers 0-24 like '8-12' or '8,10,12', got {value!r}")
    return sorted(set(out))


class IndexStage(Stage):
    name = "index"
    help = "build the database manifest (satellite windows per zoom) from a tile source"
    default_conf = {
        "tiles": "",  # a raster, folder/glob of rasters, or XYZ folder; default WORKDIR/tiles
        "out": "",  # default WORKDIR/database.parquet
        "zooms": [8, 9, 10, 11, 12],
        "size_tiles": 4,
        "min_valid": 0.5,
        "block_px": 8,
        "year": None,
    }
    option_types = {"year": int}

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--tiles", help="tile source: GeoTIFF/COG/VRT, folder or glob of them, or XYZ folder "
                                       "(default: WORKDIR/tiles)")
        p.add_argument("--out", help="database manifest to write (default: WORKDIR/database.parquet)")
        p.add_argument("--zooms", type=parse_zooms, help="zoom levels, e.g. 8-12 or 9,11 (default 8-12)")
        p.add_argument("--size-tiles", dest="size_tiles", type=int, help="window side in tiles, even (default 4)")
        p.add_argument("--min-valid", dest="min_valid", type=float,
                       help="keep windows at least this fraction valid (default 0.5)")
        p.add_argument("--block-px", dest="block_px", type=int,
                       help="mask pixels per half-window used to measure validity (default 8)")
        p.add_argument("--year", type=int, help="value of the year column (imagery year)")

    def resolve(self, conf: dict[str, Any], workdir: Path) -> dict[str, Any]:
        conf = dict(conf)
        conf["tiles"] = str(Path(conf["tiles"]).resolve()) if conf["tiles"] else str((workdir / "tiles").resolve())
        conf["out"] = str(Path(conf["out"] or workdir / "database.parquet").resolve())
        conf["zooms"] = parse_zooms(conf["zooms"])
        if conf["size_tiles"] < 2 or conf["size_tiles"] % 2:
            raise StageError(f"--size-tiles must be even and >= 2 (half-window stride), got {conf['size_tiles']}")
        if not 0.0 <= conf["min_valid"] <= 1.0:
            raise StageError(f"--min-valid must lie in [0, 1], got {conf['min_valid']}")
        if conf["block_px"] < 1:
            raise StageError(f"--block-px must be at least 1, got {conf['block_px']}")
        return conf

    def output(self, conf: dict[str, Any]) -> Path:
        return Path(conf["out"])

    def input_files(self, conf: dict[str, Any]) -> list[Path]:
        return source_files(conf["tiles"])

    def check(self, conf: dict[str, Any]) -> None:
        tiles = conf["tiles"]
        if not Path(tiles).exists() and not any(ch in tiles for ch in "*?["):
            raise StageError(f"no tile source at {tiles}; pass --tiles PATH (a GeoTIFF/COG/VRT, a folder or glob "
                             "of them, or an XYZ folder {z}/{x}/{y}.png)")

    def run(self, conf: dict[str, Any]) -> str:
        source = open_tile_source(conf["tiles"])
        parts = self.parts_dir(conf)
        parts.mkdir(parents=True, exist_ok=True)
        per_zoom: dict[int, tuple[int, int]] = {}
        todo = {zoom: count_candidate_windows(source, zoom, conf["size_tiles"]) for zoom in conf["zooms"]
                if not (parts / f"zoom{zoom:02d}.parquet").exists()}
        n_todo = sum(todo.values())
        if todo:
            log.info("index: %s candidate windows to examine (%s)", f"{n_todo:,}",
                     ", ".join(f"zoom {z}: {n:,}" for z, n in todo.items()))
        if n_todo > MANY_WINDOWS:
            log.warning("index: %s candidate windows is far more than a retrieval database needs (AstroLoc's has "
                        "5.2 M, zooms 8-12); zooms finer than the imagery only upsample it. Check --zooms; "
                        "Ctrl-C stops here, finished zooms are kept", f"{n_todo:,}")
        for zoom in conf["zooms"]:
            part = parts / f"zoom{zoom:02d}.parquet"
            if zoom not in todo:
                kept = pq.ParquetFile(part).metadata.num_rows
                log.info("zoom %d: resuming from finished part %s (%d windows)", zoom, part.name, kept)
                per_zoom[zoom] = (kept, -1)
                continue
            total = todo[zoom]
            examined = 0
            with ManifestWriter(part, DATABASE) as writer, \
                    progress(total=total, desc=f"index z{zoom}", unit="win") as bar:
                for rows, n in iter_database_windows(source, zoom, conf["size_tiles"], conf["min_valid"],
                                                     conf["block_px"], year=conf["year"]):
                    writer.write(rows)
                    examined += n
                    bar.update(n)
            per_zoom[zoom] = (writer.rows, examined)
        out = Path(conf["out"])
        with ManifestWriter(out, DATABASE, before_replace=self.before_replace) as writer:
            for zoom in conf["zooms"]:
                pf = pq.ParquetFile(parts / f"zoom{zoom:02d}.parquet")
                for i in range(pf.num_row_groups):
                    writer.write(pf.read_row_group(i))
        total_kept = writer.rows
        lines = [f"index: {total_kept} windows from {conf['tiles']}", f"  wrote {out}"]
        for zoom, (kept, examined) in per_zoom.items():
            ex = f"of {examined} examined" if examined >= 0 else "(resumed)"
            lines.append(f"  zoom {zoom:>2}: {kept:>9d} windows {ex}")
        if total_kept == 0:
            lines.append("  warning: no window is at least "
                         f"{conf['min_valid']:.0%} valid; check the tile source and --zooms")
        return "\n".join(lines)
