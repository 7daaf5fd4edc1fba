"""Real Dask processes on loopback: a `dask scheduler` and two `dask worker` processes (one declaring GPU=1), the
stages run through ``--scheduler tcp://127.0.0.1:PORT``, their outputs compared with the local cluster's."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from manifests import read_manifest
from pipeline.descriptors import load_descriptors
from pipeline.model import ModelConfig
from pipeline.model.checkpoint import build_model, save_checkpoint
from stages.cli import main

DASK = str(Path(sys.executable).with_name("dask"))
SMALL = ModelConfig(
    "test", arch="vits14", image_px=126, clusters=8, cluster_dim=16, token_dim=32, out_dim=64, backbone="random"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(scheduler address, the processes): one scheduler, two single-threaded workers with nannies."""
    from distributed import Client

    logs = tmp_path_factory.mktemp("cluster")
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    out = lambda name: open(logs / f"{name}.log", "w")  # noqa: E731
    procs = [
        subprocess.Popen(
            [DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--dashboard-address", ":0"],
            stdout=out("scheduler"),
            stderr=subprocess.STDOUT,
        )
    ]
    for i, extra in enumerate((["--resources", "GPU=1"], [])):
        procs.append(
            subprocess.Popen(
                [DASK, "worker", address, "--nthreads", "1", "--name", f"w{i}", "--no-dashboard", *extra],
                stdout=out(f"w{i}"),
                stderr=subprocess.STDOUT,
            )
        )
    try:
        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=90)
        yield address, procs
    finally:
        for p in procs[::-1]:
            p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("model") / "small.pt", build_model(SMALL))


def _describe(tiny: Path, out: Path, model: Path, *extra: str) -> list[str]:
    args = ["run", "describe", "--workdir", str(tiny), "--out", str(out), "--model", str(model), "--zooms", "10"]
    return [*args, "--limit", "12", "--batch-size", "4", "--device", "cpu", "-q", *extra]


def _store(out: Path) -> pd.DataFrame:
    """Every descriptor of a store as one row per (kind, id, rotation), sorted, with its values."""
    frames = []
    for kind in ("window", "photo"):
        rows, desc = load_descriptors(out.parent, kind)
        frames.append(rows[["kind", "id", "rotation_deg"]].assign(values=list(desc)))
    return pd.concat(frames).sort_values(["kind", "id", "rotation_deg"]).reset_index(drop=True)


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert a[["kind", "id", "rotation_deg"]].equals(b[["kind", "id", "rotation_deg"]])
    assert np.allclose(np.stack(a["values"]), np.stack(b["values"]), atol=2e-3)  # float16, other thread counts


def test_stages_through_real_processes_equal_the_local_run(cluster, tiny, model, tmp_path):
    from distributed import Client

    address, _ = cluster
    local, remote = tmp_path / "local" / "index.parquet", tmp_path / "remote" / "index.parquet"
    assert main([*_describe(tiny, local, model), "--workers", "1"]) == 0
    assert main([*_describe(tiny, remote, model), "--scheduler", address]) == 0
    _same(_store(local), _store(remote))
    # footprints (3 photos, the cheap search of the footprint stage's tests)
    from test_footprints_stage import CHEAP

    (tmp_path / "cheap.toml").write_text(CHEAP.replace("workers = 1\n", ""))
    fp = [
        "run",
        "footprints",
        "--workdir",
        str(tiny),
        "--config",
        str(tmp_path / "cheap.toml"),
        "--limit",
        "3",
        "--device",
        "cpu",
        "-q",
    ]
    # two local workers: one torch thread each, as the two remote ones (float sums depend on the thread count)
    assert main([*fp, "--out", str(tmp_path / "f-local.parquet"), "--workers", "2"]) == 0
    assert main([*fp, "--out", str(tmp_path / "f-remote.parquet"), "--scheduler", address]) == 0
    table = lambda f: read_manifest(tmp_path / f, "footprints", geometry=False).drop(columns=["elapsed_s"])  # noqa: E731
    pd.testing.assert_frame_equal(table("f-local.parquet"), table("f-remote.parquet"))
    assert (table("f-local.parquet")["status"] == "localized").any()
    pairs = ["run", "pairs", "--workdir", str(tiny), "--footprints", str(tiny / "truth.parquet"), "-q"]
    assert main([*pairs, "--out", str(tmp_path / "p-local.parquet"), "--workers", "1"]) == 0
    assert main([*pairs, "--out", str(tmp_path / "p-remote.parquet"), "--scheduler", address]) == 0
    pd.testing.assert_frame_equal(
        pq.read_table(tmp_path / "p-local.parquet").to_pandas(),
        pq.read_table(tmp_path / "p-remote.parquet").to_pandas(),
    )
    # the workers got the local cluster's runtime from the plugin the stages register: the allocator's settings,
    # and the host's 2 cores shared by its 2 workers
    with Client(address, timeout="30s") as client:
        runtime = client.run(lambda: os.environ.get("ASTROLOC_WORKER_RUNTIME"))
    cores = len(os.sched_getaffinity(0))
    assert sorted(runtime.values()) == [f"malloc=True,torch_threads={max(1, cores // 2)}"] * 2


def test_a_killed_worker_loses_and_duplicates_nothing(cluster, tiny, model, tmp_path):
    """SIGKILL one worker process while describe runs: its tasks are run again elsewhere, every descriptor is in
    the store exactly once, and the store equals an uninterrupted run's."""
    from distributed import Client

    address, _ = cluster
    whole = tmp_path / "whole" / "index.parquet"
    assert main([*_describe(tiny, whole, model), "--workers", "1"]) == 0
    out = tmp_path / "killed" / "index.parquet"
    with Client(address, timeout="30s") as client:
        pids = client.run(os.getpid)
    victim = sorted(pids.items())[0][1]
    killed = []

    def kill_when_started() -> None:
        deadline = time.monotonic() + 120
        parts = out.parent
        while time.monotonic() < deadline:
            done = list(parts.glob("*.parts/*/*.parquet")) + list(parts.glob("**/window-*.parquet"))
            if done:
                os.kill(victim, signal.SIGKILL)
                killed.append(len(done))
                return
            time.sleep(0.05)

    t = threading.Thread(target=kill_when_started)
    t.start()
    assert main([*_describe(tiny, out, model), "--scheduler", address]) == 0
    t.join()
    assert killed and killed[0] < 6, "the run ended before a worker could be killed"  # 3 + 3 batches
    got = _store(out)
    assert not got.duplicated(["kind", "id", "rotation_deg"]).any() and len(got) == 4 * 12 + 10
    _same(_store(whole), got)
    with Client(address, timeout="30s") as client:  # the nanny started a new worker in its place
        client.wait_for_workers(2, timeout=60)


def _kill_when_parts(proc: subprocess.Popen, folder: Path, sig: int = signal.SIGKILL, n: int = 1) -> int:
    """Send ``sig`` to ``proc``'s process group once ``n`` describe parts are written under ``folder``; returns
    how many there were."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        done = list(folder.glob("*.parts/*/*.parquet"))
        if len(done) >= n:
            os.killpg(proc.pid, sig)
            return len(done)
        time.sleep(0.05)
    raise AssertionError("the run ended before it could be stopped")


def test_a_killed_client_resumes_where_it_stopped(cluster, tiny, model, tmp_path):
    address, _ = cluster
    whole = tmp_path / "whole" / "index.parquet"
    assert main([*_describe(tiny, whole, model), "--workers", "1"]) == 0
    out = tmp_path / "killed" / "index.parquet"
    cmd = [sys.executable, "-m", "pipeline", *_describe(tiny, out, model, "--scheduler", address)]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = _kill_when_parts(proc, out.parent)
    proc.wait()
    assert not out.exists() and done < 6
    again = [a for a in cmd if a != "-q"] + ["-v"]  # the log says it resumes
    r = subprocess.run(again, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resuming" in r.stderr
    got = _store(out)
    assert not got.duplicated(["kind", "id", "rotation_deg"]).any()
    _same(_store(whole), got)


def test_a_stopped_scheduler_stops_the_client_with_a_way_out_and_the_rerun_resumes(tiny, model, tmp_path):
    """The scheduler stops mid-run (SIGTERM): the client stops with a message that says to run the command again;
    against a new scheduler the rerun resumes at the finished parts."""
    from distributed import Client

    def start() -> tuple[str, list[subprocess.Popen]]:
        port = _free_port()
        address = f"tcp://127.0.0.1:{port}"
        log = open(tmp_path / f"{port}.log", "w")
        sched = [DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--dashboard-address", ":0"]
        procs = [subprocess.Popen(sched, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)]
        worker = [DASK, "worker", address, "--nthreads", "1", "--no-dashboard", "--death-timeout", "5"]
        procs.append(subprocess.Popen(worker, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        with Client(address, timeout="60s") as client:
            client.wait_for_workers(1, timeout=90)
        return address, procs

    def stop(procs: list[subprocess.Popen]) -> None:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()

    out = tmp_path / "store" / "index.parquet"
    address, procs = start()
    try:
        cmd = [sys.executable, "-m", "pipeline", *_describe(tiny, out, model, "--scheduler", address)]
        client = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not list(out.parent.glob("*.parts/*/*.parquet")) and time.monotonic() < deadline:
            time.sleep(0.05)
        procs[0].terminate()  # the scheduler
        _, err = client.communicate(timeout=120)
    finally:
        stop(procs)
    assert client.returncode == 1 and not out.exists(), err[-2000:]
    assert "run the same command again" in err and "resume" in err, err[-2000:]
    address, procs = start()
    try:
        again = [address if a.startswith("tcp://") else a for a in cmd]
        r = subprocess.run([a for a in again if a != "-q"] + ["-v"], capture_output=True, text=True, timeout=300)
    finally:
        stop(procs)
    assert r.returncode == 0 and "resuming" in r.stderr, r.stderr[-2000:]
    assert len(_store(out)) == 4 * 12 + 10
