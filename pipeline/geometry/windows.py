"""Database windows: squares of N x N XYZ tiles laid with a half-window stride (EarthLoc).

A window is named by its zoom and its top-left tile (x, y); with N = ``size_tiles`` even,
window origins are multiples of N/2 tiles, so every point of the world lies in four windows
(two along each axis). Windows never wrap around the antimeridian or leave the world: near
the world's edges a point lies in fewer windows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .mercator import (
    TILE_SIZE,
    lonlat_to_pixel,
    mercator_to_pixel,
    pixel_to_lonlat,
    pixel_to_mercator,
)

DEFAULT_SIZE_TILES = 4
"""EarthLoc's database window: 4 x 4 tiles of 256 px (1024 x 1024 pixels)."""


def _check_size(size_tiles: int) -> int:
    size_tiles = int(size_tiles)
    if size_tiles < 2 or size_tiles % 2:
        raise ValueError(
            f"window size must be an even number of tiles >= 2 (half-window stride), got {size_tiles}"
        )
    return size_tiles


@dataclass(frozen=True, order=True)
class Window:
    """A database window: ``size_tiles`` x ``size_tiles`` tiles whose top-left tile is (x, y)."""

    zoom: int
    x: int
    y: int
    size_tiles: int = DEFAULT_SIZE_TILES

    @property
    def tile_id(self) -> str:
        """``z_x_y`` of the top-left tile, as in the database manifest."""
        return f"{self.zoom}_{self.x}_{self.y}"

    def pixel_box(self, tile_size: int = TILE_SIZE) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) in global pixel coordinates of ``zoom``."""
        n = self.size_tiles * tile_size
        return self.x * tile_size, self.y * tile_size, self.x * tile_size + n, self.y * tile_size + n

    def bounds_mercator(self) -> tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) in EPSG:3857 metres."""
        left, top, right, bottom = self.pixel_box(1)
        xmin, ymax = pixel_to_mercator(left, top, self.zoom, 1)
        xmax, ymin = pixel_to_mercator(right, bottom, self.zoom, 1)
        return xmin, ymin, xmax, ymax

    def corners_lonlat(self) -> np.ndarray:
        """(4, 2) array of (lon, lat) degrees: top-left, top-right, bottom-right, bottom-left."""
        left, top, right, bottom = self.pixel_box(1)
        lon, lat = pixel_to_lonlat(
            np.array([left, right, right, left], dtype=np.float64),
            np.array([top, top, bottom, bottom], dtype=np.float64),
            self.zoom,
            1,
        )
        return np.stack([lon, lat], axis=1)

    @classmethod
    def from_tile_id(cls, tile_id: str, size_tiles: int = DEFAULT_SIZE_TILES) -> "Window":
        try:
            z, x, y = (int(v) for v in tile_id.split("_"))
        except ValueError:
            raise ValueError(f"tile_id {tile_id!r} is not of the form z_x_y (integers)") from None
        return cls(z, x, y, size_tiles)


def windows_containing(lon: float, lat: float, zoom: int, size_tiles: int = DEFAULT_SIZE_TILES) -> list[Window]:
    """The (up to four) windows at ``zoom`` that contain the point (lon, lat) in degrees."""
    size_tiles = _check_size(size_tiles)
    stride = size_tiles // 2
    px, py = lonlat_to_pixel(lon, lat, zoom, 1)  # in tiles
    n_tiles = 1 << int(zoom)
    # lon 180 (and lat -85.05) lie on the map's far edge: take the windows just inside it, as for lon 179.9999
    edge = float(np.nextafter(n_tiles, 0))
    px, py = min(float(px), edge), min(float(py), edge)
    out = []
    for ky in (int(np.floor(py / stride)) - 1, int(np.floor(py / stride))):
        for kx in (int(np.floor(px / stride)) - 1, int(np.floor(px / stride))):
            x0, y0 = kx * stride, ky * stride
            if 0 <= x0 and x0 + size_tiles <= n_tiles and 0 <= y0 and y0 + size_tiles <= n_tiles:
                out.append(Window(int(zoom), x0, y0, size_tiles))
    return out


def window_origins(
    bounds_mercator: tuple[float, float, float, float], zoom: int, size_tiles: int = DEFAULT_SIZE_TILES
) -> tuple[np.ndarray, np.ndarray]:
    """Origins of every window at ``zoom`` that overlaps the EPSG:3857 box.

    Returns:
        xs: (nx,) int64 top-left tile x of the window columns, ascending.
        ys: (ny,) int64 top-left tile y of the window rows, ascending (north to south).
        The windows are the outer product: ``Window(zoom, x, y)`` for x in xs, y in ys.
    """
    size_tiles = _check_size(size_tiles)
    stride = size_tiles // 2
    xmin, ymin, xmax, ymax = bounds_mercator
    left, top = mercator_to_pixel(xmin, ymax, zoom, 1)
    right, bottom = mercator_to_pixel(xmax, ymin, zoom, 1)
    n_tiles = 1 << int(zoom)
    last = n_tiles - size_tiles  # last valid origin

    def axis(lo: float, hi: float) -> np.ndarray:
        # window [k*stride, k*stride + size) overlaps (lo, hi) when k*stride < hi and k*stride + size > lo
        k0 = int(np.floor((lo - size_tiles) / stride)) + 1
        k1 = int(np.ceil(hi / stride)) - 1
        ks = np.arange(max(k0, 0), k1 + 1, dtype=np.int64) * stride
        return ks[(ks >= 0) & (ks <= last)]

    return axis(left, right), axis(top, bottom)
