"""Exact Web Mercator (EPSG:3857) and XYZ tile math (GoogleMapsCompatible grid).

Coordinate systems used throughout the project:

- lon/lat: WGS84 degrees, longitude in [-180, 180], latitude within +-MAX_LATITUDE.
- mercator: EPSG:3857 metres, x east, y north, origin at (lon 0, lat 0),
  both axes in [-ORIGIN_SHIFT, ORIGIN_SHIFT].
- pixel: global pixel coordinates of zoom ``z`` (float), origin at the top-left corner of
  tile (0, 0) (lon -180, lat +MAX_LATITUDE), x right, y down; the world is
  ``tile_size * 2**z`` pixels wide. Pixel (i, j) covers [i, i+1) x [j, j+1): its centre is
  (i + 0.5, j + 0.5).
- tile: integer XYZ indices (x right, y down), tile (x, y) covers pixels
  [x*tile_size, (x+1)*tile_size) x [y*tile_size, (y+1)*tile_size).

All functions take scalars or NumPy arrays (broadcast) and return the same.
"""

from __future__ import annotations

import math

import numpy as np

EARTH_RADIUS_M = 6378137.0
"""Semi-major axis of WGS84, the sphere radius of Web Mercator (metres)."""
ORIGIN_SHIFT_M = math.pi * EARTH_RADIUS_M
"""Half the width of the Web Mercator world (metres): 20037508.342789244."""
MAX_LATITUDE = math.degrees(2.0 * math.atan(math.exp(math.pi)) - math.pi / 2.0)
"""Latitude of the top edge of the square Web Mercator world: 85.0511287798066 degrees."""
TILE_SIZE = 256
"""Default tile size in pixels."""


class LatitudeError(ValueError):
    """A latitude that Web Mercator cannot represent (beyond +-MAX_LATITUDE) or not finite."""


def check_latitude(lat, what: str = "latitude") -> None:
    """Raise :class:`LatitudeError` if any ``lat`` (degrees) is outside +-MAX_LATITUDE or NaN."""
    lat = np.asarray(lat, dtype=np.float64)
    bad = ~(np.abs(lat) <= MAX_LATITUDE)
    if np.any(bad):
        value = lat[bad].flat[0] if lat.ndim else float(lat)
        raise LatitudeError(
            f"{what} {value!r} deg is outside the Web Mercator range +-{MAX_LATITUDE:.4f} deg; "
            "tile imagery does not exist there: drop the row or correct the coordinate"
        )


def _out(a):
    return float(a) if np.ndim(a) == 0 else a


def lonlat_to_mercator(lon, lat):
    """lon/lat (degrees) -> EPSG:3857 (x, y) in metres. Latitudes beyond the limit raise."""
    check_latitude(lat)
    lon = np.asarray(lon, dtype=np.float64)
    lat = np.asarray(lat, dtype=np.float64)
    x = np.radians(lon) * EARTH_RADIUS_M
    y = np.log(np.tan(np.pi / 4.0 + np.radians(lat) / 2.0)) * EARTH_RADIUS_M
    return _out(x), _out(y)


def mercator_to_lonlat(x, y):
    """EPSG:3857 (x, y) in metres -> lon/lat in degrees (longitude not wrapped)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    lon = np.degrees(x / EARTH_RADIUS_M)
    lat = np.degrees(2.0 * np.arctan(np.exp(y / EARTH_RADIUS_M)) - np.pi / 2.0)
    return _out(lon), _out(lat)


def world_size_px(zoom: int, tile_size: int = TILE_SIZE) -> int:
    """Width (= height) of the whole world at ``zoom`` in pixels."""
    return tile_size * (1 << int(zoom))


def resolution_m(zoom: int, tile_size: int = TILE_SIZE) -> float:
    """Size of one pixel at ``zoom`` in Mercator metres (true ground size at the equator)."""
    return 2.0 * ORIGIN_SHIFT_M / world_size_px(zoom, tile_size)


def mercator_to_pixel(x, y, zoom: int, tile_size: int = TILE_SIZE):
    """EPSG:3857 metres -> global pixel coordinates (float) at ``zoom``."""
    res = resolution_m(zoom, tile_size)
    px = (np.asarray(x, dtype=np.float64) + ORIGIN_SHIFT_M) / res
    py = (ORIGIN_SHIFT_M - np.asarray(y, dtype=np.float64)) / res
    return _out(px), _out(py)


def pixel_to_mercator(px, py, zoom: int, tile_size: int = TILE_SIZE):
    """Global pixel coordinates at ``zoom`` -> EPSG:3857 metres."""
    res = resolution_m(zoom, tile_size)
    x = np.asarray(px, dtype=np.float64) * res - ORIGIN_SHIFT_M
    y = ORIGIN_SHIFT_M - np.asarray(py, dtype=np.float64) * res
    return _out(x), _out(y)


def lonlat_to_pixel(lon, lat, zoom: int, tile_size: int = TILE_SIZE):
    """lon/lat (degrees) -> global pixel coordinates (float) at ``zoom``."""
    return mercator_to_pixel(*lonlat_to_mercator(lon, lat), zoom, tile_size)


def pixel_to_lonlat(px, py, zoom: int, tile_size: int = TILE_SIZE):
    """Global pixel coordinates at ``zoom`` -> lon/lat (degrees), longitude not wrapped.

    The longitude is a multiple of 360 / world_size_px(zoom) degrees (a power-of-two fraction), so
    tile edges get it exactly: pixel 0 is lon -180 and the world's width lon 180, never 180 +- 1 ulp."""
    _, lat = mercator_to_lonlat(*pixel_to_mercator(px, py, zoom, tile_size))
    lon = np.asarray(px, dtype=np.float64) * (360.0 / world_size_px(zoom, tile_size)) - 180.0
    return _out(lon), lat


def lonlat_to_tile(lon, lat, zoom: int):
    """lon/lat (degrees) -> integer tile indices (x, y) of the tile containing the point.

    Points on the east or south edge of the world fall in the last tile.
    """
    px, py = lonlat_to_pixel(lon, lat, zoom, 1)
    n = (1 << int(zoom)) - 1
    tx = np.clip(np.floor(px), 0, n).astype(np.int64)
    ty = np.clip(np.floor(py), 0, n).astype(np.int64)
    return (int(tx), int(ty)) if np.ndim(tx) == 0 else (tx, ty)


def tile_bounds_mercator(zoom: int, x, y):
    """Tile (x, y) at ``zoom`` -> (xmin, ymin, xmax, ymax) in EPSG:3857 metres."""
    xmin, ymax = pixel_to_mercator(np.asarray(x), np.asarray(y), zoom, 1)
    xmax, ymin = pixel_to_mercator(np.asarray(x) + 1, np.asarray(y) + 1, zoom, 1)
    return xmin, ymin, xmax, ymax


def tile_bounds_lonlat(zoom: int, x, y):
    """Tile (x, y) at ``zoom`` -> (west, south, east, north) in degrees."""
    xmin, ymin, xmax, ymax = tile_bounds_mercator(zoom, x, y)
    west, south = mercator_to_lonlat(xmin, ymin)
    east, north = mercator_to_lonlat(xmax, ymax)
    return west, south, east, north


def near_extent(lon, lat, bounds, pad_m: float = 0.0) -> np.ndarray:
    """Which points (lon, lat: degrees, (N,)) lie in ``bounds`` (EPSG:3857 xmin, ymin, xmax, ymax, metres) grown
    by ``pad_m`` metres; across the antimeridian too (a point at lon -179.9 is next to an extent at 179.9).
    Latitudes beyond the map are clipped to its edge."""
    lat = np.clip(np.asarray(lat, dtype=np.float64), -MAX_LATITUDE, MAX_LATITUDE)
    x, y = lonlat_to_mercator(np.asarray(lon, dtype=np.float64), lat)
    xmin, ymin, xmax, ymax = bounds
    world = 2.0 * ORIGIN_SHIFT_M
    near_x = np.zeros(np.shape(x), bool)
    for shift in (-world, 0.0, world):
        near_x |= (x + shift >= xmin - pad_m) & (x + shift <= xmax + pad_m)
    return near_x & (y >= ymin - pad_m) & (y <= ymax + pad_m)
