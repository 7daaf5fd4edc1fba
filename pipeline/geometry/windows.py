"""Database windows: squares of N x N XYZ tiles laid with a half-window stride (EarthLoc).

A window is named by its zoom and its top-left tile (x, y); with N = ``size_tiles`` even,
window origins are multiples of N/2 tiles, so every point of the world lies in four windows
(two along each axis). Windows wrap around the antimeridian, as the map does: the window whose
origin is N/2 tiles short of the map's east edge covers its last N/2 columns of tiles and the
first N/2 (its corners, bounds and pixel box are unwrapped: they run past lon 180 / the world's
width, and tile sources read such boxes from both ends of the map). They never leave the map's
north or south edge, so a point within half a window of lat +-85.05 lies in two windows.
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

DEFAULT_ZOOMS = (8, 9, 10, 11, 12)
"""AstroLoc's database zooms (and the footprint search's candidates)."""
MAX_ZOOM = 24
"""The deepest XYZ zoom a setting may name."""


def parse_zooms(value) -> tuple[int, ...]:
    """``"8-12"``, ``"8,10,12"``, ``9`` or ``[8, 9]`` (a TOML list) -> sorted unique zooms; ValueError otherwise."""
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
    if isinstance(value, bool) or not out or any(z < 0 or z > MAX_ZOOM for z in out):
        raise ValueError(f"zooms must be integers 0-{MAX_ZOOM} like '8-12' or '8,10,12', got {value!r}")
    return tuple(sorted(set(out)))


def _check_size(size_tiles: int) -> int:
    size_tiles = int(size_tiles)
    if size_tiles < 2 or size_tiles % 2:
        raise ValueError(f"window size must be an even number of tiles >= 2 (half-window stride), got {size_tiles}")
    return size_tiles


@dataclass(frozen=True, order=True)
class Window:
    """A database window: ``size_tiles`` x ``size_tiles`` tiles whose top-left tile is (x, y).

    ``x`` is in [0, 2**zoom - size_tiles / 2]; the last origin, 2**zoom - size_tiles / 2, is the
    window across the antimeridian, whose right half is the map's first columns of tiles (none at
    the zoom where a window is as wide as the map: it would be the window at x = 0 again).
    """

    zoom: int
    x: int
    y: int
    size_tiles: int = DEFAULT_SIZE_TILES

    @property
    def tile_id(self) -> str:
        """``z_x_y`` of the top-left tile, as in the database manifest."""
        return f"{self.zoom}_{self.x}_{self.y}"

    @property
    def wraps(self) -> bool:
        """Whether the window reaches past lon 180 (its right part is the map's west end)."""
        return self.x + self.size_tiles > 1 << self.zoom

    def pixel_box(self, tile_size: int = TILE_SIZE) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) in global pixel coordinates of ``zoom``; unwrapped (right past the
        world's width) for a window across the antimeridian."""
        n = self.size_tiles * tile_size
        return self.x * tile_size, self.y * tile_size, self.x * tile_size + n, self.y * tile_size + n

    def bounds_mercator(self) -> tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) in EPSG:3857 metres; xmax past 20037508.34 m when the window wraps."""
        left, top, right, bottom = self.pixel_box(1)
        xmin, ymax = pixel_to_mercator(left, top, self.zoom, 1)
        xmax, ymin = pixel_to_mercator(right, bottom, self.zoom, 1)
        return xmin, ymin, xmax, ymax

    def corners_lonlat(self) -> np.ndarray:
        """(4, 2) array of (lon, lat) degrees: top-left, top-right, bottom-right, bottom-left.

        Unwrapped: the east corners of a window across the antimeridian are past lon 180
        (``pipeline.geometry.geodesy.corners_columns`` and ``window_polygon`` store them wrapped)."""
        left, top, right, bottom = self.pixel_box(1)
        lon, lat = pixel_to_lonlat(
            np.array([left, right, right, left], dtype=np.float64),
            np.array([top, top, bottom, bottom], dtype=np.float64),
            self.zoom,
            1,
        )
        return np.stack([lon, lat], axis=1)

    @classmethod
    def from_tile_id(cls, tile_id: str, size_tiles: int = DEFAULT_SIZE_TILES) -> Window:
        try:
            z, x, y = (int(v) for v in tile_id.split("_"))
        except ValueError:
            raise ValueError(f"tile_id {tile_id!r} is not of the form z_x_y (integers)") from None
        return cls(z, x, y, size_tiles)


def windows_containing(lon: float, lat: float, zoom: int, size_tiles: int = DEFAULT_SIZE_TILES) -> list[Window]:
    """The windows at ``zoom`` that contain the point (lon, lat) in degrees: four, two within half a
    window of the map's north or south edge. Longitudes wrap: lon 180 and -180 are one meridian,
    and a point near it lies in the window across it."""
    size_tiles = _check_size(size_tiles)
    stride = size_tiles // 2
    px, py = lonlat_to_pixel(lon, lat, zoom, 1)  # in tiles
    n_tiles = 1 << int(zoom)
    # lat -85.05 lies on the map's south edge: take the windows just inside it
    py = min(float(py), float(np.nextafter(n_tiles, 0)))
    px = float(px) % n_tiles
    out = []
    for ky in (int(np.floor(py / stride)) - 1, int(np.floor(py / stride))):
        for kx in (int(np.floor(px / stride)) - 1, int(np.floor(px / stride))):
            y0 = ky * stride
            x0 = (kx * stride) % n_tiles
            if 0 <= y0 and y0 + size_tiles <= n_tiles and (size_tiles < n_tiles or x0 == 0):
                out.append(Window(int(zoom), x0, y0, size_tiles))
    return out


def window_origins(
    bounds_mercator: tuple[float, float, float, float], zoom: int, size_tiles: int = DEFAULT_SIZE_TILES
) -> tuple[np.ndarray, np.ndarray]:
    """Origins of every window at ``zoom`` that overlaps the EPSG:3857 box.

    The box may reach past +-20037508.34 m (a source whose data run past lon 180 in its own
    frame): windows are found modulo the world's width.

    Returns:
        xs: (nx,) int64 top-left tile x of the window columns, in [0, 2**zoom - size_tiles / 2],
            from the box's west end eastwards: each column is one stride (half a window) east of
            the one before, modulo the world (a box across lon 180 gives e.g. [.., 2**zoom - 2, 0, ..]).
            Every column of the world, from 0, when the box is as wide as the map.
        ys: (ny,) int64 top-left tile y of the window rows, ascending (north to south).
        The windows are the outer product: ``Window(zoom, x, y)`` for x in xs, y in ys.
    """
    size_tiles = _check_size(size_tiles)
    stride = size_tiles // 2
    xmin, ymin, xmax, ymax = bounds_mercator
    left, top = mercator_to_pixel(xmin, ymax, zoom, 1)
    right, bottom = mercator_to_pixel(xmax, ymin, zoom, 1)
    n_tiles = 1 << int(zoom)
    if size_tiles > n_tiles:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)

    def ks(lo: float, hi: float) -> np.ndarray:
        # window [k*stride, k*stride + size) overlaps (lo, hi) when k*stride < hi and k*stride + size > lo
        return np.arange(int(np.floor((lo - size_tiles) / stride)) + 1, int(np.ceil(hi / stride)), dtype=np.int64)

    kx = ks(left, right)
    if size_tiles == n_tiles:  # a window is the map's width: the one across lon 180 would be x = 0 again
        xs = np.zeros(1, np.int64)
    elif len(kx) >= n_tiles // stride:  # the box goes round the world: every column once
        xs = np.arange(0, n_tiles, stride, dtype=np.int64)
    else:
        xs = (kx * stride) % n_tiles
    ys = ks(top, bottom) * stride
    return xs, ys[(ys >= 0) & (ys <= n_tiles - size_tiles)]
