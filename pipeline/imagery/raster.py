"""Tile source over GDAL-readable rasters (GeoTIFF, COG, VRT, ...) in any CRS.

:class:`RasterTileSource` renders any EPSG:3857 box from one or more rasters:

- Each raster whose (EPSG:3857) extent meets the box is reprojected into the box's pixel grid
  with ``rasterio.warp.reproject``; the first raster (in path order) with a valid pixel wins.
- Validity: nodata values, per-dataset masks (internal/external ``.msk``) and alpha bands
  become one 0..255 "alpha" band that is warped together with the colours
  (``src_alpha``/``dst_alpha``). GDAL weights each source sample by its alpha, so colours at
  the data edge are never darkened by the nodata fill; a destination pixel is valid when its
  warped alpha is at least half (the edge is therefore placed within half a pixel). With
  per-band nodata, a pixel is invalid only when all its colour bands are nodata.
- Overviews: when the box's pixels are coarser than the raster's, the raster is opened at the
  coarsest overview that is still at least as fine as the target
  (:func:`choose_overview_level`, ``rasterio.open(path, overview_level=k)``). When even that
  leaves a reduction of 2x or more (no or too few overviews), the source window is read
  decimated by an integer factor with GDAL's ``average`` resampling (nodata-aware), so memory
  stays proportional to the output and coarse renders are not aliased.
- Bands: 1 band is grey (replicated to RGB), or a palette (colour table applied); otherwise
  the bands whose colour interpretation is red/green/blue, or else the first three non-alpha
  bands (2 non-alpha bands: the first, as grey). An alpha band (colour interpretation alpha)
  is used as the mask.
- Data types: uint8 is used as is. Any other type is stretched linearly to 0..255 from
  ``value_range=(lo, hi)`` when given, else from the 2nd..98th percentile of the valid values
  of the (up to three) bands together, computed once per raster at construction from a
  reduced read (so every render of a raster uses the same stretch and colours stay balanced).
  NaN is invalid.
- Reproducibility: the kernel scale GDAL uses when downsampling is set explicitly
  (``XSCALE``/``YSCALE``) rather than estimated per processing chunk, and decimated reads sit
  on a fixed block grid, so a tile and a window covering the same place get the same pixels.
  That is exact for EPSG:3857 rasters; for other CRSs rasterio's approximate coordinate
  transformer (1/8 pixel tolerance) can still make a few pixels differ by a grey level.
- Threads: rasterio datasets are never shared between threads; each thread keeps its own
  small LRU of open handles (``threading.local``). The object pickles (for Dask): handles,
  locks and caches are recreated on the other side.
"""

from __future__ import annotations

import math
import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.warp import reproject, transform_bounds
from rasterio.warp import transform as warp_transform
from rasterio.windows import Window as RioWindow

from ..geometry.mercator import MAX_LATITUDE, ORIGIN_SHIFT_M, lonlat_to_mercator
from .base import BoundsMercator, Rendered, TileSource

# rasterio.warp.reproject on arrays (which always get a transform here) occasionally reports
# a "no geotransform" warning when first called from several threads at once; the result is
# unaffected (checked against serial renders), so that one message from rasterio.warp is muted.
warnings.filterwarnings(
    "ignore", message="Dataset has no geotransform", category=NotGeoreferencedWarning, module=r"rasterio\.warp"
)

MERCATOR = CRS.from_epsg(3857)
WGS84 = CRS.from_epsg(4326)

_PAD_PX = 8
"""Source pixels read beyond the box on every side (covers a lanczos kernel widened 2x)."""
_OVERVIEW_TOLERANCE = 1e-3
"""Relative slack when comparing an overview's factor with the wanted reduction."""
_VALID_ALPHA = 128
"""A warped pixel is valid when at least half of its resampling weight was on valid data."""


class RasterOpenError(OSError):
    """A raster that cannot be opened or used (missing, unreadable, no georeference)."""


class RasterReadError(OSError):
    """Reading pixels from a raster failed during a render."""


def choose_overview_level(overview_factors: Sequence[float], ratio: float) -> int | None:
    """The overview to read when each target pixel spans ``ratio`` full-resolution pixels.

    Args:
        overview_factors: decimation factors of the overviews, finest first (as returned by
            ``dataset.overviews(band)``, e.g. ``[2, 4, 8]``).
        ratio: target pixel size / full-resolution pixel size (> 1 when the target is
            coarser).

    Returns:
        The index ``k`` (for ``rasterio.open(path, overview_level=k)``) of the coarsest
        overview whose pixels are still at least as fine as the target (factor <= ratio,
        with a 0.1% tolerance), or ``None`` when the full resolution is needed.
    """
    best = None
    best_factor = 1.0
    limit = float(ratio) * (1.0 + _OVERVIEW_TOLERANCE)
    for k, f in enumerate(overview_factors):
        f = float(f)
        if best_factor < f <= limit:
            best, best_factor = k, f
    return best


@dataclass
class RasterInfo:
    """What is known about one raster after opening it once (no open handle is kept)."""

    path: str
    crs: CRS
    transform: Affine
    width: int
    height: int
    bands: tuple[int, ...]
    """1-based band indexes giving R, G, B (one index for grey/palette)."""
    alpha_band: int | None
    per_dataset_mask: bool
    nodata: float | None
    dtype: str
    overview_factors: tuple[int, ...]
    bounds_mercator: BoundsMercator
    palette: np.ndarray | None = None
    """(256, 4) uint8 lookup table (RGBA) for a paletted single band."""
    value_range: tuple[float, float] | None = None
    """(lo, hi) mapped to 0..255 for non-uint8 data."""
    is_mercator: bool = False

    @property
    def resolution(self) -> tuple[float, float]:
        """Pixel size in the raster's own CRS units (x, y)."""
        a = self.transform
        return math.hypot(a.a, a.d), math.hypot(a.b, a.e)


def _mercator_bounds_of(crs: CRS, bounds: tuple[float, float, float, float]) -> BoundsMercator:
    """Extent of ``bounds`` (in ``crs``) in EPSG:3857, latitudes clipped to Mercator's range.

    Goes through lon/lat: EPSG:3857's x depends only on longitude and y only on latitude,
    so the lon/lat box maps exactly onto the Mercator box.
    """
    if crs == MERCATOR:
        xmin, ymin, xmax, ymax = bounds
        lim = ORIGIN_SHIFT_M
        return max(xmin, -lim), max(ymin, -lim), min(xmax, lim), min(ymax, lim)
    west, south, east, north = transform_bounds(crs, WGS84, *bounds, densify_pts=21)
    if not all(np.isfinite([west, south, east, north])):
        raise ValueError("extent cannot be transformed to lon/lat")
    if west > east:  # crosses the antimeridian
        west, east = -180.0, 180.0
    west, east = max(west, -180.0), min(east, 180.0)
    south = min(max(south, -MAX_LATITUDE), MAX_LATITUDE)
    north = min(max(north, -MAX_LATITUDE), MAX_LATITUDE)
    xmin, ymin = lonlat_to_mercator(west, south)
    xmax, ymax = lonlat_to_mercator(east, north)
    return float(xmin), float(ymin), float(xmax), float(ymax)


def _select_bands(ds) -> tuple[tuple[int, ...], int | None, np.ndarray | None]:
    """(colour band indexes, alpha band index or None, palette LUT or None)."""
    interp = list(ds.colorinterp)
    alpha = None
    for i, ci in enumerate(interp, start=1):
        if ci == ColorInterp.alpha:
            alpha = i
            break
    colour = [i for i in range(1, ds.count + 1) if i != alpha]
    if not colour:
        raise ValueError("it has no colour band")
    if len(colour) <= 2:
        b = colour[0]
        palette = None
        if interp[b - 1] == ColorInterp.palette:
            try:
                cmap = ds.colormap(b)
            except ValueError:
                cmap = None
            if cmap:
                palette = np.zeros((256, 4), np.uint8)
                for k, rgba in cmap.items():
                    if 0 <= k < 256:
                        palette[k] = rgba
        return (b,), alpha, palette
    by_interp = {interp[i - 1]: i for i in colour}
    rgb = [by_interp.get(c) for c in (ColorInterp.red, ColorInterp.green, ColorInterp.blue)]
    if all(rgb):
        return tuple(rgb), alpha, None
    return tuple(colour[:3]), alpha, None


def _auto_value_range(ds, bands: Sequence[int], nodata) -> tuple[float, float]:
    """2nd..98th percentile of the valid values of ``bands`` from a reduced read."""
    scale = max(1, int(math.ceil(max(ds.width, ds.height) / 1024)))
    shape = (len(bands), max(1, ds.height // scale), max(1, ds.width // scale))
    data = ds.read(list(bands), out_shape=shape, resampling=Resampling.nearest).astype(np.float64)
    valid = np.isfinite(data)
    if nodata is not None and np.isfinite(nodata):
        valid &= data != nodata
    vals = data[valid]
    if vals.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(vals, [2.0, 98.0])
    if not hi > lo:
        lo, hi = float(vals.min()), float(vals.max())
        if not hi > lo:
            hi = lo + 1.0
    return float(lo), float(hi)


def inspect_raster(path: str, value_range: tuple[float, float] | None = None) -> RasterInfo:
    """Open ``path`` once and describe it; raises :class:`RasterOpenError` with the fix."""
    try:
        ds = rasterio.open(path)
    except (RasterioError, OSError) as e:
        hint = (
            "the file does not exist"
            if "://" not in str(path) and not str(path).startswith("/vsi") and not os.path.exists(path)
            else "it is not a raster GDAL can read"
        )
        raise RasterOpenError(
            f"cannot open raster {path}: {hint} ({e}); pass GDAL-readable rasters "
            "(GeoTIFF, COG, VRT, ...) or an XYZ tile folder"
        ) from e
    with ds:
        if ds.crs is None:
            raise RasterOpenError(
                f"raster {path} has no coordinate reference system; assign one "
                "(e.g. `gdal_edit.py -a_srs EPSG:XXXX file`) or warp it with gdalwarp"
            )
        if ds.transform == Affine.identity() and not ds.gcps[0]:
            raise RasterOpenError(
                f"raster {path} has no geotransform (not georeferenced); georeference it "
                "(gdal_translate -a_ullr ... or gdalwarp) before using it as a tile source"
            )
        if ds.transform == Affine.identity() and ds.gcps[0]:
            raise RasterOpenError(
                f"raster {path} is georeferenced by GCPs only; warp it first "
                "(`gdalwarp -t_srs EPSG:3857 in out.tif`, or a VRT) and pass the result"
            )
        try:
            bands, alpha, palette = _select_bands(ds)
        except ValueError as e:
            raise RasterOpenError(f"raster {path} cannot be shown as RGB: {e}") from None
        flags = ds.mask_flag_enums[bands[0] - 1]
        per_dataset = MaskFlags.per_dataset in flags and MaskFlags.alpha not in flags
        dtype = ds.dtypes[bands[0] - 1]
        nodata = ds.nodatavals[bands[0] - 1]
        vr = None
        if dtype != "uint8" and palette is None:
            vr = tuple(map(float, value_range)) if value_range is not None else _auto_value_range(ds, bands, nodata)
        try:
            merc = _mercator_bounds_of(ds.crs, tuple(ds.bounds))
        except Exception as e:  # noqa: BLE001 - PROJ errors come in several types
            raise RasterOpenError(
                f"raster {path}: its extent cannot be transformed to EPSG:3857 ({e}); "
                "warp it to EPSG:3857 or EPSG:4326 first"
            ) from None
        return RasterInfo(
            path=str(path),
            crs=ds.crs,
            transform=ds.transform,
            width=ds.width,
            height=ds.height,
            bands=bands,
            alpha_band=alpha,
            per_dataset_mask=per_dataset,
            nodata=nodata,
            dtype=dtype,
            overview_factors=tuple(ds.overviews(bands[0])),
            bounds_mercator=merc,
            palette=palette,
            value_range=vr,
            is_mercator=ds.crs == MERCATOR,
        )


def _to_uint8(data: np.ndarray, info: RasterInfo) -> tuple[np.ndarray, np.ndarray | None]:
    """(bands, h, w) raw values -> (3, h, w) uint8 RGB, plus an extra validity (or None)."""
    extra = None
    if info.palette is not None:
        idx = data[0]
        if idx.dtype != np.uint8:
            bad = (idx < 0) | (idx > 255)
            idx = np.clip(idx, 0, 255).astype(np.uint8)
            extra = ~bad
        rgba = info.palette[idx]  # (h, w, 4)
        a_valid = rgba[..., 3] >= _VALID_ALPHA
        extra = a_valid if extra is None else extra & a_valid
        return np.ascontiguousarray(np.moveaxis(rgba[..., :3], -1, 0)), extra
    if data.dtype != np.uint8:
        lo, hi = info.value_range or (0.0, 255.0)
        f = data.astype(np.float32)
        if np.issubdtype(data.dtype, np.floating):
            finite = np.isfinite(f)
            extra = np.all(finite, axis=0)
            f = np.where(finite, f, lo)
        f = (f - lo) * (255.0 / (hi - lo))
        data = np.clip(np.rint(f), 0, 255).astype(np.uint8)
    if data.shape[0] == 1:
        data = np.repeat(data, 3, axis=0)
    return data, extra


def _kernel_scale(src_px_per_dst_px: float) -> str:
    """GDAL's XSCALE/YSCALE (destination pixels per source pixel), at most 1, quantised to
    1/64 octave."""
    scale = 1.0 / src_px_per_dst_px
    if scale >= 1.0:
        return "1"
    return repr(2.0 ** (round(math.log2(scale) * 64.0) / 64.0))


class RasterTileSource(TileSource):
    """One or more GDAL-readable rasters (any CRS) rendered on demand into EPSG:3857 boxes.

    Args:
        paths: a path or a sequence of paths (or GDAL dataset names such as ``/vsicurl/...``).
            Where rasters overlap, the first in this order wins.
        cache_bytes: size of the :meth:`read_window` LRU cache.
        resampling: GDAL resampling for the colours: ``nearest``, ``bilinear``, ``cubic``,
            ``cubic_spline``, ``lanczos`` or ``average``.
        value_range: (lo, hi) mapped to 0..255 for non-uint8 rasters (default: per-raster
            2..98 percentiles).
        year: the imagery's year, if known (goes into the database manifest).
        max_open_per_thread: open dataset handles kept per thread (least recently used closed).
    """

    def __init__(
        self,
        paths: str | os.PathLike | Iterable[str | os.PathLike],
        cache_bytes: int = 256 * 2**20,
        resampling: str = "bilinear",
        value_range: tuple[float, float] | None = None,
        year: int | None = None,
        max_open_per_thread: int = 16,
    ):
        super().__init__(cache_bytes)
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        self.paths = [os.fspath(p) for p in paths]
        if not self.paths:
            raise ValueError("RasterTileSource needs at least one raster path")
        try:
            self.resampling = Resampling[str(resampling).lower()]
        except KeyError:
            raise ValueError(
                f"unknown resampling {resampling!r}; use nearest, bilinear, cubic, cubic_spline, lanczos or average"
            ) from None
        self.year = year
        self.max_open_per_thread = max(1, int(max_open_per_thread))
        self.rasters: list[RasterInfo] = [inspect_raster(p, value_range) for p in self.paths]
        self._bounds_arr = np.array([r.bounds_mercator for r in self.rasters], dtype=np.float64)
        b = self._bounds_arr
        self._bounds = (float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max()))
        self._local = threading.local()
        self.last_overview_levels: dict[str, int | None] = {}
        """Per raster path, the overview level (None: full resolution) used by the latest
        render that read it (diagnostics; shared by all threads)."""

    # -- pickling (Dask): drop locks, caches and open handles -----------------------------
    def __getstate__(self):
        state = self.__dict__.copy()
        for k in ("_lock", "_local", "_cache", "_cached"):
            state.pop(k, None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        TileSource.__init__(self, self._cache_bytes)
        self._local = threading.local()

    # -- interface ---------------------------------------------------------------------
    @property
    def bounds_mercator(self) -> BoundsMercator:
        return self._bounds

    def __repr__(self) -> str:
        first = self.paths[0] if len(self.paths) == 1 else f"{self.paths[0]} (+{len(self.paths) - 1})"
        return f"RasterTileSource({first!r})"

    def _dataset(self, idx: int, level: int | None):
        """This thread's open handle of raster ``idx`` at overview ``level``."""
        handles: OrderedDict | None = getattr(self._local, "handles", None)
        if handles is None:
            handles = self._local.handles = OrderedDict()
        key = (idx, level)
        ds = handles.get(key)
        if ds is not None:
            handles.move_to_end(key)
            return ds
        path = self.rasters[idx].path
        try:
            ds = rasterio.open(path) if level is None else rasterio.open(path, overview_level=level)
        except (RasterioError, OSError) as e:
            lvl = "" if level is None else f" (overview level {level})"
            raise RasterOpenError(
                f"cannot open raster {path}{lvl} during a render: {e}; check that the file is still there and readable"
            ) from e
        handles[key] = ds
        while len(handles) > self.max_open_per_thread:
            _, old = handles.popitem(last=False)
            old.close()
        return ds

    def close(self) -> None:
        """Close the calling thread's open handles (others close when their thread ends)."""
        handles = getattr(self._local, "handles", None)
        while handles:
            _, ds = handles.popitem()
            ds.close()

    def _render(self, bounds: BoundsMercator, width: int, height: int) -> Rendered:
        xmin, ymin, xmax, ymax = bounds
        rgb = np.zeros((height, width, 3), np.uint8)
        mask = np.zeros((height, width), bool)
        resx, resy = (xmax - xmin) / width, (ymax - ymin) / height
        dst_transform = Affine(resx, 0.0, xmin, 0.0, -resy, ymax)
        b = self._bounds_arr
        hits = np.nonzero((b[:, 0] < xmax) & (b[:, 2] > xmin) & (b[:, 1] < ymax) & (b[:, 3] > ymin))[0]
        for idx in hits:
            rb = b[idx]
            c0 = max(0, int(math.floor((rb[0] - xmin) / resx)))
            c1 = min(width, int(math.ceil((rb[2] - xmin) / resx)))
            r0 = max(0, int(math.floor((ymax - rb[3]) / resy)))
            r1 = min(height, int(math.ceil((ymax - rb[1]) / resy)))
            if c1 <= c0 or r1 <= r0:
                continue
            sub_mask = mask[r0:r1, c0:c1]
            if sub_mask.all():
                continue
            got = self._warp_one(int(idx), dst_transform @ Affine.translation(c0, r0), c1 - c0, r1 - r0)
            if got is None:
                continue
            sub_rgb, sub_valid = got
            fill = sub_valid & ~sub_mask
            rgb[r0:r1, c0:c1][fill] = sub_rgb[fill]
            sub_mask |= fill
            if mask.all():
                break
        return Rendered(rgb, mask)

    # -- one raster --------------------------------------------------------------------
    def _warp_one(self, idx: int, dst_transform: Affine, w: int, h: int):
        """Warp raster ``idx`` into the (h, w) grid ``dst_transform``: (rgb HxWx3, valid HxW)."""
        info = self.rasters[idx]
        # The box in the raster's CRS, and how many full-resolution pixels a target pixel spans.
        cx, cy = dst_transform @ (w / 2.0, h / 2.0)
        px, py = dst_transform @ (w / 2.0 + 1.0, h / 2.0)
        qx, qy = dst_transform @ (w / 2.0, h / 2.0 + 1.0)
        left, top = dst_transform @ (0, 0)
        right, bottom = dst_transform @ (w, h)
        try:
            if info.is_mercator:
                sbounds = (left, bottom, right, top)
                xs, ys = [cx, px, qx], [cy, py, qy]
            else:
                sbounds = transform_bounds(MERCATOR, info.crs, left, bottom, right, top, densify_pts=21)
                xs, ys = warp_transform(MERCATOR, info.crs, [cx, px, qx], [cy, py, qy])
        except Exception:  # noqa: BLE001 - the box lies where the raster's CRS is undefined
            return None
        if not (np.all(np.isfinite(sbounds)) and np.all(np.isfinite(list(xs) + list(ys)))):
            return None
        inv = ~info.transform
        (c, r), (c1, r1), (c2, r2) = (inv @ (x, y) for x, y in zip(xs, ys))
        ratio_x, ratio_y = math.hypot(c1 - c, r1 - r), math.hypot(c2 - c, r2 - r)
        ratio = min(ratio_x, ratio_y)
        if not np.isfinite(ratio) or ratio <= 0:
            return None
        level = choose_overview_level(info.overview_factors, ratio) if ratio > 1 else None
        ds = self._dataset(idx, level)
        self.last_overview_levels[info.path] = level
        factor_x, factor_y = info.width / ds.width, info.height / ds.height
        remaining = min(ratio_x / factor_x, ratio_y / factor_y)
        dec = int(math.floor(remaining * (1 + _OVERVIEW_TOLERANCE))) if remaining >= 2 else 1

        # Source window in this dataset's pixels, padded for the resampling kernel.
        sinv = ~ds.transform
        corners = [
            sinv @ (x, y)
            for x, y in (
                (sbounds[0], sbounds[1]),
                (sbounds[0], sbounds[3]),
                (sbounds[2], sbounds[1]),
                (sbounds[2], sbounds[3]),
            )
        ]
        cols = [p[0] for p in corners]
        rows = [p[1] for p in corners]
        pad = _PAD_PX * dec
        col0 = max(0, int(math.floor(min(cols))) - pad)
        row0 = max(0, int(math.floor(min(rows))) - pad)
        col1 = min(ds.width, int(math.ceil(max(cols))) + pad)
        row1 = min(ds.height, int(math.ceil(max(rows))) + pad)
        if col1 <= col0 or row1 <= row0:
            return None
        if dec > 1:
            # Decimate on a fixed grid of dec x dec blocks anchored at the raster's origin
            # (a virtual overview): every box sees the same coarse pixels, so neighbouring
            # renders agree. Partial blocks at the far edges (< dec pixels) are dropped.
            a0, b0 = (col0 // dec) * dec, (row0 // dec) * dec
            a1 = min(-(-col1 // dec) * dec, (ds.width // dec) * dec)
            b1 = min(-(-row1 // dec) * dec, (ds.height // dec) * dec)
            if a1 > a0 and b1 > b0:
                col0, row0, col1, row1 = a0, b0, a1, b1
        win = RioWindow(col0, row0, col1 - col0, row1 - row0)
        out_h = max(1, int(math.ceil((row1 - row0) / dec)))
        out_w = max(1, int(math.ceil((col1 - col0) / dec)))
        shape = (out_h, out_w)
        rs = Resampling.average if dec > 1 and self.resampling != Resampling.nearest else Resampling.nearest
        try:
            data = ds.read(list(info.bands), window=win, out_shape=(len(info.bands),) + shape, resampling=rs)
            if info.alpha_band is not None:
                alpha = ds.read(info.alpha_band, window=win, out_shape=shape, resampling=rs)
                if alpha.dtype != np.uint8:
                    amax = 65535.0 if alpha.dtype == np.uint16 else float(max(1, alpha.max()))
                    alpha = np.clip(np.rint(alpha * (255.0 / amax)), 0, 255).astype(np.uint8)
            elif info.per_dataset_mask:
                alpha = ds.read_masks(info.bands[0], window=win, out_shape=shape, resampling=rs)
            else:
                alpha = ds.read_masks(list(info.bands), window=win, out_shape=(len(info.bands),) + shape, resampling=rs)
                alpha = alpha.max(axis=0)  # valid where any colour band is valid
        except RasterioError as e:
            raise RasterReadError(
                f"reading {info.path} failed ({e}); the file may be corrupt or truncated: "
                "check it with gdalinfo -checksum"
            ) from e
        rgb8, extra = _to_uint8(data, info)
        if extra is not None:
            alpha = np.where(extra, alpha, 0).astype(np.uint8)
        src = np.concatenate([rgb8, alpha[None]], axis=0)
        src_transform = (
            ds.transform @ Affine.translation(col0, row0) @ Affine.scale((col1 - col0) / out_w, (row1 - row0) / out_h)
        )
        # GDAL widens the resampling kernel when downsampling by a scale it estimates per
        # processing chunk, so one place could come out differently in a tile and in a window.
        # Give it the scale ourselves, log-quantised, so renders at one zoom agree.
        eff_x = ratio_x * out_w / (factor_x * (col1 - col0))
        eff_y = ratio_y * out_h / (factor_y * (row1 - row0))
        dst = np.zeros((4, h, w), np.uint8)
        reproject(
            src,
            dst,
            src_transform=src_transform,
            src_crs=info.crs,
            dst_transform=dst_transform,
            dst_crs=MERCATOR,
            resampling=self.resampling,
            src_alpha=4,
            dst_alpha=4,
            num_threads=1,
            XSCALE=_kernel_scale(eff_x),
            YSCALE=_kernel_scale(eff_y),
        )
        valid = dst[3] >= _VALID_ALPHA
        out = np.moveaxis(dst[:3], 0, -1)
        return out, valid
