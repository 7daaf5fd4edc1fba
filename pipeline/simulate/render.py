"""What a camera sees of a tile source: every pixel ray-cast to the ground and sampled there.

The ground under the photo is rendered north-up (EPSG:3857) at the photo's finest ground
resolution, then each photo pixel samples it where its ray lands. Where the photo's pixels
are coarser than the render (the far side of a tilted view), a Gaussian pyramid of the render
is sampled at the matching level (trilinear, like a GPU's mipmaps), so nothing aliases.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from ..geometry.geodesy import wrap_lon
from ..geometry.mercator import MAX_LATITUDE, ORIGIN_SHIFT_M, lonlat_to_mercator
from ..imagery.base import TileSource
from .camera import Camera, GroundHits

MAX_RENDER_SIDE = 4096
"""Largest side (pixels) of the north-up render behind one photo; coarser beyond it."""


@dataclass(frozen=True)
class View:
    """A rendered photo before appearance effects.

    ``rgb`` (H, W, 3) uint8; ``valid`` (H, W) bool where the ray hit imagery; ``hits`` the ray
    casts of the pixel centres; ``x``, ``y`` (H, W) float64 Web Mercator metres of the pixel
    centres (NaN where the ray misses); ``gsd_m`` (H, W) ground size of a pixel in Mercator
    metres; ``render_pixel_m`` the pixel size of the north-up render.
    """

    rgb: np.ndarray
    valid: np.ndarray
    hits: GroundHits
    x: np.ndarray
    y: np.ndarray
    gsd_m: np.ndarray
    render_pixel_m: float


def pixel_grid(camera: Camera) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (u, v), each (H, W)."""
    u = np.arange(camera.width, dtype=np.float64) + 0.5
    v = np.arange(camera.height, dtype=np.float64) + 0.5
    return np.meshgrid(u, v)


def _local_scale(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Ground size (m) of each pixel: mean length of the two pixel steps, (H, W)."""
    xu = np.gradient(x, axis=1)
    yu = np.gradient(y, axis=1)
    xv = np.gradient(x, axis=0)
    yv = np.gradient(y, axis=0)
    return 0.5 * (np.hypot(xu, yu) + np.hypot(xv, yv))


def render_view(camera: Camera, source: TileSource, max_render_side: int = MAX_RENDER_SIDE) -> View:
    """Ray-cast every pixel of ``camera`` and sample ``source`` there (see the module doc)."""
    u, v = pixel_grid(camera)
    hits = camera.cast(u, v)
    h, w = camera.height, camera.width
    lat = np.clip(hits.lat, -MAX_LATITUDE, MAX_LATITUDE)
    # longitudes continuous across the antimeridian (unwrapped about the first hit), so a view
    # across lon 180 is one box; the source reads its far side from the other end of the map
    lon0 = float(hits.lon[hits.hit][0]) if hits.hit.any() else 0.0
    d = hits.lon - lon0
    lon = hits.lon + (wrap_lon(d) - d)  # + 0 exactly where no wrap is needed: ordinary views unchanged bit for bit
    x, y = lonlat_to_mercator(np.where(hits.hit, lon, 0.0), np.where(hits.hit, lat, 0.0))
    x = np.where(hits.hit, x, np.nan)
    y = np.where(hits.hit, y, np.nan)
    rgb = np.zeros((h, w, 3), np.uint8)
    valid = np.zeros((h, w), bool)
    if not hits.hit.any():
        return View(rgb, valid, hits, x, y, np.full((h, w), np.nan), float("nan"))
    scale = _local_scale(np.where(hits.hit, x, np.nanmean(x)), np.where(hits.hit, y, np.nanmean(y)))
    scale = np.where(hits.hit, scale, np.nan)
    # limb pixels next to space have meaningless gradients: cap at the 99th percentile
    fine = float(np.nanpercentile(scale, 1))
    coarse = float(np.nanpercentile(scale, 99))
    scale = np.clip(scale, fine, coarse)
    sxmin, symin, sxmax, symax = source.bounds_mercator
    pad = 2.0 * coarse
    xmin, xmax = float(np.nanmin(x)) - pad, float(np.nanmax(x)) + pad
    if -ORIGIN_SHIFT_M <= xmin and xmax <= ORIGIN_SHIFT_M:  # not across lon 180: only where the source has data
        xmin, xmax = max(xmin, sxmin), min(xmax, sxmax)
    ymin = max(float(np.nanmin(y)) - pad, symin)
    ymax = min(float(np.nanmax(y)) + pad, symax)
    if not (xmax > xmin and ymax > ymin):
        return View(rgb, valid, hits, x, y, scale, float("nan"))
    res = max(fine, max(xmax - xmin, ymax - ymin) / max_render_side)
    nx = max(1, int(math.ceil((xmax - xmin) / res)))
    ny = max(1, int(math.ceil((ymax - ymin) / res)))
    xmax, ymin = xmin + nx * res, ymax - ny * res
    ground = source.render((xmin, ymin, xmax, ymax), nx, ny)

    # level of detail per pixel and the pyramid levels needed
    lod = np.log2(np.maximum(scale / res, 1.0))
    lod = np.where(hits.hit, lod, 0.0)
    top = int(min(math.ceil(float(lod.max())), 6))
    col = (np.where(hits.hit, x, xmin - 1e9) - xmin) / res  # render pixel coordinates (edges at 0)
    row = (ymax - np.where(hits.hit, y, ymax + 1e9)) / res
    img = ground.rgb.astype(np.float32)
    msk = ground.mask.astype(np.float32)
    acc = np.zeros((h, w, 3), np.float32)
    macc = np.zeros((h, w), np.float32)
    for k in range(top + 1):
        if k:
            if min(img.shape[:2]) < 2:
                break
            img = cv2.pyrDown(img)
            msk = cv2.pyrDown(msk)
        wk = np.clip(1.0 - np.abs(lod - k), 0.0, 1.0).astype(np.float32)
        if k == top:
            wk = np.where(lod >= k, 1.0, wk).astype(np.float32)
        if not wk.any():
            continue
        f = 2.0**k
        mx = (col / f - 0.5).astype(np.float32)
        my = (row / f - 0.5).astype(np.float32)
        s = cv2.remap(img, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        m = cv2.remap(msk, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        acc += s * wk[..., None]
        macc += m * wk
    valid = hits.hit & (macc >= 0.5)
    out = acc / np.maximum(macc, 1e-6)[..., None]
    rgb = np.where(valid[..., None], np.clip(out + 0.5, 0, 255), 0).astype(np.uint8)
    return View(rgb, valid, hits, x, y, scale, float(res))
