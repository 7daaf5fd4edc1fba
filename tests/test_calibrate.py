"""The decision threshold: logistic regression of correctness on inliers, and `run calibrate`."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from manifests import FOOTPRINTS, read_manifest, write_manifest
from pipeline.footprint.calibration import PACKAGED, Calibration, calibrate, fit_logistic, threshold_for
from pipeline.geometry.geodesy import corners_columns, footprint_polygon


def test_logistic_fit_recovers_a_known_model():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 80, 20000)
    a, b = -10.0, 0.5
    y = rng.random(x.size) < 1 / (1 + np.exp(-(a + b * x)))
    fa, fb = fit_logistic(x, y.astype(float), l2=0.0)
    assert fa == pytest.approx(a, abs=0.6) and fb == pytest.approx(b, abs=0.03)
    # P = 0.999 at (logit(0.999) - a) / b = 33.8 inliers
    assert threshold_for(a, b, 0.999) == 34
    assert threshold_for(a, -0.1, 0.999) is None


def test_separated_data_gives_a_finite_conservative_threshold():
    wrong = np.array([0, 3, 5, 8, 9, 12, 14, 17])
    right = np.array([25, 30, 41, 60, 77, 90, 120, 200, 300])
    cal = calibrate(np.r_[wrong, right], np.r_[np.zeros(8, bool), np.ones(9, bool)])
    assert np.isfinite(cal.slope) and cal.slope > 0
    assert cal.min_inliers > wrong.max()  # never accepts a known wrong footprint
    assert cal.probability(cal.min_inliers) >= 0.999 > cal.probability(cal.min_inliers - 1)
    assert cal.precision_measured == 1.0 and cal.footprints == 17 and cal.correct == 9
    with pytest.raises(ValueError, match="both correct and wrong"):
        calibrate(right, np.ones(9, bool))


def test_packaged_calibration_loads():
    cal = Calibration.load(PACKAGED)
    assert cal.extractor == "aliked" and cal.min_inliers > 0 and cal.precision == 0.999


def test_calibrate_stage_fits_footprints_against_truth(tiny, tmp_path):
    """`run calibrate --footprints F`: right footprints (the truth's) with many inliers, wrong ones (shifted
    by a footprint's width, or any footprint of a negative) with few: the threshold falls between them."""
    from pipeline.cli import main

    truth = read_manifest(tiny / "truth.parquet", "truth", geometry=False)
    rows = []
    for k, t in enumerate(truth.itertuples()):
        if not isinstance(t.tl_lat, float) or math.isnan(t.tl_lat):
            continue  # limb photos have no footprint to pretend with
        corners = np.array([[t.tl_lon, t.tl_lat], [t.tr_lon, t.tr_lat], [t.br_lon, t.br_lat], [t.bl_lon, t.bl_lat]])
        right = bool(t.localizable) and k % 3 != 0
        if not right:
            corners = corners + [corners[:, 0].max() - corners[:, 0].min(), 0.0]
        poly = footprint_polygon(corners)
        rows.append({"photo_id": t.photo_id, "status": "localized", "inliers": 60 + 7 * k if right else 4 + k,
                     "geometry": poly, **corners_columns(corners)})
    write_manifest(pd.DataFrame(rows), tmp_path / "fp.parquet", FOOTPRINTS)
    out = tmp_path / "cal.json"
    assert main(["run", "calibrate", "--workdir", str(tiny), "--footprints", str(tmp_path / "fp.parquet"),
                 "--out", str(out), "-q"]) == 0
    cal = json.loads(out.read_text())
    wrong_max = max(r["inliers"] for r in rows if r["inliers"] < 60)
    assert cal["min_inliers"] > wrong_max and cal["precision_measured"] == 1.0
    assert cal["footprints"] == len(rows) and 0 < cal["correct"] < len(rows)
    # with 9 footprints the fit is conservative: it asks for more inliers than separate them
    assert cal["min_inliers"] > 60
