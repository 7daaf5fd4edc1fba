"""Vectorized overlap of many polygons with many database windows, by area on the ellipsoid.

The pairs stage measures millions of (footprint, window) overlaps, so this module works on
NumPy arrays of polygons in Web Mercator metres, one row per pair:

* ``xs, ys``: ``(P, V)`` float64 vertex coordinates (EPSG:3857 metres; rows may be unwrapped
  past +-180 deg so that a polygon crossing the antimeridian is one ring),
* ``n``: ``(P,)`` int vertex counts (vertices at index >= n are ignored).

A database window is exactly an axis-aligned Mercator box, so clipping a polygon to it is
Sutherland-Hodgman against four half-planes (:func:`clip_to_boxes`), exact for any simple
polygon. The area of a polygon whose edges are straight in Web Mercator is exact on the WGS84
ellipsoid by Green's theorem: ``area = |closed integral of Z(lat) dlon|`` with ``Z`` the zone
area between the equator and ``lat`` per radian of longitude, integrated along each edge by
4-point Gauss-Legendre (exact for the windows' edges: parallels and meridians)
(:func:`mercator_polygon_area_km2`). Footprint edges, straight in lon/lat by the manifests'
convention, are densified before projection where that matters (:func:`densify_lonlat`).
"""

from __future__ import annotations

import numpy as np

from .geodesy import zone_area_m2
from .mercator import EARTH_RADIUS_M

_GL_T, _GL_W = np.polynomial.legendre.leggauss(4)
_GL_T = (_GL_T + 1.0) / 2.0  # nodes on [0, 1]
_GL_W = _GL_W / 2.0


def _lat_of_y(y: np.ndarray) -> np.ndarray:
    """Web Mercator y (metres) -> latitude (degrees)."""
    return np.degrees(2.0 * np.arctan(np.exp(y / EARTH_RADIUS_M)) - np.pi / 2.0)


def mercator_polygon_area_km2(xs: np.ndarray, ys: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Areas (km2, WGS84) of polygons (P, V) whose edges are straight lines in Web Mercator.

    Rows with fewer than 3 vertices have area 0. Orientation does not matter.
    """
    xs, ys, n = np.asarray(xs, np.float64), np.asarray(ys, np.float64), np.asarray(n)
    P, V = xs.shape
    if V == 0:
        return np.zeros(P)
    idx = np.arange(V)
    nxt = (idx[None, :] + 1) % np.maximum(n, 1)[:, None]
    x2, y2 = np.take_along_axis(xs, nxt, 1), np.take_along_axis(ys, nxt, 1)
    valid = idx[None, :] < n[:, None]
    dlon = (x2 - xs) / EARTH_RADIUS_M  # radians
    # mean of Z(lat(y)) along the edge, y linear in the parameter
    y_nodes = ys[..., None] + (y2 - ys)[..., None] * _GL_T
    z = zone_area_m2(_lat_of_y(y_nodes)) / (2.0 * np.pi)  # per radian of longitude
    mean_z = (z * _GL_W).sum(-1)
    area = np.abs(np.where(valid, mean_z * dlon, 0.0).sum(1)) / 1e6
    return np.where(n >= 3, area, 0.0)


def _clip_half(xs, ys, n, coord: int, bound: np.ndarray, keep_above: bool):
    """One Sutherland-Hodgman pass: keep the part of each polygon on one side of x or y = bound."""
    P, V = xs.shape
    idx = np.arange(V)
    valid = idx[None, :] < n[:, None]
    nxt = (idx[None, :] + 1) % np.maximum(n, 1)[:, None]
    x2, y2 = np.take_along_axis(xs, nxt, 1), np.take_along_axis(ys, nxt, 1)
    c1, c2 = (xs, x2) if coord == 0 else (ys, y2)
    sign = 1.0 if keep_above else -1.0
    d1, d2 = (c1 - bound[:, None]) * sign, (c2 - bound[:, None]) * sign
    in1, in2 = d1 >= 0, d2 >= 0
    cross = valid & (in1 != in2)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(cross, d1 / (d1 - d2), 0.0)
    ix, iy = xs + t * (x2 - xs), ys + t * (y2 - ys)
    # per edge (v1 -> v2): the crossing point if it crosses, then v2 if v2 is inside
    out_x = np.stack([ix, x2], 2).reshape(P, 2 * V)
    out_y = np.stack([iy, y2], 2).reshape(P, 2 * V)
    keep = np.stack([cross, valid & in2], 2).reshape(P, 2 * V)
    counts = keep.sum(1)
    width = int(counts.max()) if P else 0
    order = np.argsort(~keep, axis=1, kind="stable")[:, :width]
    return np.take_along_axis(out_x, order, 1), np.take_along_axis(out_y, order, 1), counts


def clip_to_boxes(xs: np.ndarray, ys: np.ndarray, n: np.ndarray, boxes: np.ndarray):
    """Clip polygons (P, V) to axis-aligned boxes (P, 4) = (xmin, ymin, xmax, ymax), row by row.

    Returns ``(xs, ys, n)`` of the clipped polygons (n = 0 where they do not overlap).
    """
    xs, ys, n = np.asarray(xs, np.float64), np.asarray(ys, np.float64), np.asarray(n, np.int64)
    boxes = np.asarray(boxes, np.float64)
    for coord, col, above in ((0, 0, True), (0, 2, False), (1, 1, True), (1, 3, False)):
        if xs.shape[1] == 0:
            break
        xs, ys, n = _clip_half(xs, ys, n, coord, boxes[:, col], above)
    return xs, ys, n


def box_area_km2_mercator(boxes: np.ndarray) -> np.ndarray:
    """Exact WGS84 areas (km2) of Web Mercator boxes (P, 4) = (xmin, ymin, xmax, ymax)."""
    boxes = np.asarray(boxes, np.float64)
    dlon = (boxes[:, 2] - boxes[:, 0]) / EARTH_RADIUS_M
    dz = zone_area_m2(_lat_of_y(boxes[:, 3])) - zone_area_m2(_lat_of_y(boxes[:, 1]))
    return np.abs(dz) / (2.0 * np.pi) * dlon / 1e6


def densify_lonlat(lon: np.ndarray, lat: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Split every edge of rings (P, V) of lon/lat degrees into ``steps`` straight pieces.

    Returns (P, V * steps) arrays: each edge's start and ``steps - 1`` points in between."""
    lon, lat = np.asarray(lon, np.float64), np.asarray(lat, np.float64)
    if steps <= 1:
        return lon, lat
    t = np.arange(steps) / steps
    lon2, lat2 = np.roll(lon, -1, 1), np.roll(lat, -1, 1)
    P = lon.shape[0]
    return (
        (lon[..., None] + (lon2 - lon)[..., None] * t).reshape(P, -1),
        (lat[..., None] + (lat2 - lat)[..., None] * t).reshape(P, -1),
    )
