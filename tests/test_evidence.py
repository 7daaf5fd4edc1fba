"""The decision's evidence: coverage, the footprint's perspective and aspect, the catalogue's predictions."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from manifests import read_manifest
from pipeline.footprint.evidence import (
    Catalogue,
    catalogue_terms,
    ground_aspect,
    hull_coverage,
    keystone_ratio,
    off_nadir_deg,
    predicted_footprint,
)


def test_hull_coverage_is_the_inliers_hull_over_the_photo():
    square = np.array([[10, 10], [60, 10], [60, 60], [10, 60], [30, 30]], float)  # a 50 x 50 hull, one inside
    assert hull_coverage(square, 100, 100) == pytest.approx(0.25)
    assert hull_coverage(square[:2], 100, 100) == 0.0  # fewer than three points: no area


def test_keystone_and_aspect_of_a_trapezoid():
    """A footprint 0.2 deg wide at the top (far) edge and 0.1 deg at the bottom, 0.1 deg tall, on the equator."""
    c = np.array([[-0.1, 0.1], [0.1, 0.1], [0.05, 0.0], [-0.05, 0.0]])  # tl, tr, br, bl (lon, lat)
    assert keystone_ratio(c) == pytest.approx(2.0, rel=1e-3)
    lon_km, lat_km = 111.3195, 110.5743  # a degree of longitude and of latitude at the equator (WGS84)
    side = math.hypot(0.05 * lon_km, 0.1 * lat_km)
    assert ground_aspect(c) == pytest.approx(0.3 * lon_km / (2 * side), rel=1e-4)


def test_off_nadir_angle_of_a_label_one_central_angle_away():
    """From 410 km, a point 407.7 km away on the ground (a central angle of 0.0640 rad) is seen 43.9 deg off nadir:
    atan(R sin g / (R + h - R cos g))."""
    lat = math.degrees(410e3 / 6371008.8)  # 407.7 km along the WGS84 meridian from the equator
    g = 407.74e3 / 6371008.8
    expected = math.degrees(math.atan2(math.sin(g), 1 + 410e3 / 6371008.8 - math.cos(g)))
    assert off_nadir_deg(0.0, lat, 0.0, 0.0) == pytest.approx(expected, abs=0.02)
    assert off_nadir_deg(0.0, 0.0, 0.0, 0.0) == 0.0


def test_the_catalogue_predicts_the_sample_footprints(tiny):
    """The sample's photos are the same camera model: their true footprints agree with what their (rounded)
    catalogue predicts, in area and perspective, and no focal length means no prediction."""
    q = read_manifest(tiny / "queries.parquet", "queries").set_index("photo_id")
    truth = read_manifest(tiny / "truth.parquet", "truth", geometry=False)
    seen = 0
    for t in truth[truth["tl_lat"].notna()].itertuples():
        r = q.loc[t.photo_id]
        corners = np.array([[t.tl_lon, t.tl_lat], [t.tr_lon, t.tr_lat], [t.br_lon, t.br_lat], [t.bl_lon, t.bl_lat]])
        cat = Catalogue.from_row(r.to_dict())
        area, keystone, aspect = catalogue_terms(corners, t.target_lon, t.target_lat, cat, t.width, t.height)
        assert abs(area) < 0.15, (t.photo_id, area)  # altitude 400-420 km against 410, the lens rounded
        assert abs(keystone) < 0.1, (t.photo_id, keystone)
        seen += 1
    assert seen >= 5
    none = catalogue_terms(corners, t.target_lon, t.target_lat, Catalogue(), t.width, t.height)
    assert math.isnan(none[0]) and math.isnan(none[1]) and math.isfinite(none[2])
    assert predicted_footprint(0.0, 0.0, Catalogue(focal_mm=50.0, tilt_deg=80.0)) is None  # past the horizon


def test_a_catalogue_row_with_gaps_reads_as_none():
    row = pd.Series({"focal_length_mm": 400.0, "tilt_deg": float("nan"), "nadir_lat": None}).to_dict()
    assert Catalogue.from_row(row) == Catalogue(focal_mm=400.0)
