"""`run footprints` on a real local Dask cluster: bad photos, kill and resume, inspect, the real sample.

The stage tests use a cheap search (one zoom, few keypoints, one refinement) on the tiny sample:
what they check (every photo accounted for, atomic parts, resume) does not depend on accuracy.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from manifests import read_manifest, read_queries
from pipeline.geometry.geodesy import footprint_polygon, iou
from stages.cli import main

CHEAP = """[footprints]
zooms = [11]
max_keypoints = 256
photo_px = 256
window_px = 512
refine_iterations = 1
refine_px = 256
batch_size = 1
workers = 1
calibration = "none"
min_inliers = 20
"""
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def stage_inputs(tiny, tmp_path_factory):
    """Queries: 4 tiny-sample photos and 5 bad ones (corrupt, missing, 1x1, 20000x20000, latitude 89)."""
    d = tmp_path_factory.mktemp("fpstage")
    q = read_queries(tiny / "queries.parquet")[0].head(4)  # image paths made absolute
    rows = q[["photo_id", "image_path", "center_lat", "center_lon", "focal_length_mm"]].to_dict("records")
    (d / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    cv2.imwrite(str(d / "one.png"), np.zeros((1, 1, 3), np.uint8))
    ok, buf = cv2.imencode(".jpg", np.zeros((20000, 20000), np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 50])
    (d / "huge.jpg").write_bytes(buf.tobytes())  # a real 20000 x 20000 JPEG (6 MB, mostly black)
    del buf
    good = rows[0]
    bad = {
        "BAD-corrupt": "corrupt.jpg",
        "BAD-missing": "missing.jpg",
        "BAD-1x1": "one.png",
        "BAD-huge": "huge.jpg",
        "BAD-lat89": rows[0]["image_path"],
    }
    for pid, path in bad.items():
        rows.insert(
            2,
            dict(
                good,
                photo_id=pid,
                image_path=str(d / path) if "/" not in path else path,
                center_lat=89.0 if pid == "BAD-lat89" else good["center_lat"],
            ),
        )
    rows.insert(2, dict(good, photo_id="BAD-lat95", center_lat=95.0))  # rejected by the queries' validation
    pd.DataFrame(rows).to_csv(d / "queries.csv", index=False)
    (d / "cheap.toml").write_text(CHEAP)
    return d


def _args(d: Path, tiny: Path, out: Path) -> list[str]:
    return [
        "run",
        "footprints",
        "--workdir",
        str(d),
        "--queries",
        str(d / "queries.csv"),
        "--tiles",
        str(tiny / "tiles"),
        "--out",
        str(out),
        "--config",
        str(d / "cheap.toml"),
        "-q",
    ]


def _table(path: Path) -> pd.DataFrame:
    df = read_manifest(path, "footprints", geometry=False).drop(columns=["elapsed_s"])
    return df.sort_values("photo_id").reset_index(drop=True)


def test_every_photo_is_accounted_for_and_bad_ones_are_errors(stage_inputs, tiny, capsys):
    d = stage_inputs
    out = d / "full.parquet"
    assert main(_args(d, tiny, out)) == 0
    summary = capsys.readouterr().out  # the errors' reasons are on screen, not only in the manifest
    assert "6 photos ended as errors" in summary and "--retry-errors" in summary
    order = read_manifest(out, "footprints", geometry=False)["photo_id"].tolist()
    assert order == pd.read_csv(d / "queries.csv")["photo_id"].tolist()  # the file's order, bad rows in place
    df = _table(out)
    assert len(df) == 10 and df["photo_id"].is_unique
    errors = df.set_index("photo_id")["reason"]
    assert errors["BAD-lat95"] == (
        f"bad queries row: {d / 'queries.csv'}, row 3 (line 4) [photo_id BAD-lat95], "
        "column 'center_lat': value 95 is outside [-90, 90] degrees"
    )
    assert "truncated JPEG" in errors["BAD-corrupt"] and "not found" in errors["BAD-missing"]
    assert "too small" in errors["BAD-1x1"] and "too large (20000x20000" in errors["BAD-huge"]
    assert "89" in errors["BAD-lat89"]
    assert (df[df.photo_id.str.startswith("BAD")]["status"] == "error").all()
    assert set(df[~df.photo_id.str.startswith("BAD")]["status"]) <= {"localized", "not_localized"}
    assert main(_args(d, tiny, out)) == 0  # up to date, and it says the output holds errors to retry
    again = capsys.readouterr().out
    assert "is up to date" in again and "6 of its 10 rows are errors" in again and "--retry-errors" in again
    # inspect: the status breakdown and an inlier histogram; --geojson exports the footprints
    from manifests.inspect import inspect_manifest

    text = inspect_manifest(out, d / "fp.geojson")
    assert "status:" in text and "error" in text and "inliers histogram:" in text
    assert (d / "fp.geojson").is_file()


@pytest.mark.parametrize("label_lon, near", [(179.5, True), (-179.95, True), (-170.0, False)])
def test_labels_across_lon_180_from_the_imagery_are_next_to_it(label_lon, near):
    """Imagery over lon 179..180 and a 10 km margin: a label at -179.95 is 0.05 deg (5 km) from it (its windows
    wrap), not 360."""
    from pipeline.geometry.mercator import lonlat_to_mercator, near_extent

    x0, y0 = lonlat_to_mercator(179.0, -18.0)
    x1, y1 = lonlat_to_mercator(180.0, -16.0)
    assert near_extent([label_lon], [-17.0], (x0, y0, x1, y1), 1e4).tolist() == [near]


def test_inputs_that_cannot_work_are_refused_before_any_work(stage_inputs, tiny, tmp_path, capsys):
    """A wrong --tiles, --device or --workers would make every photo an error row (or hang); a typo in
    --queries beside an existing output was reported as "changed settings". Each is one line now."""
    d = stage_inputs
    out = tmp_path / "fp.parquet"
    cases = {
        ("--tiles", str(tmp_path / "nope")): "--tiles: no rasters or XYZ tiles found",
        ("--device", "gpu"): "--device must be auto, cpu, cuda or cuda:N",
        ("--workers", "0"): "--workers must be an integer of at least 1",
        ("--set", "screen_inliers=x"): "--set key 'screen_inliers' must be an integer, got 'x'",
        ("--scheduler", "http://localhost:8787"): "Dask does not speak http://",
    }
    for (opt, value), message in cases.items():
        assert main(_args(d, tiny, out) + [opt, value]) == 1
        assert message in capsys.readouterr().err
    (tmp_path / "header.csv").write_text("photo_id,image_path,center_lat,center_lon\n")
    assert main(_args(d, tiny, out) + ["--queries", str(tmp_path / "header.csv")]) == 1
    assert "has no photos" in capsys.readouterr().err
    # your own photos without --tiles: the sample's imagery does not cover them
    far = pd.read_csv(d / "queries.csv").head(2).assign(center_lat=45.0, center_lon=-120.0)
    far.to_csv(tmp_path / "far.csv", index=False)
    assert main(_args(d, tiny, out) + ["--queries", str(tmp_path / "far.csv")]) == 1
    assert "none of the 2 weak labels" in capsys.readouterr().err
    # a None-default key of the wrong kind in a config file is named (it failed deep in the stage)
    (tmp_path / "limit.toml").write_text(CHEAP + 'limit = "1"\n')
    assert main(_args(d, tiny, out)[:-3] + ["--config", str(tmp_path / "limit.toml"), "-q"]) == 1
    assert "key 'limit' must be an integer, got '1'" in capsys.readouterr().err
    # a file's zooms as a string and --zooms are both right; the option wins (it was refused as a kind clash);
    # --device gpu then stops the run before any work
    (tmp_path / "zooms.toml").write_text(CHEAP.replace("zooms = [11]", 'zooms = "10-11"'))
    assert (
        main(
            _args(d, tiny, out)[:-3]
            + ["--config", str(tmp_path / "zooms.toml"), "--zooms", "11", "--device", "gpu", "-q"]
        )
        == 1
    )
    assert "--device must be" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob("*.parts"))
    out.write_bytes(b"an older output")  # a typo beside an existing output: the typo, not "changed settings"
    assert main(_args(d, tiny, out) + ["--queries", str(tmp_path / "typo.csv")]) == 1
    assert "queries not found" in capsys.readouterr().err
    assert main(_args(d, tiny, d / "queries.csv") + ["--overwrite"]) == 1  # --out on its own input
    assert "is one of this stage's inputs" in capsys.readouterr().err
    assert (d / "queries.csv").read_text().startswith("photo_id")


def test_retry_errors_redoes_only_the_error_rows(stage_inputs, tiny, tmp_path, capsys):
    """After a missing photo is restored, --retry-errors localizes it and the other error rows again and
    keeps every other row as it was; a changed search setting is refused."""
    d = stage_inputs
    queries = tmp_path / "queries.csv"
    queries.write_text((d / "queries.csv").read_text().replace(str(d / "missing.jpg"), str(tmp_path / "missing.jpg")))
    out = tmp_path / "fp.parquet"
    args = _args(d, tiny, out) + ["--queries", str(queries)]
    assert main(args) == 0
    before = read_manifest(out, "footprints", geometry=False).set_index("photo_id").sort_index()
    assert "not found" in before.loc["BAD-missing", "reason"]
    good = (
        read_queries(queries, check_images=False, on_error="collect")[0]
        .set_index("photo_id")
        .loc["SIM-E-00000", "image_path"]
    )
    (tmp_path / "missing.jpg").write_bytes(Path(good).read_bytes())  # the photo is back
    cfg = out.with_name(out.name + ".config.toml")
    first_cfg = cfg.read_text()
    capsys.readouterr()
    assert main(args + ["--retry-errors"]) == 0
    assert "retry: 6 photos searched again, 4 rows kept" in capsys.readouterr().out
    # as a retry killed after replacing the output leaves it: its config still .pending, the first run's beside
    # the output. The next retry takes the pending one (it describes the output there) and goes on
    pending = cfg.with_name(cfg.name + ".pending")
    pending.write_text(cfg.read_text())
    cfg.write_text(first_cfg)
    assert main(args + ["--retry-errors"]) == 0
    assert "retry: 5 photos searched again, 5 rows kept" in capsys.readouterr().out
    assert not pending.exists()
    after = read_manifest(out, "footprints", geometry=False).set_index("photo_id").sort_index()
    assert list(after.index) == list(before.index)
    order = read_manifest(out, "footprints", geometry=False)["photo_id"].tolist()
    assert order == pd.read_csv(queries)["photo_id"].tolist()  # old rows and new, in the file's order
    assert after.loc["BAD-missing", "status"] in ("localized", "not_localized")
    assert (after.drop(index="BAD-missing")["status"] == before.drop(index="BAD-missing")["status"]).all()
    kept = before[before.status != "error"].index
    pd.testing.assert_frame_equal(after.loc[kept], before.loc[kept])  # untouched, worker time included
    assert main(args + ["--retry-errors", "--min-inliers", "5"]) == 1
    assert "made with different settings (changed: min_inliers)" in capsys.readouterr().err
    # a damaged config beside the output, then a damaged output: one line each, no traceback
    good_cfg = cfg.read_text()
    cfg.write_text("not [ toml")
    assert main(args) == 1
    assert f"{cfg} is not valid TOML" in capsys.readouterr().err
    cfg.write_text(good_cfg)
    out.write_bytes(b"not parquet")  # the config records the output's size and a hash of its ends
    for extra in ([], ["--retry-errors"]):
        assert main(args + extra) == 1
        assert "(changed: the output itself (fp.parquet is not the file" in capsys.readouterr().err
    cfg.write_text(
        "".join(
            line + "\n" for line in good_cfg.splitlines() if not line.startswith(("[output]", "size =", "digest ="))
        )
    )
    for extra in ([], ["--retry-errors"]):  # a config from before the output's identity was kept
        assert main(args + extra) == 1
        assert "cannot be read as a footprints manifest" in capsys.readouterr().err


def test_limit_counts_rows_of_the_file_bad_ones_included(stage_inputs, tiny):
    d = stage_inputs
    out = d / "limit.parquet"
    assert main(_args(d, tiny, out) + ["--limit", "3"]) == 0
    df = _table(out)  # rows 1-2 are photos, row 3 the rejected latitude 95
    assert df["photo_id"].tolist() == ["BAD-lat95", "SIM-E-00000", "SIM-E-00001"]


def test_a_killed_run_resumes_to_the_same_manifest(stage_inputs, tiny):
    """Kill the whole process group once a batch is written; run again; compare with an uninterrupted run."""
    d = stage_inputs
    full = d / "full.parquet"
    if not full.exists():
        assert main(_args(d, tiny, full)) == 0
    out = d / "resumed.parquet"
    parts = out.with_name(out.name + ".parts")
    cmd = [sys.executable, "-m", "pipeline", *_args(d, tiny, out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if parts.exists() and len(list(parts.glob("*/batch*.parquet"))) >= 2:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the run finished before it could be killed; give it more photos"
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI, the scheduler and the workers, at once
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    done = len(list(parts.glob("*/batch*.parquet")))
    assert not out.exists() and 2 <= done < 9
    for part in parts.glob("*/batch*.parquet"):  # parts are whole or absent (temporary file, then rename)
        assert len(read_manifest(part, "footprints", geometry=False)) == 1
    assert main(_args(d, tiny, out)) == 0
    pd.testing.assert_frame_equal(_table(out), _table(full))


def test_real_sample_footprints(real_sample, tmp_path):
    """The issue's command on the real sample, one rule for every row of truth.csv: a localizable photo is
    localized within IoU 0.7 of its footprint, with a margin (its confidence stays above the operating point
    with a fifth fewer inliers); any other photo has no footprint."""
    from pipeline.footprint.calibration import PACKAGED, Calibration
    from pipeline.footprint.evidence import FEATURES

    out = tmp_path / "fp.parquet"
    assert (
        main(
            [
                "run",
                "footprints",
                "--workdir",
                str(tmp_path),
                "--queries",
                str(real_sample / "queries.csv"),
                "--tiles",
                str(real_sample / "mosaics"),
                "--out",
                str(out),
                "--batch-size",
                "1",
                "-q",
            ]
        )
        == 0
    )
    fp = read_manifest(out, "footprints", geometry=False).set_index("photo_id")
    truth = pd.read_csv(real_sample / "truth.csv").set_index("photo_id")
    model = Calibration.load(PACKAGED).model
    assert sorted(fp.index) == sorted(truth.index)
    for pid, t in truth.iterrows():
        r = fp.loc[pid]
        if not t.localizable:
            assert r.status == "not_localized", (pid, r.reason)
            continue
        assert r.status == "localized", (pid, r.reason)
        est = np.array([[r[f"{c}_lon"], r[f"{c}_lat"]] for c in ("tl", "tr", "br", "bl")])
        true = np.array([[t[f"{c}_lon"], t[f"{c}_lat"]] for c in ("tl", "tr", "br", "bl")])
        assert iou(footprint_polygon(est), footprint_polygon(true)) >= 0.7, pid
        evidence = np.array([[r[f] for f in FEATURES]], np.float64)
        assert model.probabilities(evidence)[0] == pytest.approx(r.confidence, rel=1e-9)
        weaker = evidence.copy()
        weaker[0, FEATURES.index("inliers")] *= 0.8
        weaker[0, FEATURES.index("inlier_ratio")] *= 0.8
        assert model.probabilities(weaker)[0] >= model.operating_point, (pid, r.inliers, r.confidence)


def test_the_sample_negatives_are_not_localized(tiny, tmp_path):
    """The tiny sample's four negatives (night, clouds, a wrong label, the Earth's limb), searched with the default
    search and the packaged calibration: none gets a footprint."""
    q = read_queries(tiny / "queries.parquet")[0]
    truth = read_manifest(tiny / "truth.parquet", "truth", geometry=False).set_index("photo_id")
    negatives = q[~truth.loc[q["photo_id"], "localizable"].to_numpy()]
    assert sorted(truth.loc[negatives["photo_id"], "reason"]) == ["clouds", "limb", "night", "wrong_label"]
    negatives.to_csv(tmp_path / "negatives.csv", index=False)
    out = tmp_path / "fp.parquet"
    assert (
        main(
            [
                "run",
                "footprints",
                "--workdir",
                str(tmp_path),
                "--queries",
                str(tmp_path / "negatives.csv"),
                "--tiles",
                str(tiny / "tiles"),
                "--out",
                str(out),
                "--batch-size",
                "1",
                "-q",
            ]
        )
        == 0
    )
    fp = read_manifest(out, "footprints", geometry=False)
    assert len(fp) == 4 and (fp["status"] == "not_localized").all(), fp[["photo_id", "status", "reason"]]


def test_real_wrong_label_searches(real_sample, tmp_path):
    """A real photo under another photo's catalogue row gets no footprint; ISS062-E-81917 under ISS056-E-153176's
    row, whose imagery is its own placed elsewhere, is localized there (bench/real_negatives.py runs all 56)."""
    from pipeline.footprint.wrong_labels import moved_corners, swapped_queries

    q = pd.read_csv(real_sample / "queries.csv")
    q["image_path"] = [str(real_sample / p) for p in q["image_path"]]
    runs = swapped_queries(q).set_index(["photo", "row"])
    picked = [("ISS064-E-358", "ISS051-E-43872"), ("ISS062-E-81917", "ISS056-E-153176")]
    runs.loc[picked].reset_index().to_csv(tmp_path / "swapped.csv", index=False)
    out = tmp_path / "fp.parquet"
    assert (
        main(
            [
                "run",
                "footprints",
                "--workdir",
                str(tmp_path),
                "--queries",
                str(tmp_path / "swapped.csv"),
                "--tiles",
                str(real_sample / "mosaics"),
                "--out",
                str(out),
                "--batch-size",
                "1",
                "-q",
            ]
        )
        == 0
    )
    fp = read_manifest(out, "footprints", geometry=False).set_index("photo_id")
    assert fp.loc["ISS064-E-358@ISS051-E-43872", "status"] == "not_localized"
    r = fp.loc["ISS062-E-81917@ISS056-E-153176"]
    assert r.status == "localized", r.reason
    t = pd.read_csv(real_sample / "truth.csv").set_index("photo_id").loc["ISS062-E-81917"]
    true = moved_corners(
        np.array([[t[f"{c}_lon"], t[f"{c}_lat"]] for c in ("tl", "tr", "br", "bl")]),
        str(real_sample / "mosaics" / "ISS062-E-81917.tif"),
        str(real_sample / "mosaics" / "ISS056-E-153176.tif"),
    )
    est = np.array([[r[f"{c}_lon"], r[f"{c}_lat"]] for c in ("tl", "tr", "br", "bl")])
    assert iou(footprint_polygon(est), footprint_polygon(true)) >= 0.7


def test_device_auto_follows_the_gpus_the_cluster_declares():
    """``auto`` is ``cuda`` where a worker declares the GPU resource, else ``cpu``; ``cuda`` on a cluster
    none of whose workers declares one is refused (its tasks would wait for ever). Real in-process clusters;
    the GPU is only the declared resource, which is all the scheduler sees."""
    from dask.distributed import Client, LocalCluster

    from stages.base import StageError
    from stages.cluster import cluster_device, resolve_device

    assert resolve_device("auto", remote=True) == "auto" and resolve_device("cpu") == "cpu"
    for resources, auto in (({"GPU": 1}, "cuda"), (None, "cpu")):
        with (
            LocalCluster(
                n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0", resources=resources
            ) as cluster,
            Client(cluster) as client,
        ):
            assert cluster_device("auto", client, cluster.scheduler_address) == auto
            if resources is None:
                with pytest.raises(StageError, match="declares the GPU resource"):
                    cluster_device("cuda", client, cluster.scheduler_address)
            else:
                assert cluster_device("cuda", client, cluster.scheduler_address) == "cuda"


def test_device_is_decided_once_the_first_worker_has_joined():
    """A scheduler started before its (jobqueue, SLURM) workers: ``auto`` waits for one rather than settling on
    cpu with no worker there (it did, and ``cuda`` was refused as having no GPU worker)."""
    import threading

    from dask.distributed import Client, LocalCluster

    from stages.cluster import cluster_device

    with (
        LocalCluster(n_workers=0, processes=False, dashboard_address=":0", resources={"GPU": 1}) as cluster,
        Client(cluster) as client,
    ):
        threading.Timer(1.0, lambda: cluster.scale(1)).start()
        assert cluster_device("auto", client, cluster.scheduler_address) == "cuda"


def test_manifest_rows_follow_the_file_with_bad_rows_inside_a_batch(tmp_path):
    """Batches of 3 photos; bad rows 1, 4 and 7 of the file fall inside and after batches: each error row
    lands at its place in the file, and a part file's rows are put back in the file's order."""
    import pyarrow as pa

    from manifests import FOOTPRINTS, to_table, write_manifest
    from pipeline.footprint.batch import rows_in_file_order

    ids = [f"P{i}" for i in range(8)]
    good = [0, 2, 3, 5, 6]
    queries = pd.DataFrame({"photo_id": [ids[i] for i in good], "_row": good})
    rejected = pd.DataFrame({"photo_id": ["P1", "P4", "P7"], "row": [1, 4, 7], "reason": ["bad"] * 3})
    parts = []
    for k, batch in enumerate([[3, 2, 0], [6, 5]]):  # rows of a part need not be in the file's order
        parts.append(tmp_path / f"batch{k}.parquet")
        write_manifest(
            pd.DataFrame({"photo_id": [ids[i] for i in batch], "status": "not_localized", "reason": "few inliers"}),
            parts[-1],
            FOOTPRINTS,
        )
    rows = pa.concat_tables(list(rows_in_file_order(queries, rejected, parts, 3)))
    assert rows.column("photo_id").to_pylist() == ids
    assert rows.column("status").to_pylist() == ["error" if i in (1, 4, 7) else "not_localized" for i in range(8)]
    # --retry-errors: kept rows (one of a photo no longer in the file) and new ones sorted together
    kept = to_table(
        pd.DataFrame({"photo_id": ["GONE", "P5", "P0"], "status": "not_localized", "reason": "x"}), FOOTPRINTS
    )
    redo = queries[queries.photo_id.isin(["P2", "P3", "P6"])]
    write_manifest(
        pd.DataFrame({"photo_id": ["P3", "P2", "P6"], "status": "not_localized", "reason": "x"}), parts[0], FOOTPRINTS
    )
    file_rows = pd.Series(range(8), index=ids)
    rows = pa.concat_tables(list(rows_in_file_order(redo, rejected, parts[:1], 3, kept, file_rows)))
    assert rows.column("photo_id").to_pylist() == ["P0", "P1", "P2", "P3", "P4", "P5", "P6", "P7", "GONE"]


def test_the_queries_file_is_parsed_once_per_run_and_afresh_by_the_next(tmp_path, monkeypatch):
    """check() (the coverage test) and run() share one parse of the queries (a 300k-row file takes seconds), kept
    in the run, not in the stage: the next run reads the file again."""
    import stages.footprints as sf
    from stages.base import StageRun

    calls = []
    real = sf.read_queries
    monkeypatch.setattr(sf, "read_queries", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    q = tmp_path / "q.csv"
    pd.DataFrame(
        {
            "photo_id": ["ISS001-E-1", "ISS001-E-2"],
            "image_path": ["a.jpg", "b.jpg"],
            "center_lat": [10.0, 95.0],
            "center_lon": [20.0, 20.0],
        }
    ).to_csv(q, index=False)
    stage = sf.FootprintsStage()
    settings = sf.FootprintsSettings(queries=str(q))
    run = StageRun(stage, settings, tmp_path)
    first = stage._read_queries(run)
    assert stage._read_queries(run) is first and len(calls) == 1
    assert first[0]["photo_id"].tolist() == ["ISS001-E-1"] and first[1]["row"].tolist() == [1]
    pd.DataFrame(
        {"photo_id": ["ISS001-E-3"], "image_path": ["c.jpg"], "center_lat": [1.0], "center_lon": [2.0]}
    ).to_csv(q, index=False)
    assert stage._read_queries(StageRun(stage, settings, tmp_path))[0]["photo_id"].tolist() == ["ISS001-E-3"]
    assert len(calls) == 2


def test_a_retry_stopped_before_its_parts_were_removed_leaves_no_stale_parts(stage_inputs, tiny, tmp_path, monkeypatch):
    """--retry-errors cuts its batches from the output's error rows. One stopped after writing its output and config
    but before removing its parts, run again on an output with fewer errors, took those parts for its own batches:
    a photo twice, another lost. Parts are keyed by the photos they hold."""
    import shutil

    import stages.base as base

    q = read_queries(tiny / "queries.parquet")[0].head(4)
    paths = {pid: tmp_path / f"{pid}.jpg" for pid in q.photo_id}  # all missing at first: 4 error rows, no search
    q.assign(image_path=[str(paths[p]) for p in q.photo_id]).to_csv(tmp_path / "q.csv", index=False)
    out = tmp_path / "fp.parquet"
    args = _args(stage_inputs, tiny, out) + ["--queries", str(tmp_path / "q.csv"), "--batch-size", "2"]
    assert main(args) == 0
    second = q.photo_id.iloc[1]
    shutil.copy(q.image_path.iloc[1], paths[second])  # one photo is back

    rmtree = shutil.rmtree

    def killed(path, *a, **kw):  # stopped after the output and its config were written, before removing the parts
        if str(path).endswith(".parts"):
            raise KeyboardInterrupt
        return rmtree(path, *a, **kw)

    monkeypatch.setattr(base.shutil, "rmtree", killed)
    assert main(args + ["--retry-errors"]) == 130
    monkeypatch.undo()
    assert (read_manifest(out, "footprints", geometry=False).status != "error").sum() == 1
    assert main(args + ["--retry-errors"]) == 0  # 3 errors in batches of 2: not the stopped run's 4
    df = read_manifest(out, "footprints", geometry=False)  # validated: each photo once
    assert df.photo_id.tolist() == q.photo_id.tolist()
    assert df.status.tolist() == ["error", df.status.iloc[1], "error", "error"] and df.status.iloc[1] != "error"
