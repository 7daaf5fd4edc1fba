import numpy as np
import pytest

from pipeline.geometry.mercator import lonlat_to_mercator, lonlat_to_pixel
from pipeline.geometry.windows import Window, window_origins, windows_containing


@pytest.mark.parametrize("lon,lat,zoom", [(12.5, 41.9, 8), (-93.3, 45.0, 12), (40.4, -10.3, 10), (0.01, 0.01, 9)])
def test_point_lies_in_four_half_stride_windows(lon, lat, zoom):
    wins = windows_containing(lon, lat, zoom)
    assert len(wins) == 4
    px, py = lonlat_to_pixel(lon, lat, zoom, 1)
    for w in wins:
        assert w.x % 2 == 0 and w.y % 2 == 0
        assert w.x <= px < w.x + 4 and w.y <= py < w.y + 4
        west, south, east, north = (
            w.corners_lonlat()[:, 0].min(),
            w.corners_lonlat()[:, 1].min(),
            w.corners_lonlat()[:, 0].max(),
            w.corners_lonlat()[:, 1].max(),
        )
        assert west <= lon <= east and south <= lat <= north
    assert len({w.tile_id for w in wins}) == 4


@pytest.mark.parametrize("lon", [179.99, -179.99])
def test_a_point_near_lon_180_lies_in_four_windows_one_across_it(lon):
    wins = windows_containing(lon, 0.0, 3)  # 8 x 8 tiles: the window across lon 180 starts at x = 6
    assert len(wins) == 4 and len(set(wins)) == 4
    across = [w for w in wins if w.wraps]
    assert [w.x for w in across] == [6, 6]  # the two rows of it
    for w in wins:
        west, east = w.corners_lonlat()[0, 0], w.corners_lonlat()[1, 0]
        assert west <= lon <= east or west <= lon + 360.0 <= east  # unwrapped east corners: 90 .. 270 deg
    assert {w.x for w in wins} == ({4, 6} if lon > 0 else {0, 6})
    np.testing.assert_allclose(across[0].corners_lonlat()[:2, 0], [90.0, 270.0])


@pytest.mark.parametrize("zoom", [3, 12, 24])
def test_the_far_edges_of_the_map_have_the_windows_just_inside_them(zoom):
    """Longitude 180 is -180 (the queries accept both); latitude -85.05 is the map's south edge."""
    from pipeline.geometry.mercator import MAX_LATITUDE

    east = windows_containing(180.0, 10.0, zoom)
    assert len(east) == 4 and east == windows_containing(-180.0, 10.0, zoom)
    assert sum(w.wraps for w in east) == 2
    assert len(windows_containing(0.0, -MAX_LATITUDE, zoom)) == 2


def test_window_corners_are_exact_tile_edges():
    w = Window(3, 2, 2, 4)  # tiles x 2..5, y 2..5 at zoom 3: edges x 2 and 6, y 2 and 6
    c = w.corners_lonlat()
    np.testing.assert_allclose(c[0], [-90.0, 66.51326044311186], atol=1e-9)  # top-left
    np.testing.assert_allclose(c[2], [90.0, -66.51326044311186], atol=1e-9)  # bottom-right
    assert w.tile_id == "3_2_2"
    assert Window.from_tile_id("3_2_2") == w


def test_window_origins_match_brute_force():
    """Random boxes, some across lon 180 (unwrapped past it, as a source's own frame may be)."""
    rng = np.random.default_rng(1)
    zoom, size = 6, 4
    world = 2 * lonlat_to_mercator(180.0, 0.0)[0]
    for i in range(40):
        lon0, lat0 = rng.uniform(-170, 160) if i % 2 else rng.uniform(170, 185), rng.uniform(-80, 70)
        xmin, ymin = lonlat_to_mercator(lon0, lat0)  # linear in lon: past lon 180 is past the map's east edge
        xmax, ymax = lonlat_to_mercator(lon0 + rng.uniform(0.1, 10), min(lat0 + rng.uniform(0.1, 10), 85))
        xs, ys = window_origins((xmin, ymin, xmax, ymax), zoom, size)
        got = {(int(x), int(y)) for x in xs for y in ys}
        assert len(got) == len(xs) * len(ys)
        assert np.all(np.diff(xs) % 64 == 2)  # consecutive columns from the box's west end, modulo the world
        expected = set()
        for x in range(0, 64, 2):  # x = 62: the window across lon 180
            for y in range(0, 64 - size + 1, 2):
                bx0, by0, bx1, by1 = Window(zoom, x, y, size).bounds_mercator()
                if any(bx0 + k < xmax and bx1 + k > xmin for k in (-world, 0.0, world)) and by0 < ymax and by1 > ymin:
                    expected.add((x, y))
        assert got == expected


def test_window_origins_of_the_whole_map_are_every_column_once():
    edge = lonlat_to_mercator(180.0, 0.0)[0]
    xs, ys = window_origins((-edge, -edge, edge, edge), 4, 4)
    np.testing.assert_array_equal(xs, np.arange(0, 16, 2))  # 14: across lon 180
    np.testing.assert_array_equal(ys, np.arange(0, 13, 2))


@pytest.mark.parametrize("zoom, size", [(2, 4), (1, 2)])
def test_a_window_as_wide_as_the_map_is_not_repeated_across_lon_180(zoom, size):
    """At the zoom where a window is the map's width, the window 'across lon 180' would be the one at x = 0."""
    edge = lonlat_to_mercator(180.0, 0.0)[0]
    xs, _ = window_origins((-edge, -edge, edge, edge), zoom, size)
    assert xs.tolist() == [0]
    for lon in (-179.9, -1.0, 1.0, 179.9):
        wins = windows_containing(lon, 0.0, zoom, size)
        assert [w.x for w in wins] == [0] and not wins[0].wraps


def test_odd_window_size_is_rejected():
    with pytest.raises(ValueError, match="even"):
        windows_containing(0, 0, 5, size_tiles=3)
