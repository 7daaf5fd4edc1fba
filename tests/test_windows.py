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
        west, south, east, north = (w.corners_lonlat()[:, 0].min(), w.corners_lonlat()[:, 1].min(),
                                    w.corners_lonlat()[:, 0].max(), w.corners_lonlat()[:, 1].max())
        assert west <= lon <= east and south <= lat <= north
    assert len({w.tile_id for w in wins}) == 4


def test_edge_of_world_has_fewer_windows_and_none_wraps():
    wins = windows_containing(179.99, 0.0, 3)
    assert 0 < len(wins) < 4
    assert all(w.x + w.size_tiles <= 8 for w in wins)


@pytest.mark.parametrize("zoom", [3, 12, 24])
def test_the_far_edges_of_the_map_have_the_windows_just_inside_them(zoom):
    """Longitude 180 is the map's east edge (the queries accept it) and latitude -85.05 its south edge."""
    from pipeline.geometry.mercator import MAX_LATITUDE

    east = windows_containing(180.0, 10.0, zoom)
    assert len(east) == 2 and east == windows_containing(180.0 - 1e-9, 10.0, zoom)
    assert len(windows_containing(0.0, -MAX_LATITUDE, zoom)) == 2


def test_window_corners_are_exact_tile_edges():
    w = Window(3, 2, 2, 4)  # tiles x 2..5, y 2..5 at zoom 3: edges x 2 and 6, y 2 and 6
    c = w.corners_lonlat()
    np.testing.assert_allclose(c[0], [-90.0, 66.51326044311186], atol=1e-9)  # top-left
    np.testing.assert_allclose(c[2], [90.0, -66.51326044311186], atol=1e-9)  # bottom-right
    assert w.tile_id == "3_2_2"
    assert Window.from_tile_id("3_2_2") == w


def test_window_origins_match_brute_force():
    rng = np.random.default_rng(1)
    zoom, size = 6, 4
    for _ in range(20):
        lon0, lat0 = rng.uniform(-170, 160), rng.uniform(-80, 70)
        xmin, ymin = lonlat_to_mercator(lon0, lat0)
        xmax, ymax = lonlat_to_mercator(lon0 + rng.uniform(0.1, 10), min(lat0 + rng.uniform(0.1, 10), 85))
        xs, ys = window_origins((xmin, ymin, xmax, ymax), zoom, size)
        got = {(int(x), int(y)) for x in xs for y in ys}
        expected = set()
        for x in range(0, 64 - size + 1, 2):
            for y in range(0, 64 - size + 1, 2):
                bx0, by0, bx1, by1 = Window(zoom, x, y, size).bounds_mercator()
                if bx0 < xmax and bx1 > xmin and by0 < ymax and by1 > ymin:
                    expected.add((x, y))
        assert got == expected


def test_odd_window_size_is_rejected():
    with pytest.raises(ValueError, match="even"):
        windows_containing(0, 0, 5, size_tiles=3)
