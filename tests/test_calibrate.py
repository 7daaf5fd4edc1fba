"""The footprint decision: a logistic model of the evidence, its intervals, the packaged calibration, and
`run calibrate`."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest

from manifests import DECISIONS, read_manifest, write_manifest
from pipeline.footprint.calibration import (
    MIN_EXAMPLES,
    PACKAGED,
    Calibration,
    DecisionModel,
    SourceReport,
    binomial_interval,
    fit_logistic,
    fit_model,
    operating_point,
)
from pipeline.footprint.evidence import FEATURES, Evidence
from pipeline.geometry.geodesy import corners_columns


def _evidence(inliers, ratio=0.5, coverage=0.5) -> np.ndarray:
    """Evidence vectors (N, len(FEATURES)) with the given inliers, inlier ratios and coverages, the rest NaN."""
    inliers = np.atleast_1d(np.asarray(inliers, np.float64))
    x = np.full((len(inliers), len(FEATURES)), np.nan)
    x[:, FEATURES.index("inliers")] = inliers
    x[:, FEATURES.index("inlier_ratio")] = ratio
    x[:, FEATURES.index("coverage")] = coverage
    return x


def test_logistic_fit_recovers_a_known_model():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20000, 2))
    a, b = -1.0, np.array([2.0, -0.5])
    y = rng.random(len(x)) < 1 / (1 + np.exp(-(a + x @ b)))
    fa, fb = fit_logistic(x, y.astype(float), l2=0.0)
    assert fa == pytest.approx(a, abs=0.06) and fb == pytest.approx(b, abs=0.06)


def test_the_model_is_its_formula_with_missing_evidence_neutral():
    """P = 1 / (1 + exp(-(a + sum w_k z_k))), z_k = (t(x_k) - mean_k) / scale_k, log1p for inlier counts; a NaN
    feature contributes nothing."""
    m = DecisionModel(("inliers", "coverage", "area_ratio"), (2.0, 1.0, -0.5), 0.3, (3.0, 0.4, 0.0), (1.5, 0.2, 0.5))
    x = np.full((2, len(FEATURES)), np.nan)
    x[:, FEATURES.index("inliers")] = [100, 10]
    x[:, FEATURES.index("coverage")] = [0.6, 0.1]
    x[0, FEATURES.index("area_ratio")] = 0.25
    z = 0.3 + 2.0 * (np.log1p([100, 10]) - 3.0) / 1.5 + 1.0 * (np.array([0.6, 0.1]) - 0.4) / 0.2
    z[0] += -0.5 * (0.25 - 0.0) / 0.5
    np.testing.assert_allclose(m.probabilities(x), 1 / (1 + np.exp(-z)), rtol=1e-12)
    ev = Evidence(100, 0.5, 0.6, 40, 0.01, area_ratio=0.25)
    assert m.probability(ev) == pytest.approx(1 / (1 + np.exp(-z[0])), rel=1e-12)
    assert DecisionModel.from_dict(json.loads(json.dumps(m.to_dict()))) == m


def test_separated_data_put_the_operating_point_in_the_middle_of_the_gap():
    """Wrong decisions at 0-17 inliers, right ones at 25-300: finite weights, more inliers never less likely, and
    the operating point halfway in log-odds between the strongest wrong and the weakest right decision."""
    rng = np.random.default_rng(0)
    wrong = np.r_[0, 17, rng.integers(0, 18, 498)]
    right = np.r_[25, 300, rng.integers(25, 301, 498)]
    m = fit_model(_evidence(np.r_[wrong, right]), np.r_[np.zeros(500, bool), np.ones(500, bool)], ["inliers"])
    assert np.isfinite(m.weights).all() and m.weights[0] > 0
    p = m.probabilities(_evidence(np.arange(0, 400)))
    assert np.all(np.diff(p) > 0)
    logit = np.log(p / (1 - p))
    assert np.log(m.operating_point / (1 - m.operating_point)) == pytest.approx((logit[17] + logit[25]) / 2)
    assert p[17] < m.operating_point < p[25]


def test_overlapping_data_put_the_operating_point_at_the_target_precision():
    """Where wrong and right decisions overlap, the operating point is the lowest probability whose accepted fitted
    decisions reach the target precision."""
    p = np.array([0.99, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5])
    right = np.array([True, True, False, True, True, False, True])
    assert operating_point(p, right, 0.75) == 0.7  # 4 right of the 5 from 0.7: 0.8; from 0.5: 5 of 7
    assert operating_point(p, right, 0.99) == 0.95
    assert operating_point(np.array([0.2, 0.9]), np.array([False, True]), 0.999) == pytest.approx(0.6, abs=1e-9)


def test_too_few_right_or_wrong_decisions_are_refused():
    wrong, right = np.arange(10), np.arange(30, 40)
    cases = (
        (right, np.ones(10, bool)),
        (np.r_[wrong[:9], right], np.arange(19) >= 9),
        (np.r_[wrong, right[:9]], np.arange(19) >= 10),
    )
    for inliers, ok in cases:
        with pytest.raises(ValueError, match=f"at least {MIN_EXAMPLES} right and {MIN_EXAMPLES} wrong"):
            fit_model(_evidence(inliers), ok, ["inliers"])


@pytest.mark.parametrize(
    "k, n, low, high",
    [
        (0, 10, 0.0, 0.30849),  # the rule of three's exact form: 1 - 0.025 ** (1 / 10)
        (10, 10, 0.69150, 1.0),
        (5, 10, 0.18709, 0.81291),
        (0, 3000, 0.0, 0.0012289),
    ],
)
def test_clopper_pearson_intervals(k, n, low, high):
    lo, hi = binomial_interval(k, n)
    assert lo == pytest.approx(low, abs=2e-5) and hi == pytest.approx(high, abs=2e-5)


def test_a_source_report_counts_at_the_operating_point():
    p = np.array([0.9999, 0.99, 0.2, 0.9995, 0.5])
    right = np.array([True, True, False, False, False])
    r = SourceReport.of("s", "fit", 5, p, right, 0.999)
    assert (r.right, r.wrong, r.accepted_right, r.accepted_wrong) == (2, 3, 1, 1)
    assert r.precision[0] == 0.5 and r.recall[0] == 0.5 and r.strongest_wrong == 0.9995


def test_a_calibration_file_is_finished_before_it_replaces_the_old_one(tmp_path):
    m = DecisionModel(("inliers",), (3.0,), 1.0, (3.0,), (1.0,))
    cal = Calibration(m, "aliked", 0.5, {"refine_px": 640}, [])
    path = tmp_path / "cal.json"
    path.write_text("old")
    seen = []
    cal.save(path, before_replace=lambda tmp: seen.append((Calibration.load(tmp).model, path.read_text())))
    assert seen == [(m, "old")] and Calibration.load(path).model == m


def test_an_old_calibration_file_is_refused_with_what_to_do(tmp_path):
    path = tmp_path / "cal.json"
    path.write_text(json.dumps({"intercept": -13.7, "slope": 0.85, "min_inliers": 25, "extractor": "aliked"}))
    with pytest.raises(ValueError, match="calibration of an older search.*run calibrate"):
        Calibration.load(path)


def test_the_packaged_calibration_follows_from_its_fit():
    """The packaged model is what fitting its own decisions gives (shipped beside it), and its reports are those
    decisions' counts at its operating point."""
    from pipeline.footprint.calibration import PACKAGED_DECISIONS, weighed

    cal = Calibration.load(PACKAGED)
    assert cal.extractor == "aliked" and 0.0 < cal.operating_point < 1.0
    d = pd.read_parquet(PACKAGED_DECISIONS)
    fit = weighed(d[d["role"] == "fit"])
    again = fit_model(fit[list(FEATURES)].to_numpy(np.float64), fit["right"].to_numpy(bool), cal.model.features)
    np.testing.assert_allclose(again.weights, cal.model.weights, rtol=1e-6)
    assert again.intercept == pytest.approx(cal.model.intercept, rel=1e-6)
    assert again.operating_point == pytest.approx(cal.operating_point, rel=1e-6)
    assert {"fit"} == {r.role for r in cal.sources if "real-sample" in r.name}  # synthetic and real truth together
    for report in cal.sources:
        w = weighed(d[d["source"] == report.name])
        p = cal.model.probabilities(w[list(FEATURES)].to_numpy(np.float64))
        again = SourceReport.of(
            report.name, report.role, report.photos, p, w["right"].to_numpy(bool), cal.operating_point
        )
        assert json.dumps(asdict(again)) == json.dumps(asdict(report))  # NaN where nothing was accepted
    assert sum(r.wrong for r in cal.sources if r.role == "fit") >= 100  # not a handful of photos


def _resolve(tmp_path, **conf):
    from stages import get_stage

    stage = get_stage("footprints")
    settings = stage.settings_class.from_layers(
        ({"queries": str(tmp_path / "q.csv"), "tiles": str(tmp_path), **conf}, "test")
    )
    return stage.resolve(settings, tmp_path)


def test_a_workspace_calibration_wins_over_the_packaged_one(tmp_path):
    assert _resolve(tmp_path).calibration == "packaged"
    m = DecisionModel(("inliers",), (3.0,), 1.0, (3.0,), (1.0,))
    Calibration(m, "aliked", 0.5).save(tmp_path / "calibration.json")
    conf = _resolve(tmp_path)
    assert conf.calibration == str((tmp_path / "calibration.json").resolve()) and conf.min_inliers == 0
    assert _resolve(tmp_path, calibration="none").calibration is None
    assert _resolve(tmp_path, calibration="packaged").calibration == "packaged"
    assert _resolve(tmp_path, calibration="none").search_settings().calibration is None


def test_an_extractor_without_a_calibration_is_warned_about_and_decides_on_inliers(tmp_path, caplog):
    from pipeline.footprint.settings import NO_MODEL_MIN_INLIERS
    from stages.base import StageError

    with caplog.at_level(logging.WARNING):
        conf = _resolve(tmp_path, extractor="disk")
    assert conf.calibration is None and conf.min_inliers == NO_MODEL_MIN_INLIERS
    assert "no calibration for disk features" in caplog.text and "run calibrate --extractor disk" in caplog.text
    Calibration(DecisionModel(("inliers",), (3.0,), 1.0, (3.0,), (1.0,)), "aliked", 0.5).save(tmp_path / "c.json")
    with pytest.raises(StageError, match="fitted for aliked features, this run uses disk"):
        _resolve(tmp_path, extractor="disk", calibration=str(tmp_path / "c.json"))


def _decisions_and_truth(tiny, folder, copies: int = 3) -> tuple[str, str]:
    """A decisions manifest and a truth CSV of ``copies`` copies of the tiny sample's photos (new photo_id each):
    right decisions (the truth's footprint) with many inliers, wrong ones (shifted by a footprint's width, or any
    footprint of a negative) with few; 4 right and 5 wrong per copy."""
    truth = read_manifest(tiny / "truth.parquet", "truth", geometry=False)
    truth = truth[truth.tl_lat.notna()]  # limb photos have no footprint to pretend with
    rows, truth_rows = [], []
    for copy in range(copies):
        for k, t in enumerate(truth.itertuples()):
            pid = f"{t.photo_id}-{copy}"
            truth_rows.append({**t._asdict(), "photo_id": pid})
            corners = np.array([[t.tl_lon, t.tl_lat], [t.tr_lon, t.tr_lat], [t.br_lon, t.br_lat], [t.bl_lon, t.bl_lat]])
            right = bool(t.localizable) and k % 3 != 0
            if not right:
                corners = corners + [corners[:, 0].max() - corners[:, 0].min(), 0.0]
            n = len(rows)
            rows.append(
                {
                    "photo_id": pid,
                    "status": "localized",
                    "refined": True,
                    "survived": True,
                    "inliers": 60 + 7 * n if right else 4 + n,
                    "inlier_ratio": 0.6 if right else 0.1,
                    "coverage": 0.5,
                    "matcher": "aliked+lightglue",
                    **corners_columns(corners),
                }
            )
    write_manifest(pd.DataFrame(rows), folder / "decisions.parquet", DECISIONS)
    pd.DataFrame(truth_rows).drop(columns=["Index", "geometry"]).to_csv(folder / "truth.csv", index=False)
    return str(folder / "decisions.parquet"), str(folder / "truth.csv")


def test_calibrate_stage_fits_decisions_against_truth(tiny, tmp_path, capsys):
    """`run calibrate --truth T,decisions=D`: the model accepts the right decisions and no wrong one, and the
    report gives each source's counts with intervals."""
    from stages.cli import main

    d, truth = _decisions_and_truth(tiny, tmp_path)
    out = tmp_path / "cal.json"
    assert (
        main(
            [
                "run",
                "calibrate",
                "--workdir",
                str(tiny),
                "--truth",
                f"{truth},decisions={d}",
                "--features",
                "inliers,inlier_ratio",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    # 12 right and none of 15 wrong accepted: precision 1, but 12 decisions only bound it from 0.735 (95 %)
    assert "fitted on 27 decisions (12 right, 15 wrong)" in text and "precision 1.0000 [0.7354, 1.0000]" in text
    cal = Calibration.load(out)
    assert cal.model.features == ("inliers", "inlier_ratio")
    (r,) = cal.sources
    assert (r.right, r.wrong, r.accepted_wrong, r.role, r.photos) == (12, 15, 0, "fit", 27)
    assert r.accepted_right == 12 and r.recall[0] == 1.0
    # the config is saved as .pending before the calibration replaces the old one, then kept as the config
    cfg = tmp_path / "cal.json.config.toml"
    assert cfg.is_file() and not (tmp_path / "cal.json.config.toml.pending").exists()
    assert "[output]" in cfg.read_text()


@pytest.mark.parametrize(
    "case, message",
    [
        ("too few", "at least 10 right and 10 wrong decisions, got 4 right and 5 wrong"),
        ("iou 2", "iou = 2.0: must be in (0, 1]"),
        ("iou 0", "iou = 0.0: must be in (0, 1]"),
        ("feature", 'features = ["inliers", "luck"]: choose one or more of inliers'),
        ("other truth", "no photo_id in common between the decisions"),
        ("empty truth", "truth.csv: not a readable CSV table"),
        ("bad source", "'tile=x' is not queries=PATH, tiles=PATH or decisions=PATH"),
    ],
)
def test_calibrate_stage_refuses_bad_inputs(tiny, tmp_path, capsys, case, message):
    """Inputs that cannot give a meaningful model end in one line naming the file or option, not a model or a
    traceback."""
    from stages.cli import main

    d, truth = _decisions_and_truth(tiny, tmp_path, copies=1 if case == "too few" else 3)
    extra = {"iou 2": ["--iou", "2"], "iou 0": ["--iou", "0"], "feature": ["--features", "inliers,luck"]}.get(case, [])
    source = f"{truth},decisions={d}" + (",tile=x" if case == "bad source" else "")
    if case == "other truth":
        t = pd.read_csv(truth)
        t.assign(photo_id="ISS051-E-" + t.index.astype(str)).to_csv(truth, index=False)
    if case == "empty truth":
        open(truth, "w").close()
    assert (
        main(
            [
                "run",
                "calibrate",
                "--workdir",
                str(tiny),
                "--truth",
                source,
                "--out",
                str(tmp_path / "cal.json"),
                "-q",
                *extra,
            ]
        )
        == 1
    )
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
    assert t.index.tolist() == ["1001", "1002", "1003", "1004"] and t["localizable"].tolist() == [
        True,
        False,
        False,
        True,
    ]
    bad = tmp_path / "bad.csv"
    bad.write_text(head + "P1,maybe,1,0,1,1,0,1,0,0\nP2,,,,,,,,,\nP3,True,1,0,1,n/a,0,1,0,0\n")
    with pytest.raises(ManifestError) as e:
        read_truth(bad)
    msg = str(e.value)
    assert "row 1 (line 2) [photo_id P1], column 'localizable'" in msg and "got 'maybe'" in msg
    assert "[photo_id P2], column 'localizable'" in msg and "an empty cell" in msg
    assert "[photo_id P3], column 'tr_lon': a localizable photo needs its corner as a number" in msg


def test_an_extractor_without_lightglue_weights_is_refused_before_any_work():
    from pipeline.footprint.settings import SearchSettings

    with pytest.raises(
        ValueError, match='extractor.* = "aliked-t16": choose from "aliked", "disk", "superpoint", "sift"'
    ):
        SearchSettings(extractor="aliked-t16")
