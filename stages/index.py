"""``run index``: the database manifest of satellite windows a tile source covers.

Each zoom is written as its own part file first (atomically), so an interrupted run resumes
at the first unfinished zoom; the parts are then streamed into the final GeoParquet.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from manifests import DATABASE, ManifestWriter
from pipeline.database import count_candidate_windows, iter_database_windows
from pipeline.geometry.windows import DEFAULT_ZOOMS, parse_zooms
from pipeline.progress import progress
from pipeline.settings import Settings, setting
from pipeline.tile_sources import open_tile_source

from .base import Stage, StageError, StageRun, source_files

log = logging.getLogger(__name__)

MANY_WINDOWS = 50_000_000
"""Above this many candidate windows a run warns first: AstroLoc's whole database is 5.2 M windows."""


@dataclass(frozen=True)
class IndexSettings(Settings):
    section = "index setting"

    tiles: str = setting(
        "", "tile source: GeoTIFF/COG/VRT, folder or glob of them, or XYZ folder (default: WORKDIR/tiles)"
    )
    out: str = setting("", "database manifest to write (default: WORKDIR/database.parquet)")
    zooms: tuple[int, ...] = setting(DEFAULT_ZOOMS, "zoom levels, e.g. 8-12 or 9,11", parse=parse_zooms)
    size_tiles: int = setting(4, "window side in 256-px tiles, even (half-window stride)")
    min_valid: float = setting(0.5, "keep windows at least this fraction valid")
    block_px: int = setting(8, "mask pixels per half-window used to measure validity")
    year: int | None = setting(None, "value of the year column (imagery year)")

    def check(self) -> None:
        self.need(
            self.size_tiles >= 2 and self.size_tiles % 2 == 0,
            "size_tiles",
            "must be even and at least 2 (half-window stride)",
        )
        self.need(0.0 <= self.min_valid <= 1.0, "min_valid", "must lie in [0, 1]")
        self.need(self.block_px >= 1, "block_px", "must be at least 1")


class IndexStage(Stage):
    name = "index"
    help = "build the database manifest (satellite windows per zoom) from a tile source"
    settings_class = IndexSettings

    def resolve(self, s: IndexSettings, workdir: Path) -> IndexSettings:
        return s.replace(
            tiles=str(Path(s.tiles).resolve()) if s.tiles else str((workdir / "tiles").resolve()),
            out=str(Path(s.out or workdir / "database.parquet").resolve()),
        )

    def output(self, s: IndexSettings) -> Path:
        return Path(s.out)

    def input_files(self, s: IndexSettings) -> list[Path]:
        return source_files(s.tiles)

    def check(self, run: StageRun) -> None:
        tiles = run.settings.tiles
        if not Path(tiles).exists() and not any(ch in tiles for ch in "*?["):
            raise StageError(
                f"no tile source at {tiles}; pass --tiles PATH (a GeoTIFF/COG/VRT, a folder or glob "
                "of them, or an XYZ folder {z}/{x}/{y}.png)"
            )

    def run(self, run: StageRun) -> str:
        conf = run.settings
        source = open_tile_source(conf.tiles)
        parts = run.parts_dir()
        parts.mkdir(parents=True, exist_ok=True)
        per_zoom: dict[int, tuple[int, int]] = {}
        todo = {
            zoom: count_candidate_windows(source, zoom, conf.size_tiles)
            for zoom in conf.zooms
            if not (parts / f"zoom{zoom:02d}.parquet").exists()
        }
        n_todo = sum(todo.values())
        if todo:
            log.info(
                "index: %s candidate windows to examine (%s)",
                f"{n_todo:,}",
                ", ".join(f"zoom {z}: {n:,}" for z, n in todo.items()),
            )
        if n_todo > MANY_WINDOWS:
            log.warning(
                "index: %s candidate windows is far more than a retrieval database needs (AstroLoc's has "
                "5.2 M, zooms 8-12); zooms finer than the imagery only upsample it. Check --zooms; "
                "Ctrl-C stops here, finished zooms are kept",
                f"{n_todo:,}",
            )
        for zoom in conf.zooms:
            part = parts / f"zoom{zoom:02d}.parquet"
            if zoom not in todo:
                kept = pq.ParquetFile(part).metadata.num_rows
                log.info("zoom %d: resuming from finished part %s (%d windows)", zoom, part.name, kept)
                per_zoom[zoom] = (kept, -1)
                continue
            total = todo[zoom]
            examined = 0
            with (
                ManifestWriter(part, DATABASE) as writer,
                progress(total=total, desc=f"index z{zoom}", unit="win") as bar,
            ):
                for rows, n in iter_database_windows(
                    source, zoom, conf.size_tiles, conf.min_valid, conf.block_px, year=conf.year
                ):
                    writer.write(rows)
                    examined += n
                    bar.update(n)
            per_zoom[zoom] = (writer.rows, examined)
        out = Path(conf.out)
        with ManifestWriter(out, DATABASE, before_replace=run.before_replace) as writer:
            for zoom in conf.zooms:
                pf = pq.ParquetFile(parts / f"zoom{zoom:02d}.parquet")
                for i in range(pf.num_row_groups):
                    writer.write(pf.read_row_group(i))
        total_kept = writer.rows
        lines = [f"index: {total_kept} windows from {conf.tiles}", f"  wrote {out}"]
        for zoom, (kept, examined) in per_zoom.items():
            ex = f"of {examined} examined" if examined >= 0 else "(resumed)"
            lines.append(f"  zoom {zoom:>2}: {kept:>9d} windows {ex}")
        if total_kept == 0:
            lines.append(
                f"  warning: no window is at least {conf.min_valid:.0%} valid; check the tile source and --zooms"
            )
        return "\n".join(lines)
