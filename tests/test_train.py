"""The trainer: its pieces against known answers, and `run train` on the tiny sample: resumed = uninterrupted,
two gloo processes = one, leakage held back. The losses themselves: tests/test_losses.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import shapely
import torch

from pipeline.model import ModelConfig
from pipeline.model.checkpoint import build_model, load_checkpoint, save_checkpoint
from pipeline.train.data import Augmentation, augment, photo_rotation, split_slots, view_corners, warp_view
from pipeline.train.loop import METRICS_SCHEMA, TIMING_COLUMNS, batch_similarities, read_metrics, row, write_metrics
from pipeline.train.mining import Clusters, quad_windows, window_boxes
from pipeline.train.sampler import PairSchedule
from stages.cli import main

LOSS_COLUMNS = ["loss", "pair_pos", "pair_neg", "mum", "pos_cos", "neg_cos", "batch_r1"]
"""The metrics columns computed from descriptors: equal after a resume within float tolerance, not bit for bit."""

ROOT = Path(__file__).resolve().parents[1]
TINY = ModelConfig(
    "test",
    arch="vits14",
    image_px=56,
    clusters=4,
    cluster_dim=8,
    token_dim=16,
    out_dim=32,
    trainable_blocks=1,
    dropout=0.0,
    backbone="random",
)
"""A model for the loop's plumbing (random values, 56 px: 16 patches). No dropout: two processes draw other masks
than one (the one thing data parallelism does not reproduce), and the test compares their weights."""


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_checkpoint(path, build_model(TINY))
    return path


@pytest.fixture(scope="module")
def workspace(tiny, tmp_path_factory) -> Path:
    """The tiny sample with pairs made from its true footprints (10 photos: 23 pairs in the train region)."""
    pairs = tmp_path_factory.mktemp("pairs") / "pairs.parquet"
    args = ["run", "pairs", "--workdir", str(tiny), "--footprints", str(tiny / "truth.parquet"), "--out", str(pairs)]
    assert main([*args, "-q"]) == 0
    return pairs


def _args(tiny: Path, pairs: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return [
        "run",
        "train",
        "--workdir",
        str(tiny),
        "--pairs",
        str(pairs),
        "--model",
        str(model),
        "--out",
        str(out),
        "--steps",
        "4",
        "--pair-batch",
        "2",
        "--quad-batch",
        "2",
        "--clusters",
        "2",
        "--mining-every",
        "2",
        "--mining-windows",
        "40",
        "--checkpoint-every",
        "1",
        "--loader-workers",
        "0",
        "--image-cache",
        str(out.parent.parent / "cache"),
        "--no-half",
        "-q",
        *extra,
    ]


ENV = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
"""Every run of a comparison in its own process with the same threads: float sums depend on the thread count.
(Under pytest-xdist, tests/conftest.py sets each test process's threads.)"""


def _run(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pipeline", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env or ENV, capture_output=True, text=True, timeout=300)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)[0].state_dict()


def _metrics(path: Path):
    return pq.read_table(path.with_name("metrics.parquet")).to_pandas().drop(columns=list(TIMING_COLUMNS))


# -- pieces ------------------------------------------------------------------------------------------------------


def _square(lon0, lat0, turn_deg):
    """A 0.2-degree footprint around (lon0, lat0) whose top edge faces ``turn_deg`` clockwise from north."""
    t = np.radians(turn_deg)
    up, right = np.array([np.sin(t), np.cos(t)]), np.array([np.cos(t), -np.sin(t)])
    c = np.array([lon0, lat0])
    pts = [c + 0.1 * (up - right), c + 0.1 * (up + right), c + 0.1 * (-up + right), c + 0.1 * (-up - right)]
    return np.array([p[0] for p in pts])[None], np.array([p[1] for p in pts])[None]


@pytest.mark.parametrize(
    "up,turn", [(0, 0), (90, 270), (180, 180), (270, 90), (30, 0), (60, 270), (-40, 0), (140, 180)]
)
def test_a_pairs_window_is_turned_to_the_photos_orientation(up, turn):
    """A photo whose up faces east shows north to its left: the window turned 270 degrees clockwise matches it."""
    assert photo_rotation(*_square(10.0, 0.0, up))[0] == turn


def test_augment_turns_clockwise_and_keeps_the_range():
    x = torch.zeros(3, 4, 4)
    x[:, 0, 0] = 1.0  # top-left
    assert augment(x, 1, np.random.default_rng(0), None)[:, 0, 3].eq(1).all()  # to the top-right
    how = Augmentation(rotate=45, perspective=0.5, zoom=0.2, colour=0.5)
    y = augment(torch.rand(3, 8, 8), 0, np.random.default_rng(1), how)
    assert 0.0 <= float(y.min()) and float(y.max()) <= 1.0
    assert torch.equal(augment(x, 3, np.random.default_rng(5), how), augment(x, 3, np.random.default_rng(5), how))


def test_the_view_warp_known_answers():
    """No turn, no perspective, full size: the image itself; 90 degrees: the quarter turn clockwise; half the
    side: the centre, twice as large."""
    x = torch.rand(3, 16, 16)
    still = warp_view(x, view_corners(16, 0.0, np.zeros((4, 2)), 1.0))
    assert torch.allclose(still, x, atol=1e-5)
    turned = warp_view(x, view_corners(16, 90.0, np.zeros((4, 2)), 1.0))
    assert torch.allclose(turned, torch.rot90(x, k=-1, dims=(1, 2)), atol=1e-4)
    ramp = torch.arange(16.0).repeat(3, 16, 1)  # value = column
    centre = warp_view(ramp, view_corners(16, 0.0, np.zeros((4, 2)), 0.5))
    assert torch.allclose(centre[0, 8], 3.75 + 0.5 * torch.arange(16.0), atol=1e-4)  # columns 4..12 stretched


def test_batch_similarities_known_answer():
    """Three pairs on the axes: photo 0 and 1 face their own windows, photo 2 faces window 0's direction."""
    eye = torch.eye(3)
    q = torch.stack([eye[0], eye[1], torch.nn.functional.normalize(eye[0] + eye[2], dim=0)])
    seen = batch_similarities(q, eye)
    s = 2**-0.5
    assert seen["pos_cos"] == pytest.approx((1 + 1 + s) / 3)
    assert seen["neg_cos"] == pytest.approx((0 + 0 + s) / 3)  # photo 2's hardest other window: window 0, tied
    assert seen["batch_r1"] == pytest.approx(2 / 3)  # the tie counts against photo 2


def test_a_metrics_log_of_an_older_version_reads_with_nan_in_the_new_columns(tmp_path):
    path = tmp_path / "metrics.parquet"
    write_metrics(path, [row(1, "train", loss=1.5, pos_cos=0.3), row(2, "validation", recall_1=0.5)])
    assert read_metrics(path)[0]["pos_cos"] == pytest.approx(0.3)
    old = pq.read_table(path).drop_columns(["pos_cos", "neg_cos", "batch_r1"])  # as written before they existed
    pq.write_table(old, path)
    rows = read_metrics(path)
    assert list(rows[0]) == METRICS_SCHEMA.names and rows[0]["loss"] == 1.5 and rows[1]["recall_1"] == 0.5
    assert np.isnan(rows[0]["pos_cos"]) and np.isnan(rows[1]["batch_r1"])


def test_the_bar_leaves_a_validation_out_of_its_clock():
    """The progress bar's rate and time left are the steps': a validation's seconds are taken off its clock."""
    from pipeline.progress import leave_out, progress

    bar = progress(total=10, desc="train", unit="step", disable=False)
    bar.update(4)
    before = bar.format_dict["elapsed"]
    leave_out(bar, 100.0)
    assert before - bar.format_dict["elapsed"] == pytest.approx(100.0, abs=1.0)
    bar.close()
    off = progress(total=10, disable=True)
    leave_out(off, 100.0)  # a disabled bar (the other processes of a distributed run) has no clock


def test_the_pair_schedule_is_a_function_of_seed_and_step():
    rng = np.random.default_rng(0)
    grounds = shapely.box(*np.hstack([(c := rng.uniform(0, 10, (40, 2))), c + 1]).T)
    a, b = PairSchedule(grounds, 4, seed=3), PairSchedule(grounds, 4, seed=3)
    steps = [a.batch(t) for t in range(25)]  # across several epochs
    assert all(np.array_equal(x, b.batch(t)) for t, x in reversed(list(enumerate(steps))))
    for batch in steps:
        assert not any(shapely.intersects(grounds[i], grounds[j]) for i in batch for j in batch if i < j)
    with pytest.raises(ValueError, match="cannot fill one batch"):
        PairSchedule(np.array([shapely.box(0, 0, 1, 1)] * 5), 2)


def test_quadruplet_windows_come_from_one_cluster_and_never_overlap():
    zoom = np.full(60, 10)
    x, y = np.arange(60) % 10 * 2, np.arange(60) // 10 * 2  # windows of 4 tiles every 2: neighbours overlap
    boxes = window_boxes(zoom, x, y, 4)
    labels = np.arange(60) % 3
    clusters = Clusters(labels, np.array([0, 5, 1]), step=0)
    seen = set()
    for step in range(30):
        picked = quad_windows(step, 3, boxes, "photos", clusters, seed=1)
        assert len(set(labels[picked])) == 1 and labels[picked[0]] != 0  # a cluster with no photo is never drawn
        seen.add(int(labels[picked[0]]))
        b = boxes[picked]
        for i in range(3):
            for j in range(i + 1, 3):
                assert b[i, 2] <= b[j, 0] or b[j, 2] <= b[i, 0] or b[i, 3] <= b[j, 1] or b[j, 3] <= b[i, 1]
    assert seen == {1, 2}
    anywhere = quad_windows(0, 5, boxes, "random", None, seed=1)
    assert len(set(anywhere.tolist())) == 5
    assert split_slots(8, 1, 2) == range(4, 8)


# -- the stage ---------------------------------------------------------------------------------------------------


def test_a_killed_run_resumes_to_the_same_weights_and_metrics(tiny, workspace, tiny_model, tmp_path):
    """Uninterrupted, then killed (SIGKILL) after its second checkpoint and run again: the same weights (within
    float tolerance) and the same metrics log, timing columns aside. The uninterrupted run also validates, keeps
    best.pt and holds the validation region's photos and windows back. Both keep the mean of the weights from
    step 2 on, so the mean is in the state the run resumes from."""
    val = ["--validation", f"{tiny / 'regions.geojson'}#eval", "--validate-every", "2", "--average-from", "2"]
    full = tmp_path / "full" / "model.pt"
    done = _run(_args(tiny, workspace, tiny_model, full, *val))
    assert done.returncode == 0, done.stderr[-3000:]
    assert full.with_name("best.pt").is_file()
    metrics = _metrics(full)
    assert list(metrics.loc[metrics.kind == "train", "step"]) == [1, 2, 3, 4]
    assert list(metrics.loc[metrics.kind == "validation", "step"]) == [2, 4]
    assert list(metrics.loc[metrics.kind == "mining", "step"]) == [0, 2]
    assert np.isfinite(metrics.loc[metrics.kind == "train", LOSS_COLUMNS]).all().all()
    blob = torch.load(full, weights_only=True)
    assert blob["step"] == 4 and blob["training"]["validation"].endswith("#eval")

    out = tmp_path / "resumed" / "model.pt"
    cmd = [sys.executable, "-m", "pipeline", *_args(tiny, workspace, tiny_model, out, *val)]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=ENV, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 240
        state = None
        while time.monotonic() < deadline and proc.poll() is None:
            logs = list(out.parent.glob("model.pt.parts/*/metrics.parquet"))  # written just after state.pt
            if logs and pq.read_table(logs[0], columns=["step"]).column("step").to_numpy().max() >= 2:
                state = logs[0].with_name("state.pt")
                break
            time.sleep(0.1)
        assert proc.poll() is None and state is not None, "the run finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert not out.exists()
    stopped_at = torch.load(state, weights_only=True)["step"]
    assert 2 <= stopped_at < 4
    done = _run([a for a in _args(tiny, workspace, tiny_model, out, *val) if a != "-q"])  # it says where it resumed
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resuming at step {stopped_at} of 4" in done.stderr
    for name in ("model.pt", "last.pt"):  # the mean, and the last step's weights
        a, b = _weights(full.with_name(name)), _weights(out.with_name(name))
        assert all(torch.allclose(a[k], b[k], atol=1e-7) for k in a), name
    ma, mb = _metrics(full), _metrics(out)
    assert ma.drop(columns=LOSS_COLUMNS).equals(mb.drop(columns=LOSS_COLUMNS))
    np.testing.assert_allclose(ma[LOSS_COLUMNS], mb[LOSS_COLUMNS], rtol=1e-6, atol=1e-6)
    assert not (tmp_path / "full" / "model.pt.parts").exists()  # the work folder goes once the checkpoint is in


def test_average_from_keeps_the_mean_of_the_weights_after_each_step_from_it_on(
    tiny, workspace, tiny_model, tmp_path, capsys
):
    """Stochastic weight averaging, known answer: a 4-step run averaging from step 3 saves the mean of the weights
    after steps 3 and 4 (a 3-step run's weights, and its own last.pt); before step 3 it validates the model itself.
    (That the validations from step 3 on measure the mean: bench/RESULTS.md, the tenth session, where the trainer's
    last validation equals `--compare`'s figures for model.pt, not last.pt's.)"""
    val = ["--validation", f"{tiny / 'regions.geojson'}#eval", "--validate-every", "2", "--lr", "1e-3"]
    three = tmp_path / "three" / "model.pt"
    done = _run(_args(tiny, workspace, tiny_model, three, *val, "--steps", "3"))
    assert done.returncode == 0, done.stderr[-3000:]
    mean = tmp_path / "mean" / "model.pt"
    done = _run(_args(tiny, workspace, tiny_model, mean, *val, "--average-from", "3"))
    assert done.returncode == 0, done.stderr[-3000:]
    w3, w4, got = _weights(three), _weights(mean.with_name("last.pt")), _weights(mean)
    moved = [k for k in w3 if not torch.equal(w3[k], w4[k])]
    assert moved  # steps 3 and 4 differ, so the mean is neither
    for k in w3:
        torch.testing.assert_close(got[k], (w3[k] + w4[k]) / 2, rtol=1e-6, atol=1e-7)
    assert torch.load(mean, weights_only=True)["averaged"] == {"from": 3, "steps": 2}
    m3, m4 = _metrics(three), _metrics(mean)
    v = m3.kind == "validation"
    assert m3[v].iloc[0].equals(m4[m4.kind == "validation"].iloc[0])  # step 2: before the mean, the model itself
    assert main(_args(tiny, workspace, tiny_model, tmp_path / "x" / "model.pt", "--average-from", "5")) == 1
    assert "average_from = 5: past the run's last step (4)" in capsys.readouterr().err


def test_two_gloo_processes_train_as_one_with_the_same_global_batch(tiny, workspace, tiny_model, tmp_path):
    """torchrun with two CPU processes (gloo), each reading half of each batch, against one process: the same loss
    at every step, the same descriptors, the same weights within a third of an Adam step. (Adam divides each
    gradient by its own size, so a gradient that is zero but for rounding, as those of SALAD's last score bias
    and its dust bin, which Sinkhorn's normalization makes irrelevant, moves its parameter by rounding-driven
    steps of up to the learning rate in either run.)"""
    lr = 1e-4  # steps well above rounding
    single = {**ENV, "OMP_NUM_THREADS": "1"}  # each process sums in one thread, as the two below do
    one = tmp_path / "one" / "model.pt"
    done = _run(_args(tiny, workspace, tiny_model, one, "--steps", "3", "--lr", str(lr)), env=single)
    assert done.returncode == 0, done.stderr[-3000:]
    two = tmp_path / "two" / "model.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517"]
    cmd += ["-m", "pipeline", *_args(tiny, workspace, tiny_model, two, "--steps", "3", "--lr", str(lr))]
    done = subprocess.run(cmd, cwd=ROOT, env=single, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    np.testing.assert_allclose(_metrics(one)["loss"], _metrics(two)["loss"], rtol=1e-5)
    a, b, start = _weights(one), _weights(two), _weights(tiny_model)
    # No gradient but rounding (Sinkhorn fits the rows first, which undoes a constant added to a row): the score's
    # last bias (a constant per cluster) and the dust bin (the constant of its row). Adam turns that rounding into
    # steps of up to lr, in either direction.
    free = {"aggregator.score.3.bias", "aggregator.dust_bin"}
    far = {k: float((a[k] - b[k]).abs().max()) for k in a if k not in free}
    assert max(far.values()) <= lr / 3, sorted(far.items(), key=lambda kv: -kv[1])[:5]
    trained = [k for k, v in build_model(TINY).named_parameters() if v.requires_grad]
    assert min(float((a[k] - start[k]).abs().max()) for k in trained if "weight" in k) > lr  # it did train
    images = torch.rand(6, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        da, db = load_checkpoint(one)[0].eval()(images), load_checkpoint(two)[0].eval()(images)
    assert float((da * db).sum(1).min()) > 0.9999


def test_exclude_holds_the_region_back_and_bad_settings_are_refused(tiny, workspace, tiny_model, tmp_path, capsys):
    from pipeline.train.settings import TrainSettings
    from stages.train import TrainStage

    stage = TrainStage()
    s = stage.resolve(
        TrainSettings(pairs=str(workspace), model=str(tiny_model), exclude=(f"{tiny / 'regions.geojson'}#eval",)),
        tiny,
    )
    data = stage.training_set(s)
    area = shapely.box(4.4, 45.0, 5.0, 47.0)  # the eval region
    assert data.pair_windows and data.mum_windows
    from manifests import read_manifest

    db = read_manifest(tiny / "database.parquet", "database", columns=["tile_id", "geometry"]).set_index("tile_id")
    db = db.geometry
    assert not shapely.intersects(db.loc[data.mum_windows].to_numpy(), area).any()
    assert not shapely.intersects(db.loc[data.pair_windows].to_numpy(), area).any()
    assert s.steps == 100 and s.pair_batch == 8  # the cpu recipe filled in what was left unset
    assert main(_args(tiny, workspace, tiny_model, tmp_path / "x" / "model.pt", "--pair-batch", "1")) == 1
    assert "pair_batch = 1: at least 2" in capsys.readouterr().err


def test_validation_zooms_keep_the_regions_windows_of_those_zooms_and_their_photos(tiny, workspace, tiny_model):
    from manifests import read_manifest
    from pipeline.train.settings import TrainSettings
    from stages.base import StageError
    from stages.train import TrainStage

    stage = TrainStage()
    zoom = read_manifest(tiny / "database.parquet", "database", columns=["tile_id", "zoom"], geometry=False)
    zoom = zoom.set_index("tile_id")["zoom"]
    region = f"{tiny / 'regions.geojson'}#eval"

    def validation(zooms):
        s = TrainSettings(pairs=str(workspace), model=str(tiny_model), validation=region, validation_zooms=zooms)
        return stage.training_set(stage.resolve(s, tiny))

    every = validation(None)
    seen = sorted(set(zoom.loc[every.val_windows]))
    assert len(seen) >= 2
    coarse = validation(tuple(seen[:-1]))
    assert set(zoom.loc[coarse.val_windows]) == set(seen[:-1])
    assert set(coarse.val_windows) < set(every.val_windows)
    assert set(coarse.val_photos) <= set(every.val_photos)
    assert all(set(p) <= set(coarse.val_windows) for p in coarse.val_positives)  # positives among the kept ones
    with pytest.raises(StageError, match="no window of zoom 3"):
        validation((3,))


@pytest.mark.parametrize("only", [["--lambda2", "0"], ["--lambda1", "0", "--mining", "random"]])
def test_one_loss_alone_trains(tiny, workspace, tiny_model, tmp_path, only):
    """The ablation's rows: the pairwise loss alone (no quadruplets drawn) and MUM alone (no pair read)."""
    out = tmp_path / "m" / "model.pt"
    assert main(_args(tiny, workspace, tiny_model, out, "--steps", "1", *only)) == 0
    m = _metrics(out)
    row = m[m.kind == "train"].iloc[0]
    assert np.isfinite(row["loss"]) and (np.isnan(row["mum"]) if "--lambda2" in only else np.isnan(row["pair_pos"]))
    assert not (m.kind == "mining").any()  # neither needs clusters
