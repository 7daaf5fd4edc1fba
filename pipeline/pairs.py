"""Training pairs: every (footprint, database window) whose IoU on the ellipsoid reaches a threshold.

AstroLoc joined 221k footprints with 5.2M windows at IoU >= 0.2. A spatial index plus a
polygon intersection per candidate is far too slow for that, so the join prunes what cannot
reach the threshold and vectorizes the rest (:func:`join`):

1. **Zooms.** IoU <= smaller area / larger area, and a window's area is fixed by its zoom and
   latitude, so only zooms whose windows are within a factor ``1 / iou`` of the footprint's
   area (about two of five) are considered.
2. **Windows.** Windows lie on a regular grid (half-window stride), so those overlapping the
   footprint's Mercator box are enumerated directly, and looked up in the database by an
   integer key (sorted array, binary search): no spatial index.
3. **Bounds.** A window whose exact area ratio, or whose overlap with the footprint's box,
   cannot give the threshold is dropped before any clipping.
4. **Exact IoU.** The rest are clipped (Sutherland-Hodgman, vectorized over pairs) and
   measured on the WGS84 ellipsoid (:mod:`pipeline.geometry.overlap`).

Footprints crossing the antimeridian are unwrapped; windows beyond it, and the windows across
it, are found modulo the world's width and measured in the footprint's frame. Footprint edges
are straight in lon/lat (the manifests' convention); large footprints are densified so their
Mercator rings follow those edges.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .geometry.mercator import EARTH_RADIUS_M, MAX_LATITUDE, lonlat_to_mercator
from .geometry.overlap import box_area_km2_mercator, clip_to_boxes, densify_lonlat, mercator_polygon_area_km2

CORNERS = ("tl", "tr", "br", "bl")
WORLD_M = 2.0 * math.pi * EARTH_RADIUS_M
HALF_WORLD_M = WORLD_M / 2.0


def _key(zoom, x, y) -> np.ndarray:
    """One int64 per window: zoom (6 bits), x and y (28 bits each)."""
    return (np.asarray(zoom, np.int64) << 56) | (np.asarray(x, np.int64) << 28) | np.asarray(y, np.int64)


@dataclass
class Database:
    """The database windows as sorted integer keys (for 5.2M windows: 42 MB)."""

    keys: np.ndarray  # (M,) int64, sorted
    zooms: tuple[int, ...]
    size_tiles: int

    @classmethod
    def from_columns(cls, zoom: np.ndarray, x: np.ndarray, y: np.ndarray, size_tiles: int) -> Database:
        keys = np.unique(_key(zoom, x, y))
        return cls(keys, tuple(int(z) for z in np.unique(zoom)), int(size_tiles))

    def contains(self, keys: np.ndarray) -> np.ndarray:
        i = np.searchsorted(self.keys, keys)
        i = np.minimum(i, len(self.keys) - 1)
        return self.keys[i] == keys if len(self.keys) else np.zeros(len(keys), bool)


@dataclass
class Rings:
    """Footprints as Mercator rings: xs, ys (P, V) metres (unwrapped), n (P,), area_km2 (P,)."""

    xs: np.ndarray
    ys: np.ndarray
    n: np.ndarray
    area_km2: np.ndarray

    def take(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.xs[idx], self.ys[idx], self.n[idx]


def densify_steps(lat_min_deg: np.ndarray, lat_max_deg: np.ndarray) -> np.ndarray:
    """Pieces per footprint edge so that Mercator rings follow straight lon/lat edges.

    Mercator's y bends a lon/lat-straight edge by about tan(lat) * dlat / 8 of its length (dlat
    in radians), and the error of a ring of pieces falls with their number squared: the pieces
    keep that bend below ~0.03 % (1 piece for ordinary footprints, 5 near 85 deg or for 1000 km)."""
    far = np.maximum(np.abs(lat_min_deg), np.abs(lat_max_deg))
    bend = np.tan(np.radians(np.minimum(far, MAX_LATITUDE))) * np.radians(lat_max_deg - lat_min_deg)
    return np.clip(np.ceil(np.sqrt(bend / 0.002)), 1, 32).astype(np.int64)


def footprint_rings(corners_lon: np.ndarray, corners_lat: np.ndarray) -> Rings:
    """Corners (P, 4) lon/lat degrees (tl, tr, br, bl) -> Mercator rings, unwrapped around the first corner.

    Latitudes beyond the Web Mercator map are clamped to it (no window lies beyond)."""
    lon = np.asarray(corners_lon, np.float64).copy()
    lat = np.clip(np.asarray(corners_lat, np.float64), -MAX_LATITUDE, MAX_LATITUDE)
    lon = lon[:, :1] + (lon - lon[:, :1] + 180.0) % 360.0 - 180.0  # unwrap: continuous across +-180
    steps = densify_steps(lat.min(1), lat.max(1))
    P = len(lon)
    V = 4 * int(steps.max()) if P else 4
    xs, ys = np.zeros((P, V)), np.zeros((P, V))
    n = 4 * steps
    for s in np.unique(steps):
        rows = np.flatnonzero(steps == s)
        dl, dt = densify_lonlat(lon[rows], lat[rows], int(s))
        x, y = lonlat_to_mercator(dl, dt)
        xs[rows, : 4 * s], ys[rows, : 4 * s] = x, y
    return Rings(xs, ys, n, mercator_polygon_area_km2(xs, ys, n))


def _candidates(rings: Rings, zoom: int, db: Database, iou_min: float) -> tuple[np.ndarray, ...]:
    """(footprint index, x origin (unwrapped), y origin) of windows at ``zoom`` worth measuring."""
    size, stride = db.size_tiles, db.size_tiles // 2
    n_tiles = 1 << zoom
    tile_m = WORLD_M / n_tiles
    valid = np.arange(rings.xs.shape[1])[None, :] < rings.n[:, None]
    xmin = np.where(valid, rings.xs, np.inf).min(1)
    xmax = np.where(valid, rings.xs, -np.inf).max(1)
    ymin = np.where(valid, rings.ys, np.inf).min(1)
    ymax = np.where(valid, rings.ys, -np.inf).max(1)
    # zoom filter: a window's area near the footprint's centre, with a margin for latitude
    yc = (ymin + ymax) / 2.0
    side = size * tile_m
    approx = box_area_km2_mercator(
        np.column_stack([np.zeros_like(yc), yc - side / 2, np.full_like(yc, side), yc + side / 2])
    )
    ratio = approx / rings.area_km2
    margin = 2.0
    ok = (ratio >= iou_min / margin) & (ratio <= margin / iou_min)
    fi = np.flatnonzero(ok)
    if not len(fi):
        return (np.zeros(0, np.int64),) * 3
    left, right = (xmin[fi] + HALF_WORLD_M) / tile_m, (xmax[fi] + HALF_WORLD_M) / tile_m
    top, bottom = (HALF_WORLD_M - ymax[fi]) / tile_m, (HALF_WORLD_M - ymin[fi]) / tile_m
    kx0 = np.floor((left - size) / stride).astype(np.int64) + 1
    kx1 = np.ceil(right / stride).astype(np.int64) - 1
    ky0 = np.maximum(np.floor((top - size) / stride).astype(np.int64) + 1, 0)
    ky1 = np.minimum(np.ceil(bottom / stride).astype(np.int64) - 1, (n_tiles - size) // stride)
    nx, ny = np.maximum(kx1 - kx0 + 1, 0), np.maximum(ky1 - ky0 + 1, 0)
    count = nx * ny
    f = np.repeat(fi, count)
    start = np.repeat(np.cumsum(count) - count, count)
    j = np.arange(int(count.sum())) - start  # index within the footprint's block
    nxr = np.repeat(nx, count)
    kx = np.repeat(kx0, count) + j % np.maximum(nxr, 1)
    ky = np.repeat(ky0, count) + j // np.maximum(nxr, 1)
    return f, kx * stride, ky * stride


def join(rings: Rings, db: Database, iou_min: float, zooms: list[int] | None = None) -> pd.DataFrame:
    """Pairs of footprints (rows of ``rings``) and database windows with IoU >= ``iou_min``.

    Returns columns: fp (row in ``rings``), zoom, x, y (window origin tiles), iou,
    intersection_km2, photo_area_km2, tile_area_km2; sorted by fp, zoom, y, x.
    """
    if not 0.0 < iou_min <= 1.0:
        raise ValueError(f"IoU threshold must be in (0, 1], got {iou_min}")
    out = []
    size = db.size_tiles
    for zoom in sorted(zooms if zooms is not None else db.zooms):
        f, x0, y0 = _candidates(rings, zoom, db, iou_min)
        if not len(f):
            continue
        n_tiles = 1 << zoom
        xw = x0 % n_tiles  # the window's own origin, for a footprint unwrapped past +-180 (or a window across it)
        keep = db.contains(_key(zoom, xw, y0))
        f, x0, y0, xw = f[keep], x0[keep], y0[keep], xw[keep]
        tile_m = WORLD_M / n_tiles
        bx0 = x0 * tile_m - HALF_WORLD_M
        by1 = HALF_WORLD_M - y0 * tile_m
        boxes = np.column_stack([bx0, by1 - size * tile_m, bx0 + size * tile_m, by1])
        a_w = box_area_km2_mercator(boxes)
        a_f = rings.area_km2[f]
        # bounds: area ratio, then the overlap of the footprint's box with the window
        keep = np.minimum(a_w, a_f) >= iou_min * np.maximum(a_w, a_f)
        f, xw, y0, boxes, a_w, a_f = f[keep], xw[keep], y0[keep], boxes[keep], a_w[keep], a_f[keep]
        xs, ys, n = rings.take(f)
        valid = np.arange(xs.shape[1])[None, :] < n[:, None]
        ib = np.column_stack(
            [
                np.maximum(boxes[:, 0], np.where(valid, xs, np.inf).min(1)),
                np.maximum(boxes[:, 1], np.where(valid, ys, np.inf).min(1)),
                np.minimum(boxes[:, 2], np.where(valid, xs, -np.inf).max(1)),
                np.minimum(boxes[:, 3], np.where(valid, ys, -np.inf).max(1)),
            ]
        )
        i_max = np.where(
            (ib[:, 2] > ib[:, 0]) & (ib[:, 3] > ib[:, 1]),
            box_area_km2_mercator(
                np.column_stack([ib[:, 0], ib[:, 1], np.maximum(ib[:, 2], ib[:, 0]), np.maximum(ib[:, 3], ib[:, 1])])
            ),
            0.0,
        )
        keep = i_max >= iou_min * (a_f + a_w - i_max) * (1 - 1e-9)
        if not keep.any():
            continue
        f, xw, y0, boxes, a_w, a_f = f[keep], xw[keep], y0[keep], boxes[keep], a_w[keep], a_f[keep]
        xs, ys, n = xs[keep], ys[keep], n[keep]
        inter = np.zeros(len(f))
        for nv in np.unique(n):  # rings of one vertex count at a time: no padding to the largest
            g = np.flatnonzero(n == nv)
            cx, cy, cn = clip_to_boxes(xs[g, :nv], ys[g, :nv], n[g], boxes[g])
            inter[g] = mercator_polygon_area_km2(cx, cy, cn)
        inter = np.minimum(inter, np.minimum(a_f, a_w))
        iou = inter / (a_f + a_w - inter)
        keep = iou >= iou_min
        out.append(
            pd.DataFrame(
                {
                    "fp": f[keep],
                    "zoom": np.full(int(keep.sum()), zoom, np.int32),
                    "x": xw[keep],
                    "y": y0[keep],
                    "iou": iou[keep],
                    "intersection_km2": inter[keep],
                    "photo_area_km2": a_f[keep],
                    "tile_area_km2": a_w[keep],
                }
            )
        )
    if not out:
        return pd.DataFrame(
            {
                c: pd.Series(dtype=t)
                for c, t in (
                    ("fp", "int64"),
                    ("zoom", "int32"),
                    ("x", "int64"),
                    ("y", "int64"),
                    ("iou", "float64"),
                    ("intersection_km2", "float64"),
                    ("photo_area_km2", "float64"),
                    ("tile_area_km2", "float64"),
                )
            }
        )
    return pd.concat(out, ignore_index=True).sort_values(["fp", "zoom", "y", "x"], kind="stable").reset_index(drop=True)
