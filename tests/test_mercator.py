import numpy as np
import pytest

from pipeline.geometry.mercator import (
    MAX_LATITUDE,
    ORIGIN_SHIFT_M,
    LatitudeError,
    lonlat_to_mercator,
    lonlat_to_pixel,
    lonlat_to_tile,
    mercator_to_lonlat,
    pixel_to_lonlat,
    resolution_m,
    tile_bounds_lonlat,
    tile_bounds_mercator,
)


# Tile edges as published for the slippy-map grid (OpenStreetMap wiki, "Slippy map tilenames").
@pytest.mark.parametrize(
    "z,x,y,expected",
    [
        (0, 0, 0, (-180.0, -85.0511287798066, 180.0, 85.0511287798066)),
        (1, 0, 0, (-180.0, 0.0, 0.0, 85.0511287798066)),
        (1, 1, 1, (0.0, -85.0511287798066, 180.0, 0.0)),
        (2, 1, 1, (-90.0, 0.0, 0.0, 66.51326044311186)),
        (3, 3, 2, (-45.0, 40.97989806962013, 0.0, 66.51326044311186)),
        (3, 5, 4, (45.0, -40.97989806962013, 90.0, 0.0)),
        (3, 7, 7, (135.0, -85.0511287798066, 180.0, -79.17133464081945)),
    ],
)
def test_tile_bounds_against_published_values(z, x, y, expected):
    got = tile_bounds_lonlat(z, x, y)
    np.testing.assert_allclose(got, expected, atol=1e-9)


def test_mercator_extent_and_resolution():
    assert ORIGIN_SHIFT_M == pytest.approx(20037508.342789244, abs=1e-6)
    assert tile_bounds_mercator(0, 0, 0) == pytest.approx(
        (-ORIGIN_SHIFT_M, -ORIGIN_SHIFT_M, ORIGIN_SHIFT_M, ORIGIN_SHIFT_M)
    )
    assert resolution_m(0) == pytest.approx(156543.03392804097, rel=1e-12)
    assert MAX_LATITUDE == pytest.approx(85.0511287798066, abs=1e-12)


def test_lonlat_pixel_round_trip_within_1e9_degrees():
    rng = np.random.default_rng(0)
    lon = rng.uniform(-180, 180, 10_000)
    lat = rng.uniform(-85.05, 85.05, 10_000)
    for z in (0, 8, 12, 20):
        px, py = lonlat_to_pixel(lon, lat, z)
        lon2, lat2 = pixel_to_lonlat(px, py, z)
        assert np.max(np.abs(lon2 - lon)) < 1e-9
        assert np.max(np.abs(lat2 - lat)) < 1e-9
    x, y = lonlat_to_mercator(lon, lat)
    lon3, lat3 = mercator_to_lonlat(x, y)
    assert np.max(np.abs(lat3 - lat)) < 1e-9


def test_known_points():
    assert lonlat_to_pixel(0.0, 0.0, 0) == pytest.approx((128.0, 128.0))
    assert lonlat_to_pixel(-180.0, MAX_LATITUDE, 5) == pytest.approx((0.0, 0.0), abs=1e-6)
    # Rome at zoom 10: x = floor((12.4964 + 180) / 360 * 1024), y from the Mercator formula
    assert lonlat_to_tile(12.4964, 41.9028, 10) == (547, 380)


@pytest.mark.parametrize("lat", [89.0, -85.06, np.nan, 90.0])
def test_latitude_beyond_mercator_is_a_clear_error(lat):
    with pytest.raises(LatitudeError, match="outside the Web Mercator range"):
        lonlat_to_mercator(10.0, lat)


@pytest.mark.parametrize("zoom", [0, 11, 24])
def test_tile_edges_have_exact_longitudes(zoom):
    """The map's west and east edges are lon -180 and 180 exactly (a window's corner at 180 + 1 ulp would be
    stored as -180 once wrapped), and so is every tile edge between them."""
    n = 1 << zoom
    x = np.array([0.0, n / 2, n, 1.5 * n])  # the last: past the east edge (a window across lon 180)
    lon, _ = pixel_to_lonlat(x, np.zeros(4), zoom, 1)
    assert lon.tolist() == [-180.0, 0.0, 180.0, 360.0]
    lon, _ = pixel_to_lonlat(x * 256 + 256, np.zeros(4), zoom)
    np.testing.assert_array_equal(lon, [-180.0 + 360.0 / n, 360.0 / n, 180.0 + 360.0 / n, 360.0 + 360.0 / n])
