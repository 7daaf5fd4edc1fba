"""The database of satellite windows: which windows a tile source covers, as manifest rows.

Validity is measured on a coarse render of the source's mask: the world at each zoom is cut
into blocks of half a window (the stride), each block's valid fraction is estimated from
``block_px`` x ``block_px`` mask pixels, and a window's fraction is the mean of its 2 x 2
blocks. Rows of blocks are processed in bands, so memory stays bounded for continents.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
import shapely

from manifests.schemas import CORNER_COLUMNS

from .geometry.geodesy import box_area_km2, to_crs84
from .geometry.mercator import TILE_SIZE, pixel_to_lonlat, pixel_to_mercator
from .geometry.windows import window_origins
from .imagery.base import TileSource


def window_rows(zoom: int, xs: np.ndarray, ys: np.ndarray, size_tiles: int, year: int | None) -> pd.DataFrame:
    """Database manifest rows for windows with top-left tiles (xs[i], ys[i]) at ``zoom``.

    Corners are exact (north-up: top-left, top-right, bottom-right, bottom-left), the
    geometry is the lon/lat rectangle (Mercator windows are bounded by meridians and
    parallels), the area is the exact ellipsoidal area of that rectangle in km2. A window
    across the antimeridian has its east corners wrapped (e.g. -178.6) and a MultiPolygon of
    its two sides.
    """
    xs = np.asarray(xs, dtype=np.int64)
    ys = np.asarray(ys, dtype=np.int64)
    west, north = pixel_to_lonlat(xs, ys, zoom, 1)
    east, south = pixel_to_lonlat(xs + size_tiles, ys + size_tiles, zoom, 1)
    west, north, east, south = (np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in (west, north, east, south))
    ring = np.stack(
        [
            np.stack([west, south], -1),
            np.stack([east, south], -1),
            np.stack([east, north], -1),
            np.stack([west, north], -1),
            np.stack([west, south], -1),
        ],
        axis=1,
    )  # (N, 5, 2), counter-clockwise
    geoms = shapely.polygons(ring)
    across = east > 180.0
    if across.any():
        geoms = geoms.astype(object)
        geoms[across] = [to_crs84(g) for g in geoms[across]]
    east_stored = np.where(across, east - 360.0, east)
    corners = dict(zip(CORNER_COLUMNS, (north, west, north, east_stored, south, east_stored, south, west)))
    return pd.DataFrame(
        {
            "tile_id": [f"{zoom}_{x}_{y}" for x, y in zip(xs.tolist(), ys.tolist())],
            "zoom": np.full(len(xs), zoom, dtype=np.int32),
            "x": xs,
            "y": ys,
            "size_tiles": np.full(len(xs), size_tiles, dtype=np.int32),
            "year": pd.array([year] * len(xs), dtype="Int32"),
            "geometry": geoms,
            **corners,
            "area_km2": box_area_km2(west, south, east, north),
        }
    )


def count_candidate_windows(source: TileSource, zoom: int, size_tiles: int) -> int:
    xs, ys = window_origins(source.bounds_mercator, zoom, size_tiles)
    return len(xs) * len(ys)


def iter_database_windows(
    source: TileSource,
    zoom: int,
    size_tiles: int = 4,
    min_valid: float = 0.5,
    block_px: int = 8,
    band_rows: int = 64,
    year: int | None = None,
) -> Iterator[tuple[pd.DataFrame, int]]:
    """Yield (rows of kept windows, number of candidate windows examined) band by band.

    Args:
        source: the imagery.
        zoom: XYZ zoom of the windows.
        size_tiles: window side in tiles (even).
        min_valid: keep windows whose valid fraction is at least this (0..1).
        block_px: mask pixels per half-window block side used to estimate validity.
        band_rows: block rows rendered at once (bounds memory).
        year: value of the ``year`` column.
    """
    stride = size_tiles // 2
    xs, ys = window_origins(source.bounds_mercator, zoom, size_tiles)
    if not len(xs) or not len(ys):
        return
    # block columns [bx0, bx0 + nbx): consecutive from the first window's, past the map's east edge for
    # windows across the antimeridian (the source reads that part from the map's west end)
    bx0, nbx = int(xs[0]) // stride, len(xs) + 1
    by0, by1 = ys[0] // stride, ys[-1] // stride + 2
    # Window rows are block rows r (window covers block rows r and r+1); process bands of them.
    for r0 in range(int(by0), int(by1) - 1, band_rows):
        r1 = min(r0 + band_rows, int(by1) - 1)  # window block rows [r0, r1)
        nby = r1 - r0 + 1  # block rows needed
        left, top = pixel_to_mercator(bx0 * stride, r0 * stride, zoom, 1)
        right, bottom = pixel_to_mercator((bx0 + nbx) * stride, (r0 + nby) * stride, zoom, 1)
        mask = source.render((left, bottom, right, top), nbx * block_px, nby * block_px).mask
        blocks = mask.reshape(nby, block_px, nbx, block_px).mean(axis=(1, 3))  # (nby, nbx)
        win = (blocks[:-1, :-1] + blocks[1:, :-1] + blocks[:-1, 1:] + blocks[1:, 1:]) / 4.0  # (nby-1, nbx-1)
        keep_r, keep_c = np.nonzero(win >= min_valid)
        examined = win.size
        if len(keep_r):
            wx = xs[keep_c]
            wy = (r0 + keep_r) * stride
            yield window_rows(zoom, wx, wy, size_tiles, year), examined
        else:
            yield window_rows(zoom, np.empty(0, np.int64), np.empty(0, np.int64), size_tiles, year), examined


__all__ = ["TILE_SIZE", "count_candidate_windows", "iter_database_windows", "window_rows"]
