"""The decision threshold: logistic regression of correctness on inliers, and `run calibrate`."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from manifests import FOOTPRINTS, read_manifest, write_manifest
from pipeline.footprint.calibration import (
    MIN_EXAMPLES,
    PACKAGED,
    Calibration,
    calibrate,
    fit_logistic,
    threshold_for,
)
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
    wrong = np.array([0, 2, 3, 5, 8, 9, 11, 12, 14, 17])
    right = np.array([25, 30, 41, 50, 60, 77, 90, 120, 200, 300])
    cal = calibrate(np.r_[wrong, right], np.r_[np.zeros(10, bool), np.ones(10, bool)])
    assert np.isfinite(cal.slope) and cal.slope > 0
    assert cal.min_inliers > wrong.max()  # never accepts a known wrong footprint
    assert cal.probability(cal.min_inliers) >= 0.999 > cal.probability(cal.min_inliers - 1)
    assert cal.precision_measured == 1.0 and cal.footprints == 20 and cal.correct == 10


def test_too_few_correct_or_wrong_footprints_are_refused():
    """One right and one wrong footprint gave a threshold of 134: at least MIN_EXAMPLES of each are needed."""
    wrong, right = np.arange(10), np.arange(30, 40)
    cases = ((right, np.ones(10, bool)), (np.r_[wrong[:9], right], np.arange(19) >= 9),
             (np.r_[wrong, right[:9]], np.arange(19) >= 10), (np.array([7, 60]), np.array([False, True])))
    for inliers, correct in cases:
        with pytest.raises(ValueError, match=f"at least {MIN_EXAMPLES} correct and {MIN_EXAMPLES} wrong"):
            calibrate(inliers, correct)


def test_a_calibration_file_is_finished_before_it_replaces_the_old_one(tmp_path):
    from pipeline.footprint.calibration import Calibration, calibrate

    rng = np.random.default_rng(0)
    inliers = np.r_[rng.integers(5, 30, 40), rng.integers(40, 200, 40)]
    cal = calibrate(inliers, np.r_[np.zeros(40, bool), np.ones(40, bool)])
    path = tmp_path / "cal.json"
    path.write_text("old")
    seen = []
    cal.save(path, before_replace=lambda tmp: seen.append((Calibration.load(tmp).min_inliers, path.read_text())))
    assert seen == [(cal.min_inliers, "old")] and Calibration.load(path) == cal


def test_packaged_calibration_loads():
    cal = Calibration.load(PACKAGED)
    assert cal.extractor == "aliked" and cal.min_inliers > 0 and cal.precision == 0.999


def _footprints_and_truth(tiny, folder, copies: int = 3) -> tuple[str, str, list[dict]]:
    """A footprints manifest and a truth CSV of ``copies`` copies of the tiny sample's photos (new photo_id each):
    right footprints (the truth's) with many inliers, wrong ones (shifted by a footprint's width, or any footprint
    of a negative) with few; 4 right and 5 wrong per copy."""
    truth = read_manifest(tiny / "truth.parquet", "truth", geometry=False)
    truth = truth[truth.tl_lat.notna()]  # limb photos have no footprint to pretend with
    rows, truth_rows = [], []
    for copy in range(copies):
        for k, t in enumerate(truth.itertuples()):
            pid = f"{t.photo_id}-{copy}"
            truth_rows.append({**t._asdict(), "photo_id": pid})
            corners = np.array([[t.tl_lon, t.tl_lat], [t.tr_lon, t.tr_lat], [t.br_lon, t.br_lat],
                                [t.bl_lon, t.bl_lat]])
            right = bool(t.localizable) and k % 3 != 0
            if not right:
                corners = corners + [corners[:, 0].max() - corners[:, 0].min(), 0.0]
            n = len(rows)
            rows.append({"photo_id": pid, "status": "localized", "inliers": 60 + 7 * n if right else 4 + n,
                         "matcher": "aliked+lightglue", "geometry": footprint_polygon(corners),
                         **corners_columns(corners)})
    write_manifest(pd.DataFrame(rows), folder / "fp.parquet", FOOTPRINTS)
    pd.DataFrame(truth_rows).drop(columns=["Index", "geometry"]).to_csv(folder / "truth.csv", index=False)
    return str(folder / "fp.parquet"), str(folder / "truth.csv"), rows


def test_calibrate_stage_fits_footprints_against_truth(tiny, tmp_path):
    """`run calibrate --footprints F --truth T`: the threshold falls between the wrong and the right footprints."""
    from pipeline.cli import main

    fp, truth, rows = _footprints_and_truth(tiny, tmp_path)
    (tmp_path / "fp.parquet.config.toml").write_text("[footprints]\nmin_inliers = 0\n")  # made for calibration
    out = tmp_path / "cal.json"
    assert main(["run", "calibrate", "--workdir", str(tiny), "--footprints", fp, "--truth", truth,
                 "--out", str(out), "-q"]) == 0
    cal = json.loads(out.read_text())
    wrong_max = max(r["inliers"] for r in rows if r["inliers"] < 60)
    assert cal["min_inliers"] > wrong_max and cal["precision_measured"] == 1.0
    assert cal["footprints"] == len(rows) and cal["correct"] == 12
    # with 27 footprints the fit is conservative: it asks for more inliers than separate them
    assert cal["min_inliers"] > 60
    # the config is saved as .pending before the calibration replaces the old one, then kept as the config
    cfg = tmp_path / "cal.json.config.toml"
    assert cfg.is_file() and not (tmp_path / "cal.json.config.toml.pending").exists()
    assert "[output]" in cfg.read_text()


@pytest.mark.parametrize("case, message", [
    ("too few", "at least 10 correct and 10 wrong footprints, got 4 correct and 5 wrong"),
    ("min_inliers", "made with min_inliers = 25 (says fp.parquet.config.toml)"),
    ("extractor", "matched with aliked+lightglue (its matcher column), not disk+lightglue (--extractor disk); "
                  "pass --extractor aliked"),
    ("iou 2", "--iou must be in (0, 1]"), ("iou 0", "--iou must be in (0, 1]"), ("iou -1", "--iou must be in (0, 1]"),
    ("other truth", "no photo_id in common between FOOTPRINTS"),
    ("empty truth", "truth.csv: not a readable CSV table"),
])
def test_calibrate_stage_refuses_bad_inputs(tiny, tmp_path, capsys, case, message):
    """Inputs that cannot give a meaningful threshold end in one line naming the file or option, not a threshold
    (134 from two photos) or a traceback."""
    from pipeline.cli import main

    fp, truth, _ = _footprints_and_truth(tiny, tmp_path, copies=1 if case == "too few" else 3)
    extra = {"extractor": ["--extractor", "disk"], "iou 2": ["--iou", "2"], "iou 0": ["--iou", "0"],
             "iou -1": ["--iou", "-1"]}.get(case, [])
    if case == "min_inliers":  # footprints of `run footprints` with its default threshold
        (tmp_path / "fp.parquet.config.toml").write_text("[footprints]\nmin_inliers = 25\n")
    if case == "other truth":
        t = pd.read_csv(truth)
        t.assign(photo_id="ISS051-E-" + t.index.astype(str)).to_csv(truth, index=False)
    if case == "empty truth":
        open(truth, "w").close()
    assert main(["run", "calibrate", "--workdir", str(tiny), "--footprints", fp, "--truth", truth,
                 "--out", str(tmp_path / "cal.json"), "-q", *extra]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "cal.json").exists()


def test_a_truth_csv_is_read_as_meant_or_refused_by_row_and_column(tmp_path):
    """``bool("no")`` is True: a localizable column of yes/no (or a blank) scored negatives against their corners;
    a blank corner of a localizable row was a traceback; ids of digits became integers and matched nothing."""
    from manifests import ManifestError
    from stages.calibrate import read_truth

    head = "photo_id,localizable,tl_lat,tl_lon,tr_lat,tr_lon,br_lat,br_lon,bl_lat,bl_lon\n"
    good = tmp_path / "good.csv"
    good.write_text(head + "1001,yes,1,0,1,1,0,1,0,0\n1002,no,,,,,,,,\n1003,FALSE,,,,,,,,\n1004,1,1,0,1,1,0,1,0,0\n")
    t = read_truth(good)
    assert t.index.tolist() == ["1001", "1002", "1003", "1004"] and t["localizable"].tolist() == [True, False, False, True]
    bad = tmp_path / "bad.csv"
    bad.write_text(head + "P1,maybe,1,0,1,1,0,1,0,0\nP2,,,,,,,,,\nP3,True,1,0,1,n/a,0,1,0,0\n")
    with pytest.raises(ManifestError) as e:
        read_truth(bad)
    msg = str(e.value)
    assert "row 1 (line 2) [photo_id P1], column 'localizable'" in msg and "got 'maybe'" in msg
    assert "[photo_id P2], column 'localizable'" in msg and "an empty cell" in msg
    assert "[photo_id P3], column 'tr_lon': a localizable photo needs its corner as a number" in msg


def test_an_extractor_without_lightglue_weights_is_refused_before_any_work():
    from pipeline.footprint.search import validate_conf

    with pytest.raises(ValueError, match="extractor = 'aliked-t16': choose from aliked, disk, superpoint, sift"):
        validate_conf({"extractor": "aliked-t16"})


def test_footprints_cut_by_a_threshold_are_refused_without_their_config(tmp_path):
    """A copy without its config: the rows the threshold turned down say so; a manifest with none is what
    min_inliers = 0 would have made, and is accepted."""
    from stages.base import StageError
    from stages.calibrate import check_footprints

    df = pd.DataFrame({"photo_id": ["A", "B"], "status": "not_localized", "matcher": "aliked+lightglue",
                       "reason": ["too few inliers (best candidate 11, need 15)", None]})
    check_footprints(tmp_path / "fp.parquet", df, "aliked")
    df.loc[1, "reason"] = "too few inliers after refinement (19 < 25)"
    with pytest.raises(StageError, match=r"made with min_inliers = 25 \(say its rows' reasons\)"):
        check_footprints(tmp_path / "fp.parquet", df, "aliked")
