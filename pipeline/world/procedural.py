"""A deterministic procedural Earth served as a :class:`~pipeline.imagery.base.TileSource`.

:class:`ProceduralWorld` renders any EPSG:3857 box at any resolution on demand, looking like
a cloudless Sentinel-2 mosaic: oceans, lakes and coastlines, rivers, hill-shaded relief with
mountains, deserts, grassland, forests, patchworks of fields, towns and roads. Every field is
a function of the ground position (Mercator metres), the seed and the pixel size only, built
from band-limited multi-octave value noise (:mod:`pipeline.world.noise`), so

- the same (seed, year, box, size) gives byte-identical pixels, and a sub-box on the same
  pixel grid gives the same pixels as the big box;
- every zoom has native detail: octaves run from ~1000 km down to about the pixel size
  (finer ones are dropped, those near the pixel size faded, to avoid aliasing).

``year`` (0..3) keeps the geography and changes the season and radiometry (vegetation
greenness, snow line, colour balance, contrast, some fields' crops).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..geometry.mercator import lonlat_to_mercator
from ..imagery.base import BoundsMercator, Rendered, TileSource
from ..runtime import host_cores
from .noise import Grid, fbm, hash_u32, hash_unit, value_noise

F = np.float32

# -- palette (display RGB in [0, 1]) -------------------------------------------------------
DEEP_WATER = (0.035, 0.075, 0.14)
SHALLOW_WATER = (0.09, 0.20, 0.26)
INLAND_WATER = (0.05, 0.11, 0.14)
DESERT = (0.80, 0.67, 0.49)
DESERT_RED = (0.78, 0.52, 0.33)
STEPPE = (0.60, 0.57, 0.41)
GRASS = (0.38, 0.46, 0.26)
GRASS_DRY = (0.56, 0.52, 0.36)
FOREST = (0.13, 0.22, 0.11)
FOREST_DRY = (0.22, 0.24, 0.14)
ROCK = (0.50, 0.47, 0.43)
SNOW = (0.93, 0.94, 0.97)
TOWN = (0.56, 0.54, 0.52)
ROAD = (0.78, 0.76, 0.71)
FIELDS = np.array(
    [
        (0.44, 0.54, 0.27),
        (0.63, 0.60, 0.40),
        (0.55, 0.44, 0.31),
        (0.30, 0.44, 0.19),
        (0.74, 0.69, 0.50),
        (0.37, 0.41, 0.24),
        (0.50, 0.50, 0.33),
        (0.24, 0.36, 0.16),
    ],
    np.float32,
)
FIELD_GREEN = np.array([1, 0.2, 0, 1, 0, 0.7, 0.4, 1], np.float32)
"""How much each field colour is green vegetation (fades with the season)."""

# -- the four "years": same geography, different season / radiometry ------------------------
YEARS = (
    # green: vegetation greenness; snow: snow line (m); gain: RGB gains; gamma; contrast
    dict(green=1.0, snow=2900.0, gain=(1.00, 1.00, 1.00), gamma=1.00, contrast=1.00, crop=0.0),
    dict(green=0.55, snow=2700.0, gain=(1.07, 1.01, 0.90), gamma=0.95, contrast=1.06, crop=0.35),
    dict(green=0.30, snow=1800.0, gain=(0.93, 0.96, 1.06), gamma=1.10, contrast=0.90, crop=0.5),
    dict(green=1.20, snow=2200.0, gain=(0.97, 1.05, 1.00), gamma=0.90, contrast=1.12, crop=0.25),
)

FIELD_ANGLES = (math.radians(12.0), math.radians(-31.0), math.radians(47.0))
FIELD_CELLS = (420.0, 650.0, 300.0)
"""Field grids: rotation and cell size (m) of each of the three agricultural districts."""
RENDER_THREADS = int(os.environ.get("PROCEDURAL_WORLD_THREADS", min(2, host_cores())))
"""Threads rendering horizontal strips of one large render (env PROCEDURAL_WORLD_THREADS)."""
SUN_AZIMUTH = math.radians(315.0)
SUN_ELEVATION = math.radians(40.0)


def _c(rgb) -> np.ndarray:
    return np.asarray(rgb, np.float32)


def _blend(col: np.ndarray, b, t: np.ndarray, where: np.ndarray | None = None) -> None:
    """In place ``col = col + (b - col) * t`` on the pixels where t > 0 (col (H, W, 3)).

    ``b`` is a colour (3,), an (H, W, 3) array, or, with ``where`` (flat pixel indices),
    an (n, 3) array of colours of those pixels.
    """
    flat = col.reshape(-1, 3)
    if where is None:
        where = np.flatnonzero(t > 0)
        if where.size == 0:
            return
        if b.ndim == 3:
            b = b.reshape(-1, 3)[where]
    tw = t.reshape(-1)[where][:, None]
    c = flat[where]
    flat[where] = c + (b - c) * tw


def _smooth(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - F(e0)) / F(e1 - e0), F(0), F(1))
    return t * t * (F(3) - F(2) * t)


def _grad(v: np.ndarray, pixel: float):
    """Central differences of a padded field (H+2, W+2) -> d/dx, d/dy (north) on (H, W)."""
    gx = (v[1:-1, 2:] - v[1:-1, :-2]) * F(0.5 / pixel)
    gy = (v[:-2, 1:-1] - v[2:, 1:-1]) * F(0.5 / pixel)
    return gx, gy


def _line(v: np.ndarray, width: float, pixel: float) -> np.ndarray:
    """Anti-aliased coverage of the zero isoline of a padded field, ``width`` metres wide."""
    gx, gy = _grad(v, pixel)
    d = np.abs(v[1:-1, 1:-1]) / (np.sqrt(gx * gx + gy * gy) + F(1e-12))
    cov = np.clip((F(0.5 * (width + pixel)) - d) * F(1.0 / pixel), F(0), F(1))
    return cov * F(min(1.0, width / pixel))


def _edge_coverage(frac: np.ndarray, cell: float, width: float, pixel: float) -> np.ndarray:
    """Coverage of grid lines ``width`` m wide at integer positions, given fractional coords."""
    d = np.minimum(frac, F(1) - frac) * F(cell)
    cov = np.clip((F(0.5 * (width + pixel)) - d) * F(1.0 / pixel), F(0), F(1))
    return cov * F(min(1.0, width / pixel))


def _rotated(xs: np.ndarray, ys: np.ndarray, angle: float, cell: float):
    """Cell indices and fractions, at points (xs, ys), of a grid rotated by ``angle``."""
    c, sn = math.cos(angle), math.sin(angle)
    a = (xs * c + ys * sn) / cell
    b = (-xs * sn + ys * c) / cell
    ia, ib = np.floor(a), np.floor(b)
    return ia.astype(np.int64), ib.astype(np.int64), (a - ia).astype(F), (b - ib).astype(F)


class ProceduralWorld(TileSource):
    """A seeded procedural Earth over ``region_lonlat`` = (west, south, east, north) degrees.

    ``render`` works for any EPSG:3857 box at any size (across lon 180 it wraps, as every
    tile source does); ``mask`` is True at pixel centres inside the region. The object keeps
    only plain parameters and pickles cheaply.
    """

    def __init__(
        self,
        region_lonlat: tuple[float, float, float, float] = (-10.0, 35.0, 30.0, 60.0),
        seed: int = 0,
        year: int = 0,
        cache_bytes: int = 256 * 2**20,
    ):
        super().__init__(cache_bytes)
        west, south, east, north = map(float, region_lonlat)
        if not (east > west and north > south):
            raise ValueError(f"empty or inverted region {region_lonlat!r}: need west < east, south < north")
        if int(year) not in range(len(YEARS)):
            raise ValueError(f"year must be 0..{len(YEARS) - 1}, got {year!r}")
        self.region_lonlat = (west, south, east, north)
        self.seed = int(seed)
        self.year = int(year)
        xmin, ymin = lonlat_to_mercator(west, south)
        xmax, ymax = lonlat_to_mercator(east, north)
        self._bounds = (float(xmin), float(ymin), float(xmax), float(ymax))

    # -- pickling: plain parameters only ---------------------------------------------------
    def __getstate__(self):
        return {
            "region_lonlat": self.region_lonlat,
            "seed": self.seed,
            "year": self.year,
            "cache_bytes": self._cache_bytes,
        }

    def __setstate__(self, state):
        self.__init__(state["region_lonlat"], state["seed"], state["year"], state["cache_bytes"])

    def __repr__(self) -> str:
        return f"ProceduralWorld(region_lonlat={self.region_lonlat!r}, seed={self.seed}, year={self.year})"

    @property
    def bounds_mercator(self) -> BoundsMercator:
        return self._bounds

    def with_year(self, year: int) -> ProceduralWorld:
        """The same world (region, seed) in another year."""
        return ProceduralWorld(self.region_lonlat, self.seed, year, self._cache_bytes)

    # -- rendering ---------------------------------------------------------------------------
    def _render(self, bounds: BoundsMercator, width: int, height: int) -> Rendered:
        full = Grid.from_box(bounds, width, height, pad=1)
        rxmin, rymin, rxmax, rymax = self._bounds
        xin = (full.x[1:-1] >= rxmin) & (full.x[1:-1] < rxmax)
        yin = (full.y[1:-1] > rymin) & (full.y[1:-1] <= rymax)
        rgb = np.zeros((height, width, 3), np.uint8)
        mask = yin[:, None] & xin[None, :]
        if not mask.any():
            return Rendered(rgb, mask)
        cols = np.flatnonzero(xin)
        rows = np.flatnonzero(yin)
        c0, c1 = int(cols[0]), int(cols[-1]) + 1
        r0, r1 = int(rows[0]), int(rows[-1]) + 1
        xs = full.x[c0 : c1 + 2]
        n_strips = max(1, min(RENDER_THREADS, (r1 - r0) * (c1 - c0) // 2**17))
        if n_strips == 1:
            rgb[r0:r1, c0:c1] = self._shade(Grid(xs, full.y[r0 : r1 + 2], full.pixel))
        else:
            # horizontal strips rendered in threads (pixels depend on position only)
            edges = np.linspace(r0, r1, n_strips + 1).round().astype(int)

            def strip(k: int) -> None:
                a, b = int(edges[k]), int(edges[k + 1])
                rgb[a:b, c0:c1] = self._shade(Grid(xs, full.y[a : b + 2], full.pixel))

            with ThreadPoolExecutor(n_strips) as pool:
                list(pool.map(strip, range(n_strips)))
        return Rendered(rgb, mask)

    def _shade(self, g: Grid) -> np.ndarray:
        """Colours (H, W, 3) uint8 of a padded grid (one extra pixel on each side)."""
        s = self.seed * 101
        yr = YEARS[self.year]
        p = g.pixel
        inner = (slice(1, -1), slice(1, -1))

        # ---- geography ---------------------------------------------------------------
        cont = fbm(g, s + 1, 1.6e6, persistence=0.5) + F(0.2)  # > 0: land
        mountains = _smooth(0.05, 0.25, fbm(g, s + 2, 5e5, smallest=2e4))
        ridges = fbm(g, s + 3, 8e4, persistence=0.5, ridged=True)
        hills = fbm(g, s + 11, 2.5e4, persistence=0.55)
        land_h = np.maximum(cont, F(0))
        elev = (
            F(900) * land_h
            + F(3400) * mountains * (F(0.55) + F(0.45) * ridges) * _smooth(0.0, 0.06, cont)
            + F(450) * hills
        )
        # coastline: anti-aliased land fraction from the continent field and its gradient
        cgx, cgy = _grad(cont, p)
        cgrad = np.sqrt(cgx * cgx + cgy * cgy) + F(1e-12)
        c_in = cont[inner]
        land = np.clip(F(0.5) + c_in / (cgrad * F(p)), F(0), F(1))
        # lakes: lowland hollows
        lakes_f = fbm(g, s + 9, 3e4, smallest=150.0, persistence=0.5) - F(0.43) - F(0.6) * mountains
        lgx, lgy = _grad(lakes_f, p)
        lake = np.clip(F(0.5) + lakes_f[inner] / ((np.sqrt(lgx * lgx + lgy * lgy) + F(1e-12)) * F(p)), F(0), F(1))
        lake *= _smooth(0.02, 0.06, c_in)
        # rivers: zero isolines of a smooth field, wider in the lowlands
        riv = fbm(g, s + 6, 2.4e5, smallest=400.0, persistence=0.5)
        # small rivers (40 m) and big ones (220 m, from a larger-scale field)
        river = _line(riv, 40.0, p)
        river = np.maximum(river, _line(fbm(g, s + 16, 8e5, smallest=400.0, persistence=0.5), 220.0, p))
        river = river * _smooth(0.01, 0.05, c_in) * (F(1) - mountains[inner] * F(0.7))

        moist = fbm(g, s + 4, 7e5, smallest=1.5e3, persistence=0.55)[inner]
        patch = fbm(g, s + 12, 1.2e4, persistence=0.62)[inner]  # forest/grass patchiness
        tex = fbm(g, s + 10, 4e3, persistence=0.65)[inner]  # fine radiometric texture
        towns_f = fbm(g, s + 5, 2.5e4, smallest=400.0, persistence=0.55)[inner]
        agri_f = fbm(g, s + 13, 1.5e5, smallest=3e3, persistence=0.5)[inner]

        el = elev[inner]
        mtn = mountains[inner]

        # ---- land cover -----------------------------------------------------------------
        hh, ww = el.shape
        xs_all, ys_all = g.x[1:-1], g.y[1:-1]

        def coords(idx):
            return xs_all[idx % ww], ys_all[idx // ww]

        green = F(min(yr["green"], 1.0))
        col = np.empty((hh, ww, 3), F)
        t = green * _smooth(-0.1, 0.15, moist + F(0.1) * patch)
        col[:] = _c(GRASS_DRY)
        col += (_c(GRASS) - _c(GRASS_DRY)) * t[..., None]
        dry = _smooth(-0.12, -0.28, moist)
        _blend(col, _c(STEPPE), _smooth(-0.02, -0.14, moist) * (F(1) - dry))
        idx = np.flatnonzero(dry > 0)
        if idx.size:
            tt = _smooth(-0.15, 0.25, patch.reshape(-1)[idx] + F(0.5) * tex.reshape(-1)[idx])[:, None]
            dcol = _c(DESERT) + (_c(DESERT_RED) - _c(DESERT)) * tt
            _blend(col, dcol, dry, idx)
        forest_c = _c(FOREST_DRY) + (_c(FOREST) - _c(FOREST_DRY)) * green
        forest = _smooth(0.0, 0.015, moist + F(0.6) * patch - F(0.1)) * (F(1) - dry)
        agri = _smooth(-0.42, -0.40, agri_f + F(0.3) * patch) * (F(1) - dry) * (F(1) - _smooth(0.2, 0.5, mtn))
        _blend(col, forest_c, forest * (F(1) - agri))
        # natural grassland still shows faint pasture parcels and hedges
        agri = np.maximum(agri, F(0.35) * (F(1) - forest) * (F(1) - dry) * (F(1) - _smooth(0.2, 0.5, mtn)))
        idx = np.flatnonzero(agri > 0)
        if idx.size:
            # field districts: which of three rotated grids
            d0 = value_noise(g, 3.5e4, s + 21)[inner].reshape(-1)[idx]
            d1 = value_noise(g, 3.5e4, s + 22)[inner].reshape(-1)[idx]
            district = np.where(d0 > d1, 0, 1)
            district = np.where(np.maximum(d0, d1) < F(-0.2), 2, district)
            fcol, fforest, fedge = self._fields(*coords(idx), district, p)
            # regional crop mix: greener or barer patches of fields, visible at every zoom
            mix = fbm(g, s + 17, 6e3, persistence=0.6)[inner].reshape(-1)[idx][:, None]
            fcol = fcol * (F(1) + F(0.6) * mix) + F(0.5) * mix * (_c((0.30, 0.45, 0.18)) * green - fcol)
            ag = agri.reshape(-1)[idx][:, None]
            flat = col.reshape(-1, 3)
            c = flat[idx]
            c += (fcol - c) * ag
            c += (forest_c - c) * (fforest[:, None] * ag)
            c *= F(1) - F(0.25) * fedge[:, None] * ag
            flat[idx] = c
        # mountains: bare rock at altitude, snow above the year's snow line
        _blend(col, _c(ROCK), _smooth(1900, 2600, el + F(300) * tex))
        snow = _smooth(yr["snow"] - 150, yr["snow"] + 150, el + F(400) * tex + F(300) * patch)
        _blend(col, _c(SNOW), snow)
        # towns and roads
        town = _smooth(0.40, 0.42, towns_f + F(0.1) * tex) * (F(1) - dry * F(0.5)) * (F(1) - mtn)
        idx = np.flatnonzero(town > 0)
        if idx.size:
            _blend(col, self._town(*coords(idx), p), town, idx)
        road_f = fbm(g, s + 7, 7e4, smallest=1e3, persistence=0.5)
        road2_f = fbm(g, s + 8, 1.1e5, smallest=1e3, persistence=0.5)
        road3_f = fbm(g, s + 15, 8e3, smallest=500.0, persistence=0.5)
        roads = np.maximum(_line(road_f, 28.0, p), _line(road2_f, 40.0, p))
        roads = np.maximum(roads, _line(road3_f, 14.0, p) * _smooth(0.1, 0.2, towns_f))
        # country roads: along relief contours and along river valleys (fields we already have)
        roads = np.maximum(roads, _line(hills, 12.0, p) * F(0.8))
        roads = np.maximum(roads, _line(riv - F(0.004), 12.0, p) * F(0.8))
        roads *= (F(1) - snow) * (F(1) - F(0.8) * mtn)
        _blend(col, _c(ROAD), roads)
        # fine texture; forest canopy is mottled
        canopy = fbm(g, s + 14, 600.0, persistence=0.7)[inner]
        col *= (F(1) + F(0.16) * tex + F(0.5) * canopy * forest)[..., None]

        # ---- hill shading -----------------------------------------------------------
        gx, gy = _grad(elev, p)
        ex = F(6.0)  # vertical exaggeration
        nx, ny = -gx * ex, -gy * ex
        lx = math.cos(SUN_ELEVATION) * math.sin(SUN_AZIMUTH)
        ly = math.cos(SUN_ELEVATION) * math.cos(SUN_AZIMUTH)
        lz = math.sin(SUN_ELEVATION)
        shade = (nx * F(lx) + ny * F(ly) + F(lz)) / (np.sqrt(nx * nx + ny * ny + F(1)) * F(lz))
        shade = np.clip(F(0.35) + F(0.65) * shade, F(0.15), F(1.6))
        col *= shade[..., None]

        # ---- water --------------------------------------------------------------------
        _blend(col, _c(INLAND_WATER), np.maximum(lake, river))
        wet = F(1) - land
        idx = np.flatnonzero(wet > 0)
        if idx.size:
            depth = _smooth(0.0, -0.08, c_in.reshape(-1)[idx])[:, None]
            sea = _c(SHALLOW_WATER) + (_c(DEEP_WATER) - _c(SHALLOW_WATER)) * depth
            sea *= (F(1) + F(0.08) * tex.reshape(-1)[idx])[:, None]
            _blend(col, sea, wet, idx)

        # ---- the year's radiometry ------------------------------------------------------
        col = np.clip(col, F(0), F(1))
        col = col ** F(yr["gamma"])
        col = (col - F(0.3)) * F(yr["contrast"]) + F(0.3)
        col = col * _c(yr["gain"])
        return (np.clip(col, F(0), F(1)) * F(255) + F(0.5)).astype(np.uint8)

    def _fields(self, xs: np.ndarray, ys: np.ndarray, district: np.ndarray, p: float):
        """Fields at points (xs, ys): colours (n, 3), forest-plot fraction, edge coverage."""
        s = self.seed * 101 + 1000
        yr = YEARS[self.year]
        n = xs.shape[0]
        col = np.empty((n, 3), F)
        forest = np.empty(n, F)
        edge = np.empty(n, F)
        mean = FIELDS.mean(axis=0)
        green = F(min(yr["green"], 1.0))
        for k, (angle, cell) in enumerate(zip(FIELD_ANGLES, FIELD_CELLS)):
            sel = np.flatnonzero(district == k)
            if not sel.size:
                continue
            ia, ib, fa, fb = _rotated(xs[sel], ys[sel], angle, cell)
            hu = hash_u32(ia, ib, s + k)
            # split each cell in two along a or b at a hashed fraction
            cut = F(0.3) + F(0.4) * ((hu >> np.uint32(9)) & np.uint32(255)).astype(F) / F(255)
            along_a = (hu & np.uint32(1)).astype(bool)
            half = np.where(along_a, fa > cut, fb > cut)
            ch = hash_u32(ia * 2 + half, ib, s + 50 + k)
            # a share of fields changes crop from year to year
            yh = hash_unit(ia * 2 + half, ib, s + 90 + k + 7 * self.year)
            nf = np.uint32(len(FIELDS))
            idx = np.where(yh < F(yr["crop"]), (ch + np.uint32(3)) % nf, ch % nf)
            c = FIELDS[idx]
            # dry season: green crops turn to stubble or bare soil
            c += ((F(1) - green) * FIELD_GREEN[idx])[:, None] * (_c((0.58, 0.52, 0.38)) - c)
            c *= (F(0.9) + F(0.2) * ((ch >> np.uint32(20)) & np.uint32(255)).astype(F) / F(255))[:, None]
            fw = F(np.clip((cell / p - 1.0) / 2.0, 0.0, 1.0))  # band limit: fade to the mean colour
            col[sel] = mean + (c - mean) * fw
            plot = (((ch >> np.uint32(12)) % np.uint32(100)) < 14).astype(F)
            forest[sel] = plot * fw + F(0.14) * (F(1) - fw)
            edge[sel] = np.maximum(_edge_coverage(fa, cell, 6.0, p), _edge_coverage(fb, cell, 6.0, p))
        return col, forest, edge

    def _town(self, xs: np.ndarray, ys: np.ndarray, p: float) -> np.ndarray:
        """Town texture at points (xs, ys), (n, 3): blocks of bright/grey roofs, parks and red
        roofs between streets, grouped in quarters of different brightness along main streets."""
        s = self.seed * 101 + 2000
        cell, quarter = 120.0, 720.0
        ia, ib, fa, fb = _rotated(xs, ys, FIELD_ANGLES[0], cell)
        qa, qb, qfa, qfb = _rotated(xs, ys, FIELD_ANGLES[0], quarter)
        v = hash_unit(ia, ib, s)
        v2 = hash_unit(ia, ib, s + 1)
        q = hash_unit(qa, qb, s + 2)
        fw = F(np.clip((cell / p - 1.0) / 2.0, 0.0, 1.0))
        qw = F(np.clip((quarter / p - 1.0) / 2.0, 0.0, 1.0))
        lum = F(0.62) + (F(0.36) * v - F(0.18)) * fw + (F(0.3) * q - F(0.15)) * qw
        base = _c(TOWN)[None, :] * (lum / F(0.56))[:, None]
        # some blocks are parks (green) or red roofs; some quarters are green suburbs
        park = np.maximum((v2 < F(0.12)).astype(F) * fw, (q < F(0.15)).astype(F) * qw * F(0.5))[:, None]
        base += (_c((0.28, 0.36, 0.20)) - base) * park
        roof = ((v2 > F(0.8)).astype(F) * fw * F(0.6))[:, None]
        base += (_c((0.62, 0.42, 0.34)) - base) * roof
        streets = np.maximum(_edge_coverage(fa, cell, 12.0, p), _edge_coverage(fb, cell, 12.0, p))
        main = np.maximum(_edge_coverage(qfa, quarter, 30.0, p), _edge_coverage(qfb, quarter, 30.0, p))
        base += (_c((0.33, 0.33, 0.34)) - base) * streets[:, None]
        return base + (_c((0.72, 0.70, 0.66)) - base) * main[:, None]
