"""Tile sources: rasters in any CRS and XYZ folders, rendered into EPSG:3857 boxes."""

from __future__ import annotations

import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
import rasterio
from rasterio.warp import transform as wt
from rasterio.windows import Window as RioWindow

from pipeline.geometry.mercator import ORIGIN_SHIFT_M, lonlat_to_mercator, resolution_m
from pipeline.geometry.windows import Window, window_origins
from pipeline.imagery import (
    RasterOpenError,
    RasterTileSource,
    Rendered,
    XYZTileSource,
    choose_overview_level,
    write_xyz,
)
from pipeline.tile_sources import open_tile_source

try:
    import imagery_fixtures as fx
except ImportError:  # tests collected as a package
    from tests import imagery_fixtures as fx

# rasterio.warp.reproject on arrays may report a spurious "no geotransform" when first called
# from several threads (pipeline.imagery.raster mutes it; pytest resets filters per test).
pytestmark = pytest.mark.filterwarnings("ignore:Dataset has no geotransform:rasterio.errors.NotGeoreferencedWarning")

REAL_MOSAICS, REAL_SAMPLE = fx.REAL_MOSAICS, fx.REAL_SAMPLE
from_origin, lonlat_raster, smooth_rgb = fx.from_origin, fx.lonlat_raster, fx.smooth_rgb
utm_raster, write_raster, seam_rasters = fx.utm_raster, fx.write_raster, fx.seam_rasters


@pytest.fixture(scope="module")
def real_mosaics() -> Path:
    if not REAL_MOSAICS.is_dir() or not list(REAL_MOSAICS.glob("*.tif")):
        pytest.skip(f"real sample not found at {REAL_SAMPLE} (it ships beside the repository as ../shared)")
    return REAL_MOSAICS


@pytest.fixture(scope="module")
def utm_with_overviews(tmp_path_factory) -> Path:
    return utm_raster(tmp_path_factory.mktemp("utm") / "utm.tif", seed=1, overviews=[2, 4, 8])


# -- real data ------------------------------------------------------------------------------


def test_real_mosaic_native_window_is_exact(real_mosaics):
    paths = sorted(real_mosaics.glob("*.tif"))
    src = open_tile_source(real_mosaics)
    assert isinstance(src, RasterTileSource) and src.paths == [str(p) for p in paths]
    with rasterio.open(paths[2]) as ds:
        t = ds.transform
        ref = np.moveaxis(ds.read(window=RioWindow(300, 200, 160, 120)), 0, -1)
    x0, y0 = t @ (300, 200)
    x1, y1 = t @ (460, 320)
    out = src.render((x0, y1, x1, y0), 160, 120)
    assert out.rgb.shape == (120, 160, 3) and out.rgb.dtype == np.uint8
    assert out.mask.all()
    np.testing.assert_array_equal(out.rgb, ref)
    # a quarter-pixel shift resamples: close to the pixels, not equal
    dx = t.a / 4
    shifted = src.render((x0 + dx, y1, x1 + dx, y0), 160, 120)
    assert np.abs(shifted.rgb[:, 2:-2].astype(float) - ref[:, 2:-2]).mean() < 8


def test_real_mosaic_bounds_are_union(real_mosaics):
    src = open_tile_source(str(real_mosaics / "*.tif"))
    lefts, bottoms, rights, tops = [], [], [], []
    for p in sorted(real_mosaics.glob("*.tif")):
        with rasterio.open(p) as ds:
            b = ds.bounds
        lefts.append(b.left), bottoms.append(b.bottom), rights.append(b.right), tops.append(b.top)
    np.testing.assert_allclose(src.bounds_mercator, (min(lefts), min(bottoms), max(rights), max(tops)))


# -- masks ----------------------------------------------------------------------------------


def test_box_outside_every_raster_is_all_invalid(utm_with_overviews):
    src = RasterTileSource(utm_with_overviews)
    out = src.render((-5e6, 3e6, -4.9e6, 3.05e6), 40, 20)
    assert isinstance(out, Rendered)
    assert out.rgb.shape == (20, 40, 3) and out.mask.shape == (20, 40)
    assert not out.mask.any() and not out.rgb.any()


@pytest.mark.parametrize("edge", [ORIGIN_SHIFT_M, -ORIGIN_SHIFT_M])
def test_a_box_across_the_antimeridian_reads_both_ends_of_the_map(tmp_path, edge):
    """Lon 180 and lon -180 are one meridian: the columns of a box beyond either edge of the map are read from
    the other end of it (red counts the source's columns), as a footprint straddling lon 180 needs."""
    r = 1000.0
    src = RasterTileSource(seam_rasters(tmp_path, r), resampling="nearest")
    out = src.render((edge - 4 * r, -2 * r, edge + 4 * r, 2 * r), 8, 4)
    assert out.mask.all()
    assert out.rgb[..., 0].tolist() == [[14, 15, 16, 17, 100, 101, 102, 103]] * 4
    beyond = src.render((ORIGIN_SHIFT_M + 2 * r, -2 * r, ORIGIN_SHIFT_M + 6 * r, 2 * r), 4, 4)  # wholly past lon 180
    assert beyond.mask.all() and beyond.rgb[0, :, 0].tolist() == [102, 103, 104, 105]


def test_box_half_inside_masks_the_data_part(tmp_path):
    # lon/lat edges are straight lines in EPSG:3857: the left edge is at x = lon0 exactly.
    data = smooth_rgb(2, 100, 100)
    path = lonlat_raster(tmp_path / "ll.tif", west=10.0, north=1.0, res_deg=0.01, data=data)
    src = RasterTileSource(path)
    xe, _ = lonlat_to_mercator(10.0, 0.5)
    _, yc = lonlat_to_mercator(10.0, 0.5)
    res = 700.0  # ~0.63 source pixels per target pixel
    w, h = 64, 32
    box = (xe - 20.3 * res, yc - h / 2 * res, xe + (w - 20.3) * res, yc + h / 2 * res)
    out = src.render(box, w, h)
    centres = box[0] + (np.arange(w) + 0.5) * res
    expected = np.broadcast_to(centres > xe, (h, w))
    differ = out.mask != expected
    # only the column straddling the edge may differ
    assert np.abs(centres[differ.any(axis=0)] - xe).max(initial=0) <= res
    assert out.mask[:, 22:].all() and not out.mask[:, :19].any()
    assert not out.rgb[~out.mask].any()
    # valid pixels at the edge keep the data's brightness (no blending with the nodata fill)
    assert out.rgb[out.mask].min() >= data.min()


def test_nodata_region_is_masked_without_dark_edges(tmp_path):
    data = smooth_rgb(3, 128, 128, lo=100, hi=200)
    data[:, 40:90, 30:70] = 0
    path = utm_raster(tmp_path / "nd.tif", size=128, nodata=0, data=data)
    src = RasterTileSource(path)
    with rasterio.open(path) as ds:
        t = ds.transform
    # box covering the raster's interior, rendered in EPSG:3857 at a slightly different scale
    (x0, y0), (x1, y1) = (t @ (10, 10)), (t @ (118, 118))
    xs, ys = wt("EPSG:32633", "EPSG:3857", [x0, x1], [y0, y1])
    box = (min(xs), min(ys), max(xs), max(ys))
    out = src.render(box, 97, 97)
    # map the nodata block's interior into output pixels
    cxs, cys = wt(
        "EPSG:32633", "EPSG:3857", [(t @ (32, 42))[0], (t @ (68, 88))[0]], [(t @ (32, 42))[1], (t @ (68, 88))[1]]
    )
    res_x, res_y = (box[2] - box[0]) / 97, (box[3] - box[1]) / 97
    c0, c1 = int(np.ceil((min(cxs) - box[0]) / res_x)), int((max(cxs) - box[0]) / res_x)
    r0, r1 = int(np.ceil((box[3] - max(cys)) / res_y)), int((box[3] - min(cys)) / res_y)
    assert c1 - c0 > 20 and r1 - r0 > 30
    assert not out.mask[r0:r1, c0:c1].any()
    assert out.mask.mean() > 0.7
    assert out.rgb[out.mask].min() >= 100  # no fake-valid dark pixels along the hole
    assert not out.rgb[~out.mask].any()
    # 3x coarser (no overviews: decimated read with nodata-aware averaging): same story
    coarse = src.render(box, 32, 32)
    assert not coarse.mask[r0 // 3 + 1 : r1 // 3 - 1, c0 // 3 + 1 : c1 // 3 - 1].any()
    assert coarse.mask.mean() > 0.7
    assert coarse.rgb[coarse.mask].min() >= 100


# -- overviews --------------------------------------------------------------------------------


def test_choose_overview_level_known_answers():
    assert choose_overview_level([2, 4, 8], 1.0) is None
    assert choose_overview_level([2, 4, 8], 1.9) is None
    assert choose_overview_level([2, 4, 8], 2.0) == 0
    assert choose_overview_level([2, 4, 8], 3.99) == 0
    assert choose_overview_level([2, 4, 8], 4.0) == 1
    assert choose_overview_level([2, 4, 8], 7.9) == 1
    assert choose_overview_level([2, 4, 8], 500.0) == 2
    assert choose_overview_level([], 10.0) is None


def test_overview_render_matches_downsampled_full_resolution(tmp_path):
    data = smooth_rgb(11, 256, 256, sigma=5.0)
    with_ovr = utm_raster(tmp_path / "ovr.tif", data=data, overviews=[2, 4, 8])
    plain = utm_raster(tmp_path / "plain.tif", data=data)
    src = RasterTileSource(with_ovr)
    with rasterio.open(with_ovr) as ds:
        t = ds.transform
    (ux0, uy0), (ux1, uy1) = t @ (13.3, 17.6), t @ (237.3, 241.6)  # not on the overview grid
    xs, ys = wt("EPSG:32633", "EPSG:3857", [ux0, ux1], [uy0, uy1])
    box = (min(xs), min(ys), max(xs), max(ys))
    coarse_n = 55  # ~4.07 source pixels per target pixel: overview level 1 (factor 4)
    coarse = src.render(box, coarse_n, coarse_n)
    assert src.last_overview_levels[str(with_ovr)] == 1
    fine = src.render(box, coarse_n * 4, coarse_n * 4)
    assert src.last_overview_levels[str(with_ovr)] is None
    assert coarse.mask.all() and fine.mask.all()
    down = cv2.resize(fine.rgb, (coarse_n, coarse_n), interpolation=cv2.INTER_AREA)
    assert np.abs(coarse.rgb.astype(float) - down).mean() < 2.0
    # the same raster without overviews (decimated read) agrees with both
    no_ovr_src = RasterTileSource(plain)
    no_ovr = no_ovr_src.render(box, coarse_n, coarse_n)
    assert no_ovr_src.last_overview_levels[str(plain)] is None
    assert np.abs(no_ovr.rgb.astype(float) - down).mean() < 2.0
    assert np.abs(no_ovr.rgb.astype(float) - coarse.rgb).mean() < 1.0


# -- bands and types ----------------------------------------------------------------------------


def test_single_band_uint16_is_stretched_grey(tmp_path):
    rng = np.random.default_rng(4)
    data = rng.integers(1000, 3000, (1, 64, 64), dtype=np.uint16)
    path = utm_raster(tmp_path / "grey16.tif", size=64, data=data)
    src = RasterTileSource(path)
    lo, hi = src.rasters[0].value_range
    assert 1000 <= lo < hi <= 3000
    with rasterio.open(path) as ds:
        t = ds.transform
    xs, ys = wt("EPSG:32633", "EPSG:3857", [(t @ (8, 8))[0], (t @ (56, 56))[0]], [(t @ (8, 8))[1], (t @ (56, 56))[1]])
    out = src.render((min(xs), min(ys), max(xs), max(ys)), 32, 32)
    assert out.mask.all()
    assert (out.rgb[..., 0] == out.rgb[..., 1]).all() and (out.rgb[..., 1] == out.rgb[..., 2]).all()
    assert out.rgb.max() > 200 and out.rgb.min() < 60


def test_latitudes_beyond_mercator_are_clipped(tmp_path):
    data = smooth_rgb(5, 18, 36)
    path = lonlat_raster(tmp_path / "world.tif", west=-180.0, north=90.0, res_deg=10.0, data=data)
    src = RasterTileSource(path)
    xmin, ymin, xmax, ymax = src.bounds_mercator
    assert xmin == pytest.approx(-ORIGIN_SHIFT_M) and xmax == pytest.approx(ORIGIN_SHIFT_M)
    assert ymin == pytest.approx(-ORIGIN_SHIFT_M) and ymax == pytest.approx(ORIGIN_SHIFT_M)
    out = src.render((-1e6, 1.9e7, 1e6, ORIGIN_SHIFT_M), 16, 16)
    assert out.mask.all()


# -- XYZ ------------------------------------------------------------------------------------------


def _check_round_trip(src, root, zoom, exact):
    xyz = open_tile_source(root)
    assert isinstance(xyz, XYZTileSource)
    xs, ys = window_origins(src.bounds_mercator, zoom, size_tiles=2)
    checked = 0
    for x in xs:
        for y in ys:
            win = Window(zoom, int(x), int(y), 2)
            got = xyz.read_window(win)
            ref = src.render(win.bounds_mercator(), 512, 512)
            np.testing.assert_array_equal(got.mask, ref.mask)
            if exact:
                np.testing.assert_array_equal(got.rgb, ref.rgb)
            else:  # GDAL's approximate transformer depends a little on the rendered box
                diff = np.abs(got.rgb.astype(int) - ref.rgb)
                assert diff.max() <= 2 and (diff > 0).mean() < 0.005
            checked += ref.mask.any()
    assert checked >= 1
    return xyz


def test_write_xyz_round_trip_is_exact(tmp_path):
    # EPSG:3857 raster at a resolution that matches no zoom, with a nodata hole
    data = smooth_rgb(8, 200, 220, lo=30, hi=230)
    data[:, 50:120, 60:100] = 0
    path = write_raster(tmp_path / "m.tif", data, "EPSG:3857", from_origin(1665000.3, 61000.7, 33.7, 33.7), nodata=0)
    src = RasterTileSource(path)
    root = tmp_path / "xyz"
    n = write_xyz(src, root, zooms=[11, 12])
    assert n > 0 and n == len(list(root.rglob("*.png")))
    assert not list(root.rglob(".tmp-*"))
    xyz = _check_round_trip(src, root, 12, exact=True)
    _check_round_trip(src, root, 11, exact=True)
    assert xyz.zooms == [11, 12]
    # the XYZ extent covers the raster's and is at most one tile larger on each side
    rb, xb = src.bounds_mercator, xyz.bounds_mercator
    tile = resolution_m(12) * 256
    assert xb[0] <= rb[0] < xb[0] + tile and xb[2] - tile < rb[2] <= xb[2]
    assert xb[1] <= rb[1] < xb[1] + tile and xb[3] - tile < rb[3] <= xb[3]
    # an unaligned box goes through resampling and stays close to the raster's render
    cx, cy = (rb[0] + rb[2]) / 2, (rb[1] + rb[3]) / 2
    box = (cx + 1500.3, cy - 1500.7, cx + 3500.2, cy + 2100.1)
    a, b = xyz.render(box, 70, 85), src.render(box, 70, 85)
    assert a.mask.all() and b.mask.all()
    assert np.abs(a.rgb.astype(float) - b.rgb).mean() < 4.0


def test_write_xyz_of_a_region_past_lon_180_writes_the_map_columns_beyond_it(tmp_path):
    """A world over lon 179..181 (its own frame runs past 180): its tiles east of 180 are the map's columns 0 and
    1, and the XYZ folder serves the window across lon 180 as the world does."""
    from pipeline.world import ProceduralWorld

    world = ProceduralWorld((179.0, -18.0, 181.0, -16.0), seed=25)
    root = tmp_path / "xyz"
    write_xyz(world, root, zooms=9)
    assert sorted(int(p.name) for p in (root / "9").iterdir()) == [0, 1, 510, 511]
    across = Window(9, 510, 280, 4)
    got, ref = XYZTileSource(root).read_window(across), world.read_window(across)
    assert ref.mask.mean() > 0.2 and np.array_equal(got.mask, ref.mask)
    assert np.abs(got.rgb.astype(int) - ref.rgb)[ref.mask].max() <= 1


def test_write_xyz_from_utm_raster(utm_with_overviews, tmp_path):
    src = RasterTileSource(utm_with_overviews)
    root = tmp_path / "xyz"
    assert write_xyz(src, root, zooms=12, workers=2) > 0
    _check_round_trip(src, root, 12, exact=False)


def test_xyz_missing_tiles_and_alpha(tmp_path):
    root = tmp_path / "tiles"
    rng = np.random.default_rng(6)
    tile = rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)
    (root / "3" / "4").mkdir(parents=True)
    cv2.imwrite(str(root / "3" / "4" / "2.jpg"), tile)
    rgba = np.dstack([tile, np.zeros((256, 256), np.uint8)])
    rgba[:, :100, 3] = 255
    cv2.imwrite(str(root / "3" / "4" / "3.png"), rgba)
    src = XYZTileSource(root)
    assert src.zooms == [3]
    out = src.read_window(Window(3, 4, 2, 2))
    assert out.rgb.shape == (512, 512, 3)
    assert out.mask[:256, :256].all()  # jpeg: all valid
    assert not out.mask[:, 256:].any()  # column x=5 missing
    assert out.mask[256:, :100].all() and not out.mask[256:, 100:256].any()
    np.testing.assert_array_equal(out.rgb[256:, :100], cv2.cvtColor(tile, cv2.COLOR_BGR2RGB)[:, :100])
    # resampled at the transparent edge: no darkening of valid pixels
    x0, y1 = (-ORIGIN_SHIFT_M + 4 * resolution_m(3) * 256, ORIGIN_SHIFT_M - 3 * resolution_m(3) * 256)
    r = resolution_m(3) * 1.37
    box = (x0, y1 - 150 * r, x0 + 150 * r, y1)
    res = src.render(box, 150, 150)
    edge = int(100 / 1.37)
    assert res.mask[:, : edge - 1].all() and not res.mask[:, edge + 1 :].any()


# -- threads, factory, cache -------------------------------------------------------------------


def test_concurrent_renders_equal_serial(utm_with_overviews, tmp_path):
    src = RasterTileSource([utm_with_overviews, utm_raster(tmp_path / "b.tif", seed=9, res=45.0)])
    b = src.bounds_mercator
    rng = np.random.default_rng(7)
    boxes = []
    for _ in range(24):
        cx, cy = rng.uniform(b[0], b[2]), rng.uniform(b[1], b[3])
        half = rng.uniform(500, 6000)
        boxes.append(((cx - half, cy - half, cx + half, cy + half), int(rng.integers(16, 96))))
    serial = [src.render(bx, n, n) for bx, n in boxes]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda a: src.render(a[0], a[1], a[1]), boxes * 2))
    for i, p in enumerate(parallel):
        s = serial[i % len(boxes)]
        np.testing.assert_array_equal(p.rgb, s.rgb)
        np.testing.assert_array_equal(p.mask, s.mask)
    # and after pickling (Dask ships sources to workers)
    clone = pickle.loads(pickle.dumps(src))
    np.testing.assert_array_equal(clone.render(*boxes[0][:1], boxes[0][1], boxes[0][1]).rgb, serial[0].rgb)


def test_open_tile_source_picks_the_class_and_explains_failures(utm_with_overviews, tmp_path):
    folder = tmp_path / "rasters"
    folder.mkdir()
    a = utm_raster(folder / "b.tif", seed=1, size=64)
    utm_raster(folder / "a.TIF", seed=2, size=64)
    (folder / "notes.txt").write_text("not a raster")
    assert isinstance(open_tile_source(a), RasterTileSource)
    src = open_tile_source(folder)
    assert [Path(p).name for p in src.paths] == ["a.TIF", "b.tif"]
    globbed = open_tile_source(str(folder / "*.tif"))
    assert [Path(p).name for p in globbed.paths] == ["b.tif"]
    root = tmp_path / "xyz"
    write_xyz(RasterTileSource(utm_with_overviews), root, zooms=[9])
    assert isinstance(open_tile_source(root), XYZTileSource)
    for bad in (tmp_path / "missing.tif", tmp_path / "nothing" / "*.tif", tmp_path / "empty"):
        if bad.name == "empty":
            bad.mkdir()
        with pytest.raises(FileNotFoundError, match="no rasters or XYZ tiles found at"):
            open_tile_source(bad)
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"this is not a tiff")
    with pytest.raises(RasterOpenError, match="broken.tif"):
        open_tile_source(broken)


def test_read_window_cache_hits_and_evicts(utm_with_overviews):
    one = (2 * 64) ** 2 * 4  # bytes of one 2x2-tile window at tile_size 64 (rgb + mask)
    src = RasterTileSource(utm_with_overviews, cache_bytes=int(one * 1.5))
    xs, ys = window_origins(src.bounds_mercator, 12, size_tiles=2)
    w1, w2 = Window(12, int(xs[0]), int(ys[0]), 2), Window(12, int(xs[-1]), int(ys[-1]), 2)
    assert w1 != w2
    first = src.read_window(w1, tile_size=64)
    assert first.rgb.shape == (128, 128, 3)
    assert src.read_window(w1, tile_size=64) is first
    src.read_window(w2, tile_size=64)  # evicts w1
    again = src.read_window(w1, tile_size=64)
    assert again is not first
    np.testing.assert_array_equal(again.rgb, first.rgb)
    assert not again.rgb.flags.writeable
