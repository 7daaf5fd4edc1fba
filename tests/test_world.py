"""The procedural world: determinism, position-only pixels, masks, years, detail, XYZ, pickling."""

from __future__ import annotations

import pickle

import cv2
import numpy as np
import pytest

from pipeline.geometry.mercator import lonlat_to_mercator, pixel_to_mercator, resolution_m
from pipeline.geometry.windows import Window
from pipeline.imagery.xyz import XYZTileSource, write_xyz
from pipeline.world import YEARS, ProceduralWorld
from pipeline.world.noise import Grid, fbm, hash_unit, value_noise

REGION = (2.0, 44.0, 8.0, 48.0)  # 6 x 4 degrees
CENTRE = (4.0, 45.0)  # lowland: fields, forest, pasture


@pytest.fixture(scope="module")
def world() -> ProceduralWorld:
    return ProceduralWorld(REGION, seed=0, year=0)


def _box(lon, lat, zoom, width, height=None):
    """A box of width x height pixels at ``zoom`` resolution, on that zoom's pixel grid."""
    height = width if height is None else height
    x, y = lonlat_to_mercator(lon, lat)
    res = resolution_m(zoom)
    px0 = np.floor((x + 20037508.342789244) / res) - width // 2
    py0 = np.floor((20037508.342789244 - y) / res) - height // 2
    xmin, ymax = pixel_to_mercator(px0, py0, zoom)
    xmax, ymin = pixel_to_mercator(px0 + width, py0 + height, zoom)
    return (xmin, ymin, xmax, ymax)


def _grey(rgb):
    return rgb.astype(np.float32).mean(axis=2)


def _detail(rgb) -> float:
    """Laplacian variance over image variance: high-frequency energy, scale-free."""
    g = _grey(rgb)
    lap = cv2.Laplacian(g, cv2.CV_32F)[2:-2, 2:-2]
    return float(lap.var() / (g.var() + 1e-6))


# -- noise primitives ------------------------------------------------------------------------


def test_hash_is_deterministic_and_uniform():
    ix, iy = np.meshgrid(np.arange(-200, 200), np.arange(-100, 100))
    a = hash_unit(ix, iy, 3)
    assert np.array_equal(a, hash_unit(ix, iy, 3))
    assert not np.array_equal(a, hash_unit(ix, iy, 4))
    assert 0.0 <= a.min() and a.max() < 1.0
    assert abs(a.mean() - 0.5) < 0.01
    hist = np.histogram(a, bins=10, range=(0, 1))[0] / a.size
    assert np.all(np.abs(hist - 0.1) < 0.01)


def test_value_noise_depends_on_position_only():
    big = Grid.from_box((1000.0, 2000.0, 1000.0 + 256 * 30.0, 2000.0 + 256 * 30.0), 256, 256)
    sub = Grid(big.x[40:100], big.y[10:90], big.pixel)
    for cell in (50.0, 700.0):
        a = value_noise(big, cell, 7)
        assert np.allclose(a[10:90, 40:100], value_noise(sub, cell, 7), atol=1e-6)
        assert -1.3 < a.min() < a.max() < 1.3
    f = fbm(big, 5, 1e6)
    assert np.allclose(f[10:90, 40:100], fbm(sub, 5, 1e6), atol=1e-5)


# -- the world -------------------------------------------------------------------------------


def test_deterministic(world):
    box = _box(*CENTRE, 10, 192)
    a = world.render(box, 192, 192)
    b = world.render(box, 192, 192)
    c = ProceduralWorld(REGION, seed=0, year=0).render(box, 192, 192)
    assert a.rgb.dtype == np.uint8 and a.rgb.shape == (192, 192, 3) and a.mask.shape == (192, 192)
    assert np.array_equal(a.rgb, b.rgb) and np.array_equal(a.rgb, c.rgb)
    assert a.mask.all()
    other = ProceduralWorld(REGION, seed=1, year=0).render(box, 192, 192)
    assert np.abs(other.rgb.astype(int) - a.rgb).mean() > 5


@pytest.mark.parametrize("zoom", [8, 12])
def test_pixel_depends_on_ground_position_only(world, zoom):
    w, h = 320, 256
    box = _box(*CENTRE, zoom, w, h)
    big = world.render(box, w, h)
    res = resolution_m(zoom)
    c0, r0, cw, rh = 37, 51, 150, 120
    xmin, ymin, xmax, ymax = box
    sub_box = (xmin + c0 * res, ymax - (r0 + rh) * res, xmin + (c0 + cw) * res, ymax - r0 * res)
    sub = world.render(sub_box, cw, rh)
    diff = np.abs(big.rgb[r0 : r0 + rh, c0 : c0 + cw].astype(int) - sub.rgb)
    assert (diff <= 1).mean() > 0.9999
    assert diff.max() <= 8


def test_mask_false_outside_region():
    tiny = ProceduralWorld((5.0, 46.0, 5.2, 46.1), seed=2)
    x0, y0 = lonlat_to_mercator(4.9, 45.95)
    x1, y1 = lonlat_to_mercator(5.3, 46.15)
    r = tiny.render((x0, y0, x1, y1), 200, 150)
    assert 0.05 < r.valid_fraction < 0.9
    assert not r.rgb[~r.mask].any()
    xmin, ymin, xmax, ymax = tiny.bounds_mercator
    cx = x0 + (np.arange(200) + 0.5) * (x1 - x0) / 200
    cy = y1 - (np.arange(150) + 0.5) * (y1 - y0) / 150
    inside = ((cy > ymin) & (cy <= ymax))[:, None] & ((cx >= xmin) & (cx < xmax))[None, :]
    assert np.array_equal(r.mask, inside)
    # a box entirely outside: all invalid, no error
    far = lonlat_to_mercator(20.0, 10.0)
    out = tiny.render((far[0], far[1], far[0] + 1000, far[1] + 1000), 16, 16)
    assert not out.mask.any() and not out.rgb.any()


def test_a_region_past_lon_180_is_read_in_its_own_frame():
    """A world over lon 176..184 has data at lon 181, which is lon -179 too: both boxes give its pixels, and
    a box across lon 180 is continuous (the map's frame would send lon 181 to -179, outside the region)."""
    seam = ProceduralWorld((176.0, -18.0, 184.0, -16.0), seed=25)
    _, y0 = lonlat_to_mercator(0.0, -17.1)
    _, y1 = lonlat_to_mercator(0.0, -17.0)
    beyond = seam.render((lonlat_to_mercator(181.0, 0)[0], y0, lonlat_to_mercator(181.1, 0)[0], y1), 32, 32)
    wrapped = seam.render((lonlat_to_mercator(-179.0, 0)[0], y0, lonlat_to_mercator(-178.9, 0)[0], y1), 32, 32)
    assert beyond.mask.all() and np.abs(beyond.rgb.astype(int) - wrapped.rgb).max() <= 1
    across = seam.render((lonlat_to_mercator(179.95, 0)[0], y0, lonlat_to_mercator(180.05, 0)[0], y1), 32, 32)
    assert across.mask.all()


@pytest.mark.parametrize("region", [(176.0, -18.0, 184.0, -16.0), (-184.0, -18.0, -176.0, -16.0)])
def test_a_cached_region_past_lon_180_serves_the_window_across_it_whole(tmp_path, region):
    """The tile cache reads a world that runs past lon 180 in its own frame: the window across lon 180 (whose
    aligned reads the cache serves) is whole imagery, as the world itself renders it, and the tiles beyond
    lon 180 go to the map's columns 0, 1, ..."""
    from pipeline.imagery import CachedTileSource

    seam = ProceduralWorld(region, seed=25)
    cached = CachedTileSource(seam, tmp_path / "cache")
    across = Window(9, 510, 280, 4)  # lon 178.6 .. 181.4, lat -16.6 .. -19.3
    direct, got = seam.read_window(across), cached.read_window(across)
    assert direct.mask[:80].all() and np.array_equal(got.mask, direct.mask) and np.array_equal(got.rgb, direct.rgb)
    assert sorted(int(p.name) for p in (tmp_path / "cache" / "9").iterdir()) == [0, 1, 510, 511]


def test_years_differ_in_radiometry_but_not_in_structure(world):
    box = _box(*CENTRE, 11, 256)
    renders = [world.with_year(y).render(box, 256, 256).rgb for y in range(len(YEARS))]

    def highpass(rgb):
        g = _grey(rgb)
        return g - cv2.GaussianBlur(g, (0, 0), 3.0)

    def gradmag(rgb):
        g = _grey(rgb)
        return np.hypot(cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1))

    for y in range(1, len(YEARS)):
        means = [r.reshape(-1, 3).mean(axis=0) for r in (renders[0], renders[y])]
        assert np.abs(means[0] - means[1]).max() > 3.0, f"year {y} looks the same as year 0"
        assert not np.array_equal(renders[0], renders[y])
        hp = np.corrcoef(highpass(renders[0]).ravel(), highpass(renders[y]).ravel())[0, 1]
        gm = np.corrcoef(gradmag(renders[0]).ravel(), gradmag(renders[y]).ravel())[0, 1]
        assert hp > 0.5 and gm > 0.5, (y, hp, gm)


def test_native_detail_at_zoom_12(world):
    n = 256
    d8 = _detail(world.render(_box(*CENTRE, 8, n), n, n).rgb)
    box12 = _box(*CENTRE, 12, n)
    d12 = _detail(world.render(box12, n, n).rgb)
    # the same zoom-12 box rendered at zoom-10 resolution and upsampled 4x: what blur looks like
    low = world.render(box12, n // 4, n // 4).rgb
    blurred = cv2.resize(low, (n, n), interpolation=cv2.INTER_CUBIC)
    d_blur = _detail(blurred)
    assert d12 > 0.3 * d8, (d8, d12)
    assert d12 > 4 * d_blur, (d12, d_blur)
    assert d_blur < 0.3 * d8  # the test can fail: blur does collapse the ratio


def test_land_and_water_over_a_region(world):
    r = world.render(world.bounds_mercator, 300, 200)
    assert r.mask.all()
    rgb = r.rgb.astype(int)
    water = (rgb[..., 2] > rgb[..., 0] + 8) & (rgb[..., 2] >= rgb[..., 1]) & (rgb.sum(axis=2) < 250)
    assert 0.05 < water.mean() < 0.8, water.mean()
    # some green vegetation and some bright (town, bare, field) pixels
    green = (rgb[..., 1] > rgb[..., 0]) & (rgb[..., 1] > rgb[..., 2]) & ~water
    assert green.mean() > 0.1


def test_write_xyz_round_trip(tmp_path):
    tiny = ProceduralWorld((5.0, 46.0, 5.3, 46.3), seed=4, year=1)
    n = write_xyz(tiny, tmp_path, [10])
    assert n >= 1
    src = XYZTileSource(tmp_path)
    assert src.zooms == [10]
    files = sorted((tmp_path / "10").rglob("*.png"))
    assert len(files) == n
    for f in files:
        x, y = int(f.parent.name), int(f.stem)
        rgb, mask = src.read_tile(10, x, y)
        from pipeline.geometry.mercator import tile_bounds_mercator

        ref = tiny.render(tile_bounds_mercator(10, x, y), 256, 256)
        assert np.array_equal(mask, ref.mask)
        assert np.array_equal(rgb[mask], ref.rgb[ref.mask])


def test_pickle_and_read_window(world):
    win = Window(zoom=10, x=532, y=360, size_tiles=2)
    first = world.read_window(win)
    assert first.rgb.shape == (512, 512, 3)
    assert world.read_window(win) is first  # cached
    clone = pickle.loads(pickle.dumps(world))
    assert clone.region_lonlat == world.region_lonlat and clone.year == world.year
    assert np.array_equal(clone.read_window(win).rgb, first.rgb)
    assert len(pickle.dumps(world)) < 1000


def test_bad_arguments():
    with pytest.raises(ValueError):
        ProceduralWorld(REGION, year=len(YEARS))
    with pytest.raises(ValueError):
        ProceduralWorld((5.0, 46.0, 4.0, 47.0))
    with pytest.raises(ValueError):
        ProceduralWorld(REGION).render((0, 0, 1, 1), 0, 10)


# -- the world spec and its tile cache -----------------------------------------------------


def test_world_spec_opens_as_a_cached_tile_source(tmp_path):
    from pipeline.imagery import CachedTileSource
    from pipeline.tile_sources import open_tile_source
    from pipeline.world import save_world

    world = ProceduralWorld(REGION, seed=3, year=1)
    save_world(world, tmp_path / "tiles" / "world.toml")
    src = open_tile_source(tmp_path / "tiles")
    assert isinstance(src, CachedTileSource) and src.source.seed == 3 and src.year == 1
    win = Window(11, 1046, 727, 4)  # around (4E, 45N)
    direct = world.read_window(win)
    first = src.read_window(win)
    assert np.array_equal(first.rgb, direct.rgb) and np.array_equal(first.mask, direct.mask)
    tiles = sorted((tmp_path / "tiles" / "cache" / "year1" / "11").rglob("*.png"))
    assert len(tiles) == 16
    # a fresh process (here: a fresh source) reads the tiles back instead of rendering
    again = pickle.loads(pickle.dumps(open_tile_source(tmp_path / "tiles")))
    again.source = None  # any render call would now fail
    assert np.array_equal(again.read_window(win).rgb, direct.rgb)
    # the cache folder is a plain XYZ folder
    xyz = XYZTileSource(tmp_path / "tiles" / "cache" / "year1")
    assert np.array_equal(xyz.read_window(win).rgb, direct.rgb)
    # requests off the tile grid go to the world itself
    box = _box(4.0, 45.0, 11, 300, 200)
    shifted = (box[0] + 17.0, box[1], box[2] + 17.0, box[3])
    assert np.array_equal(src.render(shifted, 300, 200).rgb, world.render(shifted, 300, 200).rgb)


def test_world_spec_errors_say_what_to_do(tmp_path):
    from pipeline.world import load_world

    bad = tmp_path / "world.toml"
    bad.write_text("[world]\nseed = 1\n")
    with pytest.raises(ValueError, match="region"):
        load_world(bad)
