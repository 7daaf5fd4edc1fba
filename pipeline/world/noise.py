"""Hash-based value noise on an axis-aligned pixel grid, evaluated at world coordinates.

Every function here is a pure function of (seed, world position, pixel size): the lattice is
anchored at the Mercator origin and the lattice values come from an integer hash of the
lattice coordinates and the seed, so a pixel's value never depends on the box it was
rendered in.

The render grid is axis-aligned (x depends on the column only, y on the row only), which
makes smooth value noise separable: lattice values are hashed on the small lattice covering
the box, interpolated along the rows first, then along the columns. An octave therefore
costs O(lattice + H * lattice_width + H * W) instead of hashing four corners per pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_M1 = np.uint32(0x7FEB352D)
_M2 = np.uint32(0x846CA68B)
_KX = np.uint32(0x27D4EB2D)
_KY = np.uint32(0x165667B1)
_KS = np.uint32(0x9E3779B1)


def hash_u32(ix, iy, seed: int) -> np.ndarray:
    """Well-mixed uint32 hash of integer lattice coordinates (broadcast) and a seed."""
    ix = np.asarray(ix).astype(np.int64).astype(np.uint32)
    iy = np.asarray(iy).astype(np.int64).astype(np.uint32)
    s = np.uint32((int(seed) * 0x9E3779B1 + 0x632BE5AB) & 0xFFFFFFFF)
    with np.errstate(over="ignore"):
        h = (ix * _KX) ^ (iy * _KY) ^ s
        h ^= h >> np.uint32(16)
        h *= _M1
        h ^= h >> np.uint32(15)
        h *= _M2
        h ^= h >> np.uint32(16)
        h ^= (iy * _KS) ^ (ix >> np.uint32(3))
        h *= _M1
        h ^= h >> np.uint32(15)
    return h


def hash_unit(ix, iy, seed: int) -> np.ndarray:
    """Hash -> float32 uniform in [0, 1)."""
    return (hash_u32(ix, iy, seed) >> np.uint32(8)).astype(np.float32) * np.float32(2.0**-24)


@dataclass(frozen=True)
class Grid:
    """Pixel-centre coordinates of a render: ``x`` (W,) east, ``y`` (H,) north, metres.

    ``pixel`` is the (geometric mean) pixel size in metres, used to band-limit every field.
    """

    x: np.ndarray
    y: np.ndarray
    pixel: float

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.y), len(self.x))

    @classmethod
    def from_box(cls, bounds, width: int, height: int, pad: int = 0) -> Grid:
        xmin, ymin, xmax, ymax = bounds
        px = (xmax - xmin) / width
        py = (ymax - ymin) / height
        i = np.arange(-pad, width + pad, dtype=np.float64)
        j = np.arange(-pad, height + pad, dtype=np.float64)
        # round to 0.1 mm so that a sub-box on the same pixel grid gets the same coordinates
        x = np.round(xmin + (i + 0.5) * px, 4)
        y = np.round(ymax - (j + 0.5) * py, 4)
        pixel = float(np.sqrt(px * py))
        # snap the pixel size (relative 1e-9) for the same reason
        pixel = float(np.float64(f"{pixel:.9g}"))
        return cls(x, y, pixel)


def _axis(coord: np.ndarray, cell: float):
    """Lattice index (relative to the first needed lattice line) and Catmull-Rom weights."""
    u = coord / cell
    i0 = np.floor(u)
    t = (u - i0).astype(np.float32)
    t2 = t * t
    t3 = t2 * t
    h = np.float32(0.5)
    w = (
        h * (-t3 + 2 * t2 - t),
        h * (3 * t3 - 5 * t2 + 2),
        h * (-3 * t3 + 4 * t2 + t),
        h * (t3 - t2),
    )
    i0 = i0.astype(np.int64) - 1
    lo = int(i0.min())
    return i0 - lo, w, lo, int(i0.max()) - lo + 4


def value_noise(grid: Grid, cell: float, seed: int) -> np.ndarray:
    """Smooth value noise with lattice spacing ``cell`` metres, float32 roughly in [-1, 1].

    Lattice values are interpolated with separable Catmull-Rom cubics, whose derivatives do
    not vanish on the lattice lines (a smoothstep fade would show the grid in hillshading).
    """
    ix, wx, x0, nx = _axis(grid.x, cell)
    iy, wy, y0, ny = _axis(-grid.y, cell)  # lattice rows go south; any fixed convention works
    lat = hash_unit(np.arange(x0, x0 + nx)[None, :], np.arange(y0, y0 + ny)[:, None], seed)
    lat = lat * np.float32(2.0) - np.float32(1.0)
    # columns first on the small lattice (ny, nx) -> (ny, W), then rows: whole-row gathers
    cols = lat[:, ix] * wx[0][None, :]
    for k in (1, 2, 3):
        cols += lat[:, ix + k] * wx[k][None, :]
    out = cols[iy] * wy[0][:, None]
    for k in (1, 2, 3):
        out += cols[iy + k] * wy[k][:, None]
    return out


def band_weight(cell: float, pixel: float) -> float:
    """Anti-aliasing weight of an octave of lattice spacing ``cell`` at pixel size ``pixel``.

    1 for cells of 3 pixels or more, fading linearly to 0 at 1.5 pixels.
    """
    return float(np.clip((cell / pixel - 1.5) / 1.5, 0.0, 1.0))


COARSE_TIERS = ((64.0, 4), (16.0, 2))
"""(min cell size in pixels, grid step in pixels): octaves with cells of at least that many
pixels are summed on a grid of that step (anchored at world multiples of it) and linearly
interpolated, which costs far less than evaluating them at every pixel."""


def _coarse_axis(coord: np.ndarray, step: float) -> np.ndarray:
    lo = np.floor(coord.min() / step)
    hi = np.floor(coord.max() / step) + 1
    return np.arange(lo, hi + 1) * step


def _linear_upsample(values: np.ndarray, cx: np.ndarray, cy: np.ndarray, grid: Grid) -> np.ndarray:
    """Separable linear interpolation of ``values`` sampled at (cy, cx) onto ``grid``."""
    step = cx[1] - cx[0]
    u = (grid.x - cx[0]) / step
    ix = np.minimum(np.floor(u).astype(np.int64), len(cx) - 2)
    tx = (u - ix).astype(np.float32)
    v = (cy[0] - grid.y) / step  # cy descends (north to south)
    iy = np.minimum(np.floor(v).astype(np.int64), len(cy) - 2)
    ty = (v - iy).astype(np.float32)[:, None]
    rows = values[iy] + (values[iy + 1] - values[iy]) * ty
    a = rows[:, ix]
    return a + (rows[:, ix + 1] - a) * tx[None, :]


def fbm(
    grid: Grid,
    seed: int,
    largest: float,
    smallest: float = 0.0,
    persistence: float = 0.5,
    ridged: bool = False,
) -> np.ndarray:
    """Fractal sum of value-noise octaves, cells ``largest``, ``largest/2``, ... down to
    ``max(smallest, ~pixel)``; band-limited at the pixel size (see :func:`band_weight`).

    Scaled by ``1 - persistence`` so the full (unlimited) sum stays within [-1, 1] and
    dropping fine octaves does not change the overall level. ``ridged`` sums ``1 - 2|n|``.
    Coarse octaves are evaluated on coarser grids anchored in world coordinates
    (:data:`COARSE_TIERS`), then interpolated linearly: still a function of position and
    pixel size only, and much faster.
    """
    octaves = []
    amp, cell, k = 1.0, float(largest), 0
    while cell >= smallest * 0.999:
        w = band_weight(cell, grid.pixel)
        if w <= 0.0:
            break
        octaves.append((cell, amp * w, seed * 1013 + k * 7919 + 17))
        amp *= persistence
        cell *= 0.5
        k += 1

    def accumulate(g: Grid, octs) -> np.ndarray:
        acc = np.zeros(g.shape, np.float32)
        for c, a, sd in octs:
            n = value_noise(g, c, sd)
            if ridged:
                n = np.float32(1.0) - np.float32(2.0) * np.abs(n)
            acc += np.float32(a) * n
        return acc

    out = None
    hi = np.inf
    for min_cell_px, step_px in COARSE_TIERS + ((0.0, 1),):
        tier = [o for o in octaves if min_cell_px * grid.pixel <= o[0] < hi]
        hi = min_cell_px * grid.pixel
        if not tier:
            continue
        if step_px == 1:
            part = accumulate(grid, tier)
        else:
            step = step_px * grid.pixel
            cx = _coarse_axis(grid.x, step)
            cy = _coarse_axis(grid.y, step)[::-1].copy()
            part = _linear_upsample(accumulate(Grid(cx, cy, grid.pixel), tier), cx, cy, grid)
        if out is None:
            out = part
        else:
            out += part
    if out is None:
        out = np.zeros(grid.shape, np.float32)
    return out * np.float32(1.0 - persistence if persistence < 1 else 1.0 / max(len(octaves), 1))
