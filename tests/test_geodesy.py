"""Known-answer tests for pipeline.geometry.geodesy (footprints, ellipsoidal areas, IoU)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
from shapely.geometry import MultiPolygon, Polygon

from pipeline.geometry import geodesy as g
from pipeline.geometry.windows import Window

# WGS84
A = 6378137.0
F = 1.0 / 298.257223563
E2 = F * (2.0 - F)
E = math.sqrt(E2)
B = A * (1.0 - F)


def zone_area_m2(lat_deg: float) -> float:
    """Closed form: area of the WGS84 ellipsoid between the equator and ``lat_deg`` (all lons)."""
    s = math.sin(math.radians(lat_deg))
    return 2.0 * math.pi * B**2 * (s / (2.0 * (1.0 - E2 * s * s)) + math.log((1.0 + E * s) / (1.0 - E * s)) / (4.0 * E))


def cell_area_km2(lon0, lat0, lon1, lat1) -> float:
    """Closed-form area of a lon/lat cell bounded by two meridians and two parallels."""
    return (zone_area_m2(lat1) - zone_area_m2(lat0)) * (lon1 - lon0) / 360.0 / 1e6


def rect(lon0, lat0, lon1, lat1):
    """Corners of a north-up rectangle in photo order: tl, tr, br, bl (clockwise in lon/lat)."""
    return [[lon0, lat1], [lon1, lat1], [lon1, lat0], [lon0, lat0]]


def is_ccw(geom) -> bool:
    parts = geom.geoms if isinstance(geom, MultiPolygon) else [geom]
    return all(shapely.is_ccw(p.exterior) for p in parts)


def all_lons(geom) -> np.ndarray:
    return shapely.get_coordinates(geom)[:, 0]


# A rotated, non-rectangular footprint straddling 180 deg and the same shape moved by -180 deg
# (-179.x + 180 and 179.x - 180 are exact in floating point).
CROSSING = [[179.3, 11.2], [-179.4, 10.9], [-179.7, 9.8], [179.2, 10.1]]
PARTNER = [[179.8, 11.5], [-179.1, 11.0], [-179.3, 10.2], [179.6, 10.4]]


def moved(corners, dlon=-180.0):
    return [[lon + dlon if lon > 0 else lon - dlon, lat] for lon, lat in corners]


# --------------------------------------------------------------------------- areas


def test_one_degree_cell_at_equator_matches_closed_form():
    ref = cell_area_km2(0.0, 0.0, 1.0, 1.0)
    assert ref == pytest.approx(12308.8, abs=1.0)
    got = g.area_km2(g.footprint_polygon(rect(0.0, 0.0, 1.0, 1.0)))
    assert got == pytest.approx(ref, rel=1e-3)
    # densified edges follow the parallels: much better than the required 0.1 %
    assert got == pytest.approx(ref, rel=1e-6)


@pytest.mark.parametrize("cell", [(10.0, 45.0, 12.0, 46.5), (-60.0, -70.0, -55.0, -64.0), (30.0, 84.0, 34.0, 85.0)])
def test_cell_areas_elsewhere_match_closed_form(cell):
    ref = cell_area_km2(*cell)
    assert g.area_km2(g.footprint_polygon(rect(*cell))) == pytest.approx(ref, rel=1e-6)


def test_window_polygon_area_and_orientation():
    w = Window(10, 512, 300)
    poly = g.window_polygon(w)
    assert isinstance(poly, Polygon) and is_ccw(poly)
    (lon0, lat1), (lon1, _), (_, lat0), _ = w.corners_lonlat()
    assert g.area_km2(poly) == pytest.approx(cell_area_km2(lon0, lat0, lon1, lat1), rel=1e-6)


def test_window_on_world_edges_stays_within_range():
    n = 1 << 5
    for w in (Window(5, 0, 4), Window(5, n - 4, 4)):
        poly = g.window_polygon(w)
        assert isinstance(poly, Polygon)
        lons = all_lons(poly)
        assert lons.min() >= -180.0 and lons.max() <= 180.0


# --------------------------------------------------------------------------- IoU


def test_iou_self_is_one_and_disjoint_is_zero():
    a = g.footprint_polygon(rect(10.0, 45.0, 10.3, 45.2))
    assert g.iou(a, a) == pytest.approx(1.0, abs=1e-9)
    assert g.intersection_km2(a, a) == pytest.approx(g.area_km2(a), rel=1e-6)
    far = g.footprint_polygon(rect(-100.0, -30.0, -99.7, -29.8))
    near = g.footprint_polygon(rect(10.31, 45.0, 10.6, 45.2))  # bounding boxes close, no overlap
    assert g.iou(a, far) == 0.0 and g.intersection_km2(a, far) == 0.0
    assert g.iou(a, near) == 0.0


def test_iou_half_shifted_squares_is_one_third():
    a = g.footprint_polygon(rect(0.0, 44.9, 0.1, 45.0))
    b = g.footprint_polygon(rect(0.05, 44.9, 0.15, 45.0))
    assert g.iou(a, b) == pytest.approx(1.0 / 3.0, rel=5e-3)
    assert g.iou(a, b) == pytest.approx(1.0 / 3.0, rel=1e-6)
    assert g.intersection_km2(a, b) == pytest.approx(g.area_km2(a) / 2.0, rel=1e-6)
    assert g.iou(a, b) == pytest.approx(g.iou(b, a), rel=1e-9)


# --------------------------------------------------------------------------- antimeridian


def test_crossing_footprint_is_split_ccw_and_within_range():
    poly = g.footprint_polygon(CROSSING)
    assert isinstance(poly, MultiPolygon) and len(poly.geoms) == 2
    assert is_ccw(poly) and poly.is_valid
    lons = all_lons(poly)
    assert lons.min() >= -180.0 and lons.max() <= 180.0
    east, west = sorted(poly.geoms, key=lambda p: -p.bounds[0])
    assert east.bounds[2] == 180.0 and west.bounds[0] == -180.0
    # the two parts meet at the same latitudes on either side of the seam
    seam_e = sorted({y for x, y in east.exterior.coords if x == 180.0})
    seam_w = sorted({y for x, y in west.exterior.coords if x == -180.0})
    assert len(seam_e) == 2 and seam_e == seam_w
    assert g.bbox(poly) == (179.2, 9.8, -179.4, 11.2)


def test_crossing_footprint_same_area_and_iou_as_moved_copy():
    a, b = g.footprint_polygon(CROSSING), g.footprint_polygon(PARTNER)
    ma, mb = g.footprint_polygon(moved(CROSSING)), g.footprint_polygon(moved(PARTNER))
    assert isinstance(ma, Polygon) and isinstance(mb, Polygon)
    assert g.area_km2(a) == pytest.approx(g.area_km2(ma), rel=1e-6)
    assert g.intersection_km2(a, b) == pytest.approx(g.intersection_km2(ma, mb), rel=1e-6)
    iou_moved = g.iou(ma, mb)
    assert 0.05 < iou_moved < 0.95
    assert g.iou(a, b) == pytest.approx(iou_moved, rel=1e-6)
    assert g.iou(b, a) == pytest.approx(iou_moved, rel=1e-6)
    assert g.iou(a, a) == pytest.approx(1.0, abs=1e-9)


def test_crossing_footprint_same_area_as_mirror_image():
    # mirrored about the meridian 180 -> lons negate; a mirror image has the same area
    a = g.footprint_polygon(CROSSING)
    mirror = g.footprint_polygon([[-lon, lat] for lon, lat in CROSSING])
    assert isinstance(mirror, MultiPolygon) and is_ccw(mirror)
    assert g.area_km2(a) == pytest.approx(g.area_km2(mirror), rel=1e-6)


def test_to_crs84_and_unwrap_round_trip():
    unwrapped = Polygon([(179.5, 10.0), (180.5, 10.0), (180.5, 11.0), (179.5, 11.0)])
    split = g.to_crs84(unwrapped)
    assert isinstance(split, MultiPolygon) and is_ccw(split)
    back = g.unwrap(split)
    assert isinstance(back, Polygon)
    assert back.normalize().equals_exact(unwrapped.normalize(), 0.0)
    assert g.lon_extent(split) == (179.5, 180.5)
    assert g.center_lonlat(split) == pytest.approx((180.0 - 360.0, 10.5))
    # a polygon given entirely beyond +180 is moved back, not split
    far = g.to_crs84(Polygon([(190.0, 0.0), (191.0, 0.0), (191.0, 1.0)]))
    assert isinstance(far, Polygon) and far.bounds[0] == pytest.approx(-170.0)


# --------------------------------------------------------------------------- orientation


def test_clockwise_corner_order_gives_ccw_polygon():
    corners = rect(5.0, 5.0, 5.4, 5.3)  # north-up photo order: clockwise in lon/lat
    assert not shapely.is_ccw(shapely.LinearRing(corners))
    mirrored = [corners[1], corners[0], corners[3], corners[2]]  # mirrored photo: counter-clockwise
    p, q = g.footprint_polygon(corners), g.footprint_polygon(mirrored)
    assert is_ccw(p) and is_ccw(q)
    assert p.normalize().equals_exact(q.normalize(), 0.0)
    # a rotated (45 deg) clockwise quadrilateral too
    diamond = [[0.0, 1.0], [1.0, 0.0], [0.0, -1.0], [-1.0, 0.0]]
    assert is_ccw(g.footprint_polygon(diamond))


def test_corners_columns_keep_photo_order_and_wrap_lons():
    cols = g.corners_columns([[180.0, 1.0], [181.0, 2.0], [-190.0, 3.0], [179.9, 4.0]])
    assert list(cols) == ["tl_lat", "tl_lon", "tr_lat", "tr_lon", "br_lat", "br_lon", "bl_lat", "bl_lon"]
    assert cols == {
        "tl_lat": 1.0,
        "tl_lon": -180.0,
        "tr_lat": 2.0,
        "tr_lon": -179.0,
        "br_lat": 3.0,
        "br_lon": 170.0,
        "bl_lat": 4.0,
        "bl_lon": 179.9,
    }
    assert all(type(v) is float for v in cols.values())


# --------------------------------------------------------------------------- near the pole


def test_near_pole_footprint():
    corners = [[30.0, 84.7], [33.0, 84.95], [34.0, 84.6], [31.0, 84.4]]
    poly = g.footprint_polygon(corners)
    assert is_ccw(poly)
    area = g.area_km2(poly)
    assert 0.0 < area < cell_area_km2(30.0, 84.4, 34.0, 84.95)
    assert g.iou(poly, poly) == pytest.approx(1.0, abs=1e-9)
    assert g.intersection_km2(poly, poly) == pytest.approx(area, rel=1e-6)
    # a half-shifted copy in longitude: equal areas, intersection known by symmetry
    cell = g.footprint_polygon(rect(30.0, 84.5, 32.0, 84.9))
    shifted = g.footprint_polygon(rect(31.0, 84.5, 33.0, 84.9))
    assert g.iou(cell, shifted) == pytest.approx(1.0 / 3.0, rel=1e-6)


# --------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "corners, match",
    [
        ([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]], "shape"),
        ([[0.0, 0.0, 0.0]] * 4, "shape"),
        ([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, float("nan")]], "NaN"),
        ([[0.0, 0.0], [1.0, 0.0], [1.0, 95.0], [0.0, 1.0]], r"outside \[-90, 90\]"),
        ([[0.0, 0.0], [1.0, 1.0], [1.0, 0.0], [0.0, 1.0]], "simple quadrilateral"),  # bow-tie
        ([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0], [1.0, 1.0]], "simple quadrilateral"),  # degenerate
        ([[0.0, 80.0], [120.0, 80.0], [-120.0, 80.0], [0.0, 85.0]], "pole"),
        ("not corners", "(4, 2)"),
    ],
)
def test_bad_corners_raise_value_error(corners, match):
    with pytest.raises(ValueError, match=match):
        g.footprint_polygon(corners)


def test_bad_geometries_raise_value_error():
    with pytest.raises(ValueError, match="swapped"):
        g.area_km2(Polygon([(0.0, 0.0), (1.0, 100.0), (0.0, 100.0)]))  # (lat, lon) by mistake
    with pytest.raises(ValueError, match="Polygon or MultiPolygon"):
        g.area_km2(shapely.Point(0.0, 0.0))
    with pytest.raises(ValueError, match="shape"):
        g.corners_columns([[0.0, 0.0]])
    big = shapely.box(-100.0, 0.0, 100.0, 10.0)  # wider than 180 deg
    with pytest.raises(ValueError, match="too large"):
        g.iou(big, big)


def test_box_area_closed_form_matches_geodesic_area_of_windows():
    wins = [Window(8, 130, 90), Window(12, 1000, 1500), Window(10, 2, 0)]
    for w in wins:
        (west, north), _, (east, south), _ = w.corners_lonlat()
        got = g.box_area_km2(west, south, east, north)
        assert got == pytest.approx(g.area_km2(g.window_polygon(w)), rel=1e-6)
    vec = g.box_area_km2(np.array([0.0, 10.0]), np.array([0.0, 45.0]), np.array([1.0, 12.0]), np.array([1.0, 46.5]))
    np.testing.assert_allclose(vec, [cell_area_km2(0, 0, 1, 1), cell_area_km2(10, 45, 12, 46.5)], rtol=1e-12)
