"""Small generated rasters for the imagery tests (seeded, real CRSs, written with rasterio)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import Resampling

from pipeline.geometry.mercator import ORIGIN_SHIFT_M

REAL_SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "real-sample"
REAL_MOSAICS = REAL_SAMPLE / "mosaics"


def from_origin(west: float, north: float, xres: float, yres: float) -> Affine:
    """North-up geotransform with its top-left corner at (west, north)."""
    return Affine(xres, 0.0, west, 0.0, -yres, north)


def smooth_rgb(seed: int, height: int, width: int, lo: int = 60, hi: int = 220, sigma: float = 2.0) -> np.ndarray:
    """(3, h, w) uint8 texture in [lo, hi]: seeded noise blurred so resampling is gentle."""
    rng = np.random.default_rng(seed)
    noise = rng.random((height, width, 3)).astype(np.float32)
    blurred = cv2.GaussianBlur(noise, (0, 0), sigma)
    blurred = (blurred - blurred.min()) / max(1e-6, float(blurred.max() - blurred.min()))
    out = lo + blurred * (hi - lo)
    return np.moveaxis(np.rint(out).astype(np.uint8), -1, 0)


def write_raster(
    path: Path,
    data: np.ndarray,
    crs: str,
    transform,
    nodata: float | None = None,
    overviews: list[int] | None = None,
    **profile,
) -> Path:
    """Write (bands, h, w) ``data`` as a tiled GeoTIFF, with internal overviews if asked."""
    count, height, width = data.shape
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=width,
        height=height,
        count=count,
        dtype=data.dtype,
        crs=crs,
        transform=transform,
        nodata=nodata,
        tiled=True,
        blockxsize=64,
        blockysize=64,
        **profile,
    ) as ds:
        ds.write(data)
        if overviews:
            ds.build_overviews(overviews, Resampling.average)
    return path


def utm_raster(path: Path, seed: int = 0, size: int = 256, res: float = 30.0, overviews=None, nodata=None, data=None):
    """A UTM 33N raster near the equator on the central meridian (scale ~1 to EPSG:3857)."""
    if data is None:
        data = smooth_rgb(seed, size, size)
    transform = from_origin(500000.0 - size * res / 2, 60000.0, res, res)
    return write_raster(path, data, "EPSG:32633", transform, nodata=nodata, overviews=overviews)


def lonlat_raster(path: Path, west: float, north: float, res_deg: float, data: np.ndarray, nodata=None) -> Path:
    """An EPSG:4326 raster with its top-left corner at (west, north)."""
    return write_raster(path, data, "EPSG:4326", from_origin(west, north, res_deg, res_deg), nodata=nodata)


def seam_rasters(folder: Path, res: float = 1000.0, width: int = 8, height: int = 4, east=None, west=None):
    """Two EPSG:3857 rasters ``width`` x ``height`` px of ``res`` m, ending at lon 180 and starting at lon -180.

    By default red counts the columns (east: 10, 11, ...; west: 100, 101, ...) and green is 50."""
    top = height * res / 2
    paths = []
    for name, data, left, red0 in (
        ("east", east, ORIGIN_SHIFT_M - width * res, 10),
        ("west", west, -ORIGIN_SHIFT_M, 100),
    ):
        if data is None:
            data = np.full((3, height, width), 50, np.uint8)
            data[0] = red0 + np.arange(width)
        paths.append(write_raster(folder / f"{name}.tif", data, "EPSG:3857", from_origin(left, top, res, res)))
    return paths
