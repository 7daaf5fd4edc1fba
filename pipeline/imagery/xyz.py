"""XYZ tile folders ``{z}/{x}/{y}.jpg|png|webp`` (GoogleMapsCompatible grid, y down).

:class:`XYZTileSource` reads such a folder; :func:`write_xyz` writes one from any
:class:`~pipeline.imagery.base.TileSource`.

Rendering a box: the zoom is the coarsest available one whose pixels are at least as fine as
the box's (the finest available when none is), the tiles covering the box are mosaicked, and
the mosaic is resampled to the exact box with OpenCV (``warpAffine``, bilinear for the
colours, nearest for the mask). Colours are resampled premultiplied by the validity and
renormalised, so missing tiles or transparent pixels never darken their valid neighbours. A
box that is tile-aligned at an available zoom at that zoom's resolution (a database window
read through ``read_window``) is returned as the exact tile pixels, with no resampling.

Tiles: PNG/WebP alpha >= 128 is valid, a missing (or undecodable) tile is invalid, grey tiles
are replicated to RGB, 16-bit tiles are reduced to 8 bits.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from manifests.files import atomic_output

from ..geometry.mercator import (
    ORIGIN_SHIFT_M,
    TILE_SIZE,
    mercator_to_pixel,
    resolution_m,
    tile_bounds_mercator,
)
from .base import BoundsMercator, Rendered, TileSource

log = logging.getLogger(__name__)

TILE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
_ALIGN_EPS = 1e-6
"""Pixel slack when deciding that a box is aligned with a zoom's pixel grid."""


def _is_int_name(name: str) -> bool:
    return name.isdigit()


def _int_dirs(path: str) -> list[int]:
    try:
        with os.scandir(path) as it:
            return sorted(int(e.name) for e in it if _is_int_name(e.name) and e.is_dir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def looks_like_xyz(path: str | os.PathLike) -> bool:
    """True when ``path`` has a numeric subfolder (zoom) that has a numeric subfolder (x)."""
    path = os.fspath(path)
    for z in _int_dirs(path):
        if _int_dirs(os.path.join(path, str(z))):
            return True
    return False


def _decode_tile(buf: bytes, path: str, tile_size: int) -> tuple[np.ndarray, np.ndarray] | None:
    img = cv2.imdecode(np.frombuffer(buf, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        log.warning("cannot decode tile %s; treating it as missing", path)
        return None
    if img.dtype != np.uint8:
        if img.dtype == np.uint16:
            img = (img >> 8).astype(np.uint8)
        else:
            img = np.clip(img, 0, 255).astype(np.uint8)
    if img.ndim == 2:
        rgb = np.repeat(img[:, :, None], 3, axis=2)
        mask = np.ones(img.shape, bool)
    elif img.shape[2] == 2:  # grey + alpha
        rgb = np.repeat(img[:, :, :1], 3, axis=2)
        mask = img[:, :, 1] >= 128
    elif img.shape[2] == 4:
        rgb = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
        mask = img[:, :, 3] >= 128
    else:
        rgb = cv2.cvtColor(img[:, :, :3], cv2.COLOR_BGR2RGB)
        mask = np.ones(img.shape[:2], bool)
    if rgb.shape[:2] != (tile_size, tile_size):
        raise ValueError(
            f"tile {path} is {rgb.shape[1]}x{rgb.shape[0]} pixels but tile_size={tile_size}; "
            f"pass tile_size={rgb.shape[1]} (all tiles of a folder must have one size)"
        )
    rgb[~mask] = 0
    return np.ascontiguousarray(rgb), mask


class XYZTileSource(TileSource):
    """A folder ``root/{z}/{x}/{y}.{png,jpg,jpeg,webp}`` of Web Mercator tiles.

    Args:
        root: the folder holding the zoom folders.
        tile_size: tile width (= height) in pixels.
        cache_bytes: size of the :meth:`read_window` LRU cache.
        tile_cache_bytes: size of the LRU cache of decoded tiles (neighbouring windows share
            tiles; 0 disables it).
        bounds_mercator: the data extent, when known, to skip listing the finest zoom's files.
        year: the imagery's year, if known.

    Attributes:
        zooms: the available zoom levels, ascending.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        tile_size: int = TILE_SIZE,
        cache_bytes: int = 256 * 2**20,
        tile_cache_bytes: int = 64 * 2**20,
        bounds_mercator: BoundsMercator | None = None,
        year: int | None = None,
    ):
        super().__init__(cache_bytes)
        self.root = os.fspath(root)
        self.tile_size = int(tile_size)
        self.year = year
        if not os.path.isdir(self.root):
            raise FileNotFoundError(f"XYZ tile folder {self.root} does not exist; pass a folder {{z}}/{{x}}/{{y}}.png")
        self.zooms = [z for z in _int_dirs(self.root) if _int_dirs(os.path.join(self.root, str(z)))]
        if not self.zooms:
            raise FileNotFoundError(
                f"no XYZ tiles found at {self.root}: expected numeric zoom folders holding numeric x "
                "folders holding {y}.png|jpg|webp"
            )
        self._exts = list(TILE_EXTENSIONS)
        if bounds_mercator is None:
            bounds_mercator = self._scan_extent()
        self._bounds = tuple(float(v) for v in bounds_mercator)
        self._tile_cache_bytes = int(tile_cache_bytes)
        self._init_runtime()

    def _init_runtime(self) -> None:
        self._tiles: OrderedDict = OrderedDict()
        self._tiles_bytes = 0
        self._tiles_lock = threading.Lock()

    def __getstate__(self):
        state = self.__dict__.copy()
        for k in ("_lock", "_cache", "_cached", "_tiles", "_tiles_bytes", "_tiles_lock"):
            state.pop(k, None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        TileSource.__init__(self, self._cache_bytes)
        self._init_runtime()

    def _scan_extent(self) -> BoundsMercator:
        """Extent of the finest zoom's tiles (lists its x folders' file names, no stat)."""
        z = self.zooms[-1]
        zdir = os.path.join(self.root, str(z))
        xs = _int_dirs(zdir)
        ymin, ymax = None, None
        counts: dict[str, int] = {}
        for x in xs:
            with os.scandir(os.path.join(zdir, str(x))) as it:
                for e in it:
                    stem, ext = os.path.splitext(e.name)
                    ext = ext.lower()
                    if ext in TILE_EXTENSIONS and stem.isdigit():
                        y = int(stem)
                        ymin = y if ymin is None or y < ymin else ymin
                        ymax = y if ymax is None or y > ymax else ymax
                        counts[ext] = counts.get(ext, 0) + 1
        if ymin is None:
            raise FileNotFoundError(
                f"no tiles in {zdir}: expected files {{x}}/{{y}}.png|jpg|webp under the finest zoom folder"
            )
        # Try the most common extension first when reading tiles.
        self._exts = sorted(TILE_EXTENSIONS, key=lambda e: -counts.get(e, 0))
        x0, y0 = min(xs), ymin
        x1, y1 = max(xs), ymax
        xmin, _, _, ymax_m = tile_bounds_mercator(z, x0, y0)
        _, ymin_m, xmax, _ = tile_bounds_mercator(z, x1, y1)
        return float(xmin), float(ymin_m), float(xmax), float(ymax_m)

    @property
    def bounds_mercator(self) -> BoundsMercator:
        return self._bounds

    def __repr__(self) -> str:
        return f"XYZTileSource({self.root!r}, zooms={self.zooms[0]}..{self.zooms[-1]})"

    # -- tiles ---------------------------------------------------------------------
    def read_tile(self, z: int, x: int, y: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Decoded tile (rgb, mask) or None when it is missing (cached)."""
        key = (z, x, y)
        with self._tiles_lock:
            if key in self._tiles:
                self._tiles.move_to_end(key)
                return self._tiles[key]
        n = 1 << z
        tile = None
        if 0 <= x < n and 0 <= y < n:
            base = os.path.join(self.root, str(z), str(x), str(y))
            for ext in self._exts:
                path = base + ext
                try:
                    with open(path, "rb") as f:
                        buf = f.read()
                except (FileNotFoundError, NotADirectoryError):
                    continue
                tile = _decode_tile(buf, path, self.tile_size)
                break
        if self._tile_cache_bytes > 0:
            size = 64 if tile is None else tile[0].nbytes + tile[1].nbytes
            with self._tiles_lock:
                if key not in self._tiles:
                    self._tiles[key] = tile
                    self._tiles_bytes += size
                    while self._tiles_bytes > self._tile_cache_bytes and self._tiles:
                        _, old = self._tiles.popitem(last=False)
                        self._tiles_bytes -= 64 if old is None else old[0].nbytes + old[1].nbytes
        return tile

    def choose_zoom(self, resolution: float) -> int:
        """The coarsest available zoom whose pixels are at least as fine as ``resolution``
        (Mercator metres per pixel); the finest available zoom when none is."""
        for z in self.zooms:
            if resolution_m(z, self.tile_size) <= resolution * (1 + 1e-9):
                return z
        return self.zooms[-1]

    def _mosaic(self, z: int, px0: int, py0: int, px1: int, py1: int):
        """Pixels [px0, px1) x [py0, py1) of zoom ``z`` (global pixel coordinates)."""
        ts = self.tile_size
        tiles = {
            (tx, ty): self.read_tile(z, tx, ty)
            for ty in range(py0 // ts, (py1 - 1) // ts + 1)
            for tx in range(px0 // ts, (px1 - 1) // ts + 1)
        }
        return paste_tiles(tiles, px0, py0, px1, py1, ts)

    def _render(self, bounds: BoundsMercator, width: int, height: int) -> Rendered:
        xmin, ymin, xmax, ymax = bounds
        out_rgb = np.zeros((height, width, 3), np.uint8)
        out_mask = np.zeros((height, width), bool)
        b = self._bounds
        if xmax <= b[0] or xmin >= b[2] or ymax <= b[1] or ymin >= b[3]:
            return Rendered(out_rgb, out_mask)
        z = self.choose_zoom(min((xmax - xmin) / width, (ymax - ymin) / height))
        ts = self.tile_size
        left, top = mercator_to_pixel(xmin, ymax, z, ts)
        right, bottom = mercator_to_pixel(xmax, ymin, z, ts)
        sx, sy = (right - left) / width, (bottom - top) / height  # zoom-z pixels per output pixel

        # Exact case: the box sits on zoom z's pixel grid at its resolution.
        rl, rt = round(left), round(top)
        if (
            abs(sx - 1) * max(width, height) < _ALIGN_EPS * 100
            and abs(sy - 1) * max(width, height) < _ALIGN_EPS * 100
            and abs(left - rl) < _ALIGN_EPS * 100
            and abs(top - rt) < _ALIGN_EPS * 100
        ):
            rgb, mask = self._mosaic(z, rl, rt, rl + width, rt + height)
            return Rendered(rgb, mask)

        # Pixels needed (one extra on each side for bilinear), limited to the data extent.
        world = ts << z
        dl, dt = mercator_to_pixel(b[0], b[3], z, ts)
        dr, db = mercator_to_pixel(b[2], b[1], z, ts)
        px0 = max(int(math.floor(left)) - 1, int(math.floor(dl)), 0)
        py0 = max(int(math.floor(top)) - 1, int(math.floor(dt)), 0)
        px1 = min(int(math.ceil(right)) + 1, int(math.ceil(dr)), world)
        py1 = min(int(math.ceil(bottom)) + 1, int(math.ceil(db)), world)
        if px1 <= px0 or py1 <= py0:
            return Rendered(out_rgb, out_mask)
        rgb, mask = self._mosaic(z, px0, py0, px1, py1)
        rgb_out, mask_out = resample_to_box(rgb, mask, left - px0, top - py0, sx, sy, width, height)
        return Rendered(rgb_out, mask_out)


def paste_tiles(tiles: dict, px0: int, py0: int, px1: int, py1: int, tile_size: int = TILE_SIZE):
    """Mosaic of global pixels [px0, px1) x [py0, py1) from ``tiles`` {(x, y): (rgb, mask) or None}.

    Returns (rgb (H, W, 3) uint8, mask (H, W) bool); missing tiles stay black and invalid.
    """
    ts = tile_size
    rgb = np.zeros((py1 - py0, px1 - px0, 3), np.uint8)
    mask = np.zeros((py1 - py0, px1 - px0), bool)
    for (tx, ty), tile in tiles.items():
        if tile is None:
            continue
        # overlap of the tile with the requested pixel range
        gx0, gy0 = max(px0, tx * ts), max(py0, ty * ts)
        gx1, gy1 = min(px1, (tx + 1) * ts), min(py1, (ty + 1) * ts)
        if gx1 <= gx0 or gy1 <= gy0:
            continue
        src = (slice(gy0 - ty * ts, gy1 - ty * ts), slice(gx0 - tx * ts, gx1 - tx * ts))
        dst = (slice(gy0 - py0, gy1 - py0), slice(gx0 - px0, gx1 - px0))
        rgb[dst] = tile[0][src]
        mask[dst] = tile[1][src]
    return rgb, mask


def resample_to_box(
    rgb: np.ndarray, mask: np.ndarray, left: float, top: float, sx: float, sy: float, width: int, height: int
) -> tuple[np.ndarray, np.ndarray]:
    """Resample a mosaic to an output grid.

    Output pixel (i, j) covers mosaic pixels [left + j*sx, left + (j+1)*sx) x
    [top + i*sy, top + (i+1)*sy) (continuous coordinates, mosaic pixel p spans [p, p+1)).
    Colours: bilinear, premultiplied by the mask and renormalised (area-averaged first when
    shrinking by 2x or more); mask: nearest. Outside the mosaic: invalid.
    """
    mask_u8 = mask.astype(np.uint8)
    prem = np.empty(rgb.shape[:2] + (4,), np.float32)
    prem[..., :3] = rgb
    prem[..., :3] *= mask[..., None]
    prem[..., 3] = mask
    mask_src = mask_u8
    f = int(math.floor(min(sx, sy)))
    if f >= 2:  # shrink by an integer factor with area averaging first (no aliasing)
        h2, w2 = prem.shape[0] // f, prem.shape[1] // f
        if h2 >= 1 and w2 >= 1:
            prem = cv2.resize(prem[: h2 * f, : w2 * f], (w2, h2), interpolation=cv2.INTER_AREA)
            mask_src = (prem[..., 3] >= 0.5).astype(np.uint8)
            left, top, sx, sy = left / f, top / f, sx / f, sy / f
    # dst pixel centre j + 0.5 -> continuous src x = left + (j + 0.5) * sx -> index x - 0.5
    m = np.array([[sx, 0.0, left + 0.5 * sx - 0.5], [0.0, sy, top + 0.5 * sy - 0.5]], np.float64)
    flags = cv2.WARP_INVERSE_MAP
    warped = cv2.warpAffine(
        prem, m, (width, height), flags=cv2.INTER_LINEAR | flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )
    valid = cv2.warpAffine(
        mask_src, m, (width, height), flags=cv2.INTER_NEAREST | flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    ).astype(bool)
    if warped.ndim == 2:  # 1-pixel outputs come back squeezed by some OpenCV builds
        warped = warped.reshape(height, width, 4)
    weight = warped[..., 3]
    valid &= weight > 1e-3
    out = np.zeros((height, width, 3), np.uint8)
    w = np.where(valid, weight, 1.0)[..., None]
    out[valid] = np.clip(np.rint(warped[..., :3] / w), 0, 255).astype(np.uint8)[valid]
    return out, valid


# -- writing ------------------------------------------------------------------------------


def _tile_range(bounds: BoundsMercator, z: int) -> tuple[range | list[int], range]:
    """Tiles of zoom ``z`` whose interior meets the box: columns modulo the world (a source whose data run
    past lon 180 in its own frame has them in the map's first columns), rows clipped to the map."""
    lim = ORIGIN_SHIFT_M
    xmin, ymin, xmax, ymax = bounds
    ymin, ymax = max(ymin, -lim), min(ymax, lim)
    if not (xmax > xmin and ymax > ymin):
        return range(0), range(0)
    left, top = mercator_to_pixel(xmin, ymax, z, 1)
    right, bottom = mercator_to_pixel(xmax, ymin, z, 1)
    n = 1 << z
    eps = 1e-9
    tx0, ty0 = int(math.floor(left + eps)), max(0, int(math.floor(top + eps)))
    tx1, ty1 = int(math.ceil(right - eps)), min(n, int(math.ceil(bottom - eps)))
    return (range(n) if tx1 - tx0 >= n else [t % n for t in range(tx0, tx1)]), range(ty0, ty1)


def _encode(rgb: np.ndarray, mask: np.ndarray, fmt: str) -> bytes:
    if fmt == "png":
        if mask.all():
            img = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        else:
            img = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA)
            img[..., 3] = np.where(mask, 255, 0).astype(np.uint8)
        ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 6])
    elif fmt == "webp":  # lossless, alpha = mask
        img = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA)
        img[..., 3] = np.where(mask, 255, 0).astype(np.uint8)
        ok, buf = cv2.imencode(".webp", img, [cv2.IMWRITE_WEBP_QUALITY, 101])
    else:  # jpg: no alpha, invalid pixels stay black
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {fmt} tile")
    return buf.tobytes()


def write_xyz(
    source: TileSource,
    root: str | os.PathLike,
    zooms: int | Iterable[int],
    bounds_mercator: BoundsMercator | None = None,
    fmt: str = "png",
    tile_size: int = TILE_SIZE,
    progress: bool = False,
    workers: int = 1,
) -> int:
    """Write ``source`` as an XYZ folder ``root/{z}/{x}/{y}.{fmt}``.

    ``workers`` > 1 renders tiles in that many threads (tile sources are thread-safe).

    Every tile of ``zooms`` that meets ``bounds_mercator`` (default: the source's extent) is
    rendered at ``tile_size`` pixels; tiles without any valid pixel are skipped. PNG (and
    WebP, lossless) carry the mask as alpha (fully valid tiles are written as RGB); JPEG
    (``fmt="jpg"``) loses it (invalid pixels black). Each file is written to a temporary
    name and renamed into place, so readers never see a partial tile.

    Returns:
        The number of tiles written.
    """
    fmt = fmt.lower().lstrip(".")
    fmt = {"jpeg": "jpg"}.get(fmt, fmt)
    if fmt not in ("png", "jpg", "webp"):
        raise ValueError(f"unknown tile format {fmt!r}; use png, jpg or webp")
    root = os.fspath(root)
    if isinstance(zooms, int):
        zooms = [zooms]
    bounds = tuple(source.bounds_mercator if bounds_mercator is None else bounds_mercator)
    ranges = [(z, *_tile_range(bounds, z)) for z in sorted(set(int(z) for z in zooms))]
    total = sum(len(xs) * len(ys) for _, xs, ys in ranges)
    jobs = ((z, x, y) for z, xs, ys in ranges for x in xs for y in ys)

    def one(job) -> int:
        z, x, y = job
        r = source.render(tile_bounds_mercator(z, x, y), tile_size, tile_size)
        if not r.mask.any():
            return 0
        with atomic_output(os.path.join(root, str(z), str(x), f"{y}.{fmt}")) as tmp:
            tmp.write_bytes(_encode(r.rgb, r.mask, fmt))
        return 1

    bar = None
    if progress:
        try:
            from tqdm import tqdm

            bar = tqdm(total=total, unit="tile", desc=f"write_xyz {os.path.basename(root) or root}")
        except ImportError:  # pragma: no cover - tqdm is a dependency
            bar = None
    written = 0
    try:
        if workers > 1:
            # submit in bounded batches: the job list of a big pyramid never sits in memory
            with ThreadPoolExecutor(max_workers=int(workers)) as pool:
                while True:
                    batch = list(itertools.islice(jobs, 64 * int(workers)))
                    if not batch:
                        break
                    for n in pool.map(one, batch):
                        written += n
                        if bar is not None:
                            bar.update(1)
        else:
            for job in jobs:
                written += one(job)
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return written
