"""A tile source that keeps what it renders as an XYZ folder, for sources costly to render.

:class:`CachedTileSource` wraps any :class:`TileSource` (the procedural world, typically).
A request that sits on a zoom level's pixel grid at that zoom's resolution (every database
window read through ``read_window`` does) is served from ``folder/{z}/{x}/{y}.png``; missing
tiles are rendered from the wrapped source in one block, written (atomically, lossless PNG,
validity as alpha) and kept. Any other request goes to the wrapped source directly. The
folder is a plain XYZ folder: :class:`~pipeline.imagery.xyz.XYZTileSource` reads it too.
Several processes may share the folder: a tile is written whole or not at all, and two
writers of one tile write the same bytes.
"""

from __future__ import annotations

import math
import os

import numpy as np

from manifests.files import atomic_output

from ..geometry.mercator import TILE_SIZE, mercator_to_pixel, pixel_to_mercator, resolution_m
from .base import BoundsMercator, Rendered, TileSource
from .xyz import _decode_tile, _encode, paste_tiles

_ALIGN_TOL = 1e-4
"""Pixel slack when deciding a request sits on a zoom's pixel grid."""


class CachedTileSource(TileSource):
    """``source`` rendered through a tile cache in ``folder`` (see the module doc)."""

    def __init__(
        self, source: TileSource, folder: str | os.PathLike, tile_size: int = TILE_SIZE, cache_bytes: int = 256 * 2**20
    ):
        super().__init__(cache_bytes)
        self.source = source
        self.folder = os.fspath(folder)
        self.tile_size = int(tile_size)
        self.year = source.year
        self._bounds = tuple(source.bounds_mercator)  # asked by every render (its frame): kept, not delegated

    def __getstate__(self):
        return {
            "source": self.source,
            "folder": self.folder,
            "tile_size": self.tile_size,
            "cache_bytes": self._cache_bytes,
        }

    def __setstate__(self, state):
        self.__init__(state["source"], state["folder"], state["tile_size"], state["cache_bytes"])

    def __repr__(self) -> str:
        return f"CachedTileSource({self.source!r}, {self.folder!r})"

    @property
    def bounds_mercator(self) -> BoundsMercator:
        return self._bounds

    def _aligned(self, bounds: BoundsMercator, width: int, height: int) -> tuple[int, int, int] | None:
        """(zoom, left px, top px) when the box is on a zoom's pixel grid at its resolution."""
        xmin, ymin, xmax, ymax = bounds
        res = (xmax - xmin) / width
        z = round(math.log2(resolution_m(0, self.tile_size) / res))
        if not 0 <= z <= 24 or abs(resolution_m(z, self.tile_size) / res - 1) * max(width, height) > _ALIGN_TOL:
            return None
        if abs((ymax - ymin) / height / res - 1) * height > _ALIGN_TOL:
            return None
        left, top = mercator_to_pixel(xmin, ymax, z, self.tile_size)
        if abs(left - round(left)) > _ALIGN_TOL or abs(top - round(top)) > _ALIGN_TOL:
            return None
        return z, int(round(left)), int(round(top))

    def _path(self, z: int, x: int, y: int) -> str:
        return os.path.join(self.folder, str(z), str(x), f"{y}.png")

    def _read(self, z: int, x: int, y: int):
        path = self._path(z, x, y)
        try:
            with open(path, "rb") as f:
                buf = f.read()
        except FileNotFoundError:
            return None
        return _decode_tile(buf, path, self.tile_size)

    def _render(self, bounds: BoundsMercator, width: int, height: int) -> Rendered:
        aligned = self._aligned(bounds, width, height)
        if aligned is None:
            return self.source.render(bounds, width, height)
        z, px0, py0 = aligned
        ts = self.tile_size
        px1, py1 = px0 + width, py0 + height
        n = 1 << z
        # columns in the source's frame, which runs past lon 180 for a region that does: a column's tile is
        # the map's column x mod 2**z (the box is at most a world wide, so no tile is read twice)
        txs = range(px0 // ts, (px1 - 1) // ts + 1)
        tys = range(max(0, py0 // ts), min(n, (py1 - 1) // ts + 1))
        tiles = {(x, y): self._read(z, x % n, y) for x in txs for y in tys}
        missing = [k for k, v in tiles.items() if v is None]
        if missing:
            tiles.update(self._fill(z, missing))
        return Rendered(*paste_tiles(tiles, px0, py0, px1, py1, ts))

    def _fill(self, z: int, missing: list[tuple[int, int]]) -> dict:
        """Render the block of tiles covering ``missing`` (columns in the source's frame) in one call; write the
        valid ones (as the map's column x mod 2**z)."""
        ts = self.tile_size
        x0, x1 = min(k[0] for k in missing), max(k[0] for k in missing) + 1
        y0, y1 = min(k[1] for k in missing), max(k[1] for k in missing) + 1
        xmin, ymax = pixel_to_mercator(x0 * ts, y0 * ts, z, ts)
        xmax, ymin = pixel_to_mercator(x1 * ts, y1 * ts, z, ts)
        block = self.source.render((float(xmin), float(ymin), float(xmax), float(ymax)), (x1 - x0) * ts, (y1 - y0) * ts)
        out = {}
        for tx, ty in missing:
            sl = (slice((ty - y0) * ts, (ty - y0 + 1) * ts), slice((tx - x0) * ts, (tx - x0 + 1) * ts))
            rgb, mask = np.ascontiguousarray(block.rgb[sl]), np.ascontiguousarray(block.mask[sl])
            if not mask.any():
                out[(tx, ty)] = None
                continue
            with atomic_output(self._path(z, tx % (1 << z), ty)) as tmp:
                tmp.write_bytes(_encode(rgb, mask, "png"))
            out[(tx, ty)] = (rgb, mask)
        return out
