"""The tile-source interface: render any EPSG:3857 box to an RGB array plus validity mask."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from ..geometry.mercator import ORIGIN_SHIFT_M, TILE_SIZE
from ..geometry.windows import Window

BoundsMercator = tuple[float, float, float, float]
"""(xmin, ymin, xmax, ymax) in EPSG:3857 metres."""

WORLD_WIDTH_M = 2.0 * ORIGIN_SHIFT_M
"""Width of the Web Mercator map in EPSG:3857 metres: x and x + WORLD_WIDTH_M are one meridian."""


def check_render_args(bounds, width, height) -> tuple[BoundsMercator, int, int]:
    """Validate a render request: a non-empty EPSG:3857 box and a positive size in pixels."""
    width, height = int(width), int(height)
    if width <= 0 or height <= 0:
        raise ValueError(f"render size must be positive, got {width}x{height}")
    xmin, ymin, xmax, ymax = map(float, bounds)
    if not (xmax > xmin and ymax > ymin):
        raise ValueError(f"empty or inverted box {bounds!r}: need xmin < xmax and ymin < ymax")
    return (xmin, ymin, xmax, ymax), width, height


@dataclass(frozen=True)
class Rendered:
    """Imagery of a box: ``rgb`` (H, W, 3) uint8 and ``mask`` (H, W) bool, True where valid."""

    rgb: np.ndarray
    mask: np.ndarray

    @property
    def valid_fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0

    @property
    def nbytes(self) -> int:
        return self.rgb.nbytes + self.mask.nbytes


class TileSource(ABC):
    """Satellite imagery on the Web Mercator grid, whatever the storage.

    Subclasses implement :meth:`_render` and :attr:`bounds_mercator`. Everything is safe to
    call from several threads. Database windows read through :meth:`read_window` are kept in
    a bounded in-process LRU cache (``cache_bytes``; 0 disables it).
    """

    year: int | None = None

    def __init__(self, cache_bytes: int = 256 * 2**20):
        self._cache: OrderedDict[tuple, Rendered] = OrderedDict()
        self._cache_bytes = int(cache_bytes)
        self._cached = 0
        self._lock = threading.Lock()

    @property
    @abstractmethod
    def bounds_mercator(self) -> BoundsMercator:
        """Extent of the data in EPSG:3857 metres (outside it everything is invalid)."""

    def render(self, bounds: BoundsMercator, width: int, height: int) -> Rendered:
        """Render the EPSG:3857 box ``bounds`` to ``height`` x ``width`` pixels.

        Pixel (0, 0) is the top-left (xmin, ymax) corner; pixel centres sit at half-pixel
        offsets. Areas without data come back with ``mask`` False (and rgb 0), never an error.
        x is periodic, one world (``WORLD_WIDTH_M``) long: a box reaching past lon 180 (or -180),
        as the surroundings of a footprint straddling it do, has those columns read from the
        other end of the source's frame, each column from the copy its centre falls in. The
        frame is the map, x in [-ORIGIN_SHIFT_M, ORIGIN_SHIFT_M), unless the source's data
        reach past an edge of it (a procedural region to lon 184): then the world-long frame
        that ends (or starts) with the data.
        """
        bounds, width, height = check_render_args(bounds, width, height)
        xmin, ymin, xmax, ymax = bounds
        left = self._frame_left()
        if left <= xmin and xmax <= left + WORLD_WIDTH_M:
            return self._render(bounds, width, height)
        step = (xmax - xmin) / width
        centres = xmin + (np.arange(width) + 0.5) * step
        copy = np.floor((centres - left) / WORLD_WIDTH_M).astype(np.int64)  # 0: the frame itself
        starts = np.flatnonzero(np.r_[True, copy[1:] != copy[:-1]])
        ends = np.r_[starts[1:], width]
        rgb = np.zeros((height, width, 3), np.uint8)
        mask = np.zeros((height, width), bool)
        for a, b in zip(starts.tolist(), ends.tolist()):
            shift = float(copy[a]) * WORLD_WIDTH_M
            part = self._render((xmin + a * step - shift, ymin, xmin + b * step - shift, ymax), b - a, height)
            rgb[:, a:b] = part.rgb
            mask[:, a:b] = part.mask
        return Rendered(rgb, mask)

    def _frame_left(self) -> float:
        """Western edge (EPSG:3857 metres) of the world-long x range this source's data are read in."""
        dxmin, _, dxmax, _ = self.bounds_mercator
        if dxmax > ORIGIN_SHIFT_M:
            return float(dxmax) - WORLD_WIDTH_M
        return min(float(dxmin), -ORIGIN_SHIFT_M)

    @abstractmethod
    def _render(self, bounds: BoundsMercator, width: int, height: int) -> Rendered:
        """:meth:`render` for a checked box within the source's frame (give or take a pixel)."""

    def read_window(self, window: Window, tile_size: int = TILE_SIZE) -> Rendered:
        """A database window at its native resolution: (size_tiles*tile_size)^2 pixels."""
        key = (window, tile_size)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        n = window.size_tiles * tile_size
        out = self.render(window.bounds_mercator(), n, n)
        out.rgb.setflags(write=False)
        out.mask.setflags(write=False)
        if out.nbytes <= self._cache_bytes:
            with self._lock:
                if key not in self._cache:
                    self._cache[key] = out
                    self._cached += out.nbytes
                    while self._cached > self._cache_bytes:
                        _, old = self._cache.popitem(last=False)
                        self._cached -= old.nbytes
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
