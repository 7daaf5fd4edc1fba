"""Descriptors (pipeline/descriptors.py, run describe) and the evaluator (pipeline/evaluate.py, run eval)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.descriptors import ROTATIONS, describe, rotate
from pipeline.evaluate import first_positive_ranks, knn, random_recall, recalls
from pipeline.model import ModelConfig
from pipeline.model.checkpoint import build_model, save_checkpoint
from stages.cli import main

ROOT = Path(__file__).resolve().parents[1]
SMALL = ModelConfig(
    "test", arch="vits14", image_px=126, clusters=8, cluster_dim=16, token_dim=32, out_dim=64, backbone="random"
)
"""A model small and fast enough for tests (random values: the tests check the plumbing, not the recall)."""


@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "small.pt"
    save_checkpoint(path, build_model(SMALL))
    return path


def test_faiss_top_k_equals_brute_force():
    rng = np.random.default_rng(0)
    db = rng.normal(size=(300, 16)).astype(np.float32)
    q = rng.normal(size=(7, 16)).astype(np.float32)
    scores, rows = knn(db, q, 10)
    brute = np.argsort(-(q @ db.T), axis=1, kind="stable")[:, :10]
    assert np.array_equal(rows, brute)
    np.testing.assert_allclose(scores, np.take_along_axis(q @ db.T, brute, 1), rtol=1e-5)
    assert knn(db[:4], q, 10)[1].shape == (7, 4)  # fewer entries than k: all of them


def test_a_window_turned_by_90_degrees_is_found_at_rank_1(tiny):
    """The database at its four rotations; the query, a window's image turned a quarter clockwise: its nearest
    entry is that window at 90 degrees."""
    from manifests import read_manifest
    from pipeline.geometry.windows import Window
    from pipeline.tile_sources import open_tile_source

    source = open_tile_source(tiny / "tiles")
    db = read_manifest(tiny / "database.parquet", "database", geometry=False)
    tile_ids = db.loc[db["zoom"] == 11, "tile_id"].head(3).tolist()
    images = [source.read_window(Window.from_tile_id(t, 4)).rgb for t in tile_ids]
    model = build_model(SMALL).eval()
    db = describe(model, [rotate(im, r) for im in images for r in ROTATIONS])
    entries = [(t, r) for t in tile_ids for r in ROTATIONS]
    query = describe(model, [rotate(images[1], 90)])
    _, rows = knn(db, query, 3)
    assert entries[rows[0, 0]] == (tile_ids[1], 90)
    assert rotate(rotate(images[0], 90), 270).tobytes() == images[0].tobytes()


def test_random_descriptors_recall_as_the_analytic_baseline():
    """Random unit descriptors rank the database at random: their recall@N is the exact baseline, within the
    binomial noise of 2000 queries."""
    rng = np.random.default_rng(1)
    d, q, k = 400, 2000, (1, 5, 20)
    db = rng.normal(size=(d, 32)).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    ids = np.array([f"w{i // 4}" for i in range(d)])  # 100 windows x 4 rotations
    npos = rng.integers(1, 4, size=q)
    positives = [set(f"w{j}" for j in rng.choice(100, n, replace=False)) for n in npos]
    queries = rng.normal(size=(q, 32)).astype(np.float32)
    _, rows = knn(db, queries, max(k))
    got = recalls(first_positive_ranks(rows, ids, positives), k)
    want = random_recall(d, [4 * n for n in npos], k)
    for n in k:
        assert abs(got[n] - want[n]) < 4 * np.sqrt(want[n] * (1 - want[n]) / q) + 1e-9, (n, got[n], want[n])
    assert random_recall(10, [2], (1, 9, 10)) == pytest.approx({1: 0.2, 9: 1.0, 10: 1.0})


def _describe_args(tiny: Path, out: Path, model: Path) -> list[str]:
    return [
        "run",
        "describe",
        "--workdir",
        str(tiny),
        "--out",
        str(out),
        "--model",
        str(model),
        "--zooms",
        "10",
        "--limit",
        "24",
        "--batch-size",
        "4",
        "--workers",
        "1",
        "-q",
    ]  # the procedural world renders 0.3 s a window


def test_describe_and_eval_on_a_local_cluster(tiny, small_model, tmp_path, capsys):
    out = tmp_path / "store" / "index.parquet"
    assert main(_describe_args(tiny, out, small_model)) == 0
    index = pq.read_table(out).to_pandas()
    windows, photos = index[index["kind"] == "window"], index[index["kind"] == "photo"]
    assert sorted(windows["rotation_deg"].unique()) == [0, 90, 180, 270] and set(windows["zoom"]) == {10}
    assert len(windows) == 4 * 24 and windows["id"].nunique() == 24 and len(photos) == 10
    shard = np.load(out.parent / windows["shard"].iloc[0])
    assert shard.dtype == np.float16 and shard.shape[1] == 64
    capsys.readouterr()
    summary = tmp_path / "eval" / "summary.json"
    assert main(["run", "eval", "--workdir", str(tiny), "--store", str(out), "--out", str(summary), "-q"]) == 0
    s = json.loads(summary.read_text())
    assert s["queries"] + s["dropped_no_positive"] + s["queries_without_footprint"] == 10 and s["queries"] > 0
    assert set(s["recall"]) == {"1", "5", "10", "20", "100"} and 0 <= s["random_recall"]["1"] <= 1
    per = pq.read_table(summary.with_name("queries.parquet")).to_pandas()
    assert len(per) == s["queries"] and all(len(t) == min(100, s["database_entries"]) for t in per["top_ids"])
    # the other search spaces, and the preview
    from manifests import read_manifest

    q = read_manifest(tiny / "queries.parquet", "queries", geometry=False)
    lon, lat = float(q["center_lon"].mean()), float(q["center_lat"].mean())
    for name, extra in (
        ("visible", ["--space", "visible", "--preview", str(tmp_path / "p.png")]),
        ("region", ["--space", "region", "--center", f"{lon},{lat}", "--query-km", "500", "--window-km", "150"]),
    ):
        out_s = tmp_path / name / "summary.json"
        assert (
            main(["run", "eval", "--workdir", str(tiny), "--store", str(out), "--out", str(out_s), "-q", *extra]) == 0
        )
        got = json.loads(out_s.read_text())
        assert (
            got["space"] == name
            and got["queries"] + got["dropped_no_positive"] <= s["queries"] + s["dropped_no_positive"]
        )
    assert 0 < got["database_entries"] < s["database_entries"] and "within 150 km" in got["space_detail"]
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    # another model is refused, not mixed into the store
    other = tmp_path / "other.pt"
    save_checkpoint(other, build_model(SMALL, seed=1))
    assert main(_describe_args(tiny, out, other)) == 1
    assert "different settings (changed: model" in capsys.readouterr().err


def test_a_killed_describe_resumes_without_redoing_finished_parts(tiny, small_model, tmp_path, capsys):
    full = tmp_path / "full" / "index.parquet"
    assert main(_describe_args(tiny, full, small_model)) == 0
    out = tmp_path / "resumed" / "index.parquet"
    parts = out.with_name(out.name + ".parts")
    cmd = [sys.executable, "-m", "pipeline", *_describe_args(tiny, out, small_model)]
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if parts.exists() and len(list(parts.glob("*/*.parquet"))) >= 2:
                break
            time.sleep(0.1)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    done = len(list(parts.glob("*/*.parquet")))
    assert not out.exists() and done >= 2
    capsys.readouterr()
    assert main(_describe_args(tiny, out, small_model)[:-1]) == 0  # not quiet: its summary tells what it resumed
    assert f", {done} batches resumed" in capsys.readouterr().out  # finished parts were not redone
    a, b = pq.read_table(out).to_pandas(), pq.read_table(full).to_pandas()
    assert a.drop(columns="shard").equals(b.drop(columns="shard"))
    for (_, ra), (_, rb) in zip(a.iterrows(), b.iterrows()):
        va = np.load(out.parent / ra["shard"])[ra["row"]]
        vb = np.load(full.parent / rb["shard"])[rb["row"]]
        np.testing.assert_array_equal(va, vb)
    assert not parts.exists()  # removed once the index is in


def test_the_visible_search_space_is_a_cap_of_20_million_km2_searched_per_query():
    from pipeline.evaluate import EARTH_RADIUS_KM, cap_radius_km, great_circle_km, knn_within

    r = cap_radius_km(20e6)
    assert 2 * np.pi * EARTH_RADIUS_KM**2 * (1 - np.cos(r / EARTH_RADIUS_KM)) == pytest.approx(20e6)
    assert great_circle_km(0, 0, 90, 0) == pytest.approx(np.pi / 2 * EARTH_RADIUS_KM)
    rng = np.random.default_rng(2)
    db, q = rng.normal(size=(50, 8)).astype(np.float32), rng.normal(size=(3, 8)).astype(np.float32)
    allowed = rng.random((3, 50)) < 0.4
    allowed[2] = False
    scores, rows = knn_within(db, q, 5, allowed)
    for i in range(2):
        idx = np.flatnonzero(allowed[i])
        assert rows[i].tolist() == idx[np.argsort(-(db[idx] @ q[i]), kind="stable")[:5]].tolist()
    assert rows[2].tolist() == [-1] * 5
