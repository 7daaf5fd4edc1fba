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


def _footprints(tiny: Path, folder: Path) -> list[str]:
    """3 photos with the cheap search of the footprint stage's tests, batches of one."""
    from test_footprints_stage import CHEAP

    (folder / "cheap.toml").write_text(CHEAP.replace("workers = 1\n", ""))
    args = ["run", "footprints", "--workdir", str(tiny), "--config", str(folder / "cheap.toml"), "--limit", "3"]
    return [*args, "--device", "cpu", "-q"]


def _footprints_table(path: Path) -> pd.DataFrame:
    return read_manifest(path, "footprints", geometry=False).drop(columns=["elapsed_s"])


@pytest.fixture(scope="module")
def local_footprints(tiny, tmp_path_factory) -> Path:
    """The local cluster's footprints: two workers of one torch thread each, as the two remote ones (float sums
    depend on the thread count)."""
    d = tmp_path_factory.mktemp("fp-local")
    assert main([*_footprints(tiny, d), "--out", str(d / "fp.parquet"), "--workers", "2"]) == 0
    return d / "fp.parquet"


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


def test_stages_through_real_processes_equal_the_local_run(cluster, tiny, model, local_footprints, tmp_path):
    from distributed import Client

    address, _ = cluster
    local, remote = tmp_path / "local" / "index.parquet", tmp_path / "remote" / "index.parquet"
    assert main([*_describe(tiny, local, model), "--workers", "1"]) == 0
    assert main([*_describe(tiny, remote, model), "--scheduler", address]) == 0
    _same(_store(local), _store(remote))
    # footprints
    assert main([*_footprints(tiny, tmp_path), "--out", str(tmp_path / "fp.parquet"), "--scheduler", address]) == 0
    pd.testing.assert_frame_equal(_footprints_table(local_footprints), _footprints_table(tmp_path / "fp.parquet"))
    assert (_footprints_table(local_footprints)["status"] == "localized").any()
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


def _kill_a_worker_when(address: str, parts: Path, pattern: str) -> threading.Thread:
    """A thread that SIGKILLs the first worker process of ``address`` once a file matching ``pattern`` appears under
    ``parts``; ``thread.killed`` then holds how many there were."""
    from distributed import Client

    with Client(address, timeout="30s") as client:
        client.wait_for_workers(2, timeout=60)  # the nanny of a worker killed before has started a new one
        victim = sorted(client.run(os.getpid).items())[0][1]

    def run() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            done = list(parts.glob(pattern))
            if done:
                os.kill(victim, signal.SIGKILL)
                t.killed = len(done)
                return
            time.sleep(0.05)

    t = threading.Thread(target=run)
    t.killed = 0
    t.start()
    return t


def test_a_killed_worker_loses_and_duplicates_nothing(cluster, tiny, model, local_footprints, tmp_path):
    """SIGKILL one worker process while describe runs, then while footprints runs: its tasks run again elsewhere,
    every descriptor and every photo is in the output exactly once, equal to an uninterrupted run's."""
    address, _ = cluster
    whole = tmp_path / "whole" / "index.parquet"
    assert main([*_describe(tiny, whole, model), "--workers", "1"]) == 0
    out = tmp_path / "killed" / "index.parquet"
    t = _kill_a_worker_when(address, out.parent, "*.parts/*/*.parquet")
    assert main([*_describe(tiny, out, model), "--scheduler", address]) == 0
    t.join()
    assert 0 < t.killed < 6, "the run ended before a worker could be killed"  # 3 + 3 batches
    got = _store(out)
    assert not got.duplicated(["kind", "id", "rotation_deg"]).any() and len(got) == 4 * 12 + 10
    _same(_store(whole), got)

    fp = tmp_path / "fp.parquet"
    t = _kill_a_worker_when(address, tmp_path, "fp.parquet.parts/*/batch*.parquet")
    assert main([*_footprints(tiny, tmp_path), "--out", str(fp), "--scheduler", address]) == 0
    t.join()
    assert 0 < t.killed < 3, "the run ended before a worker could be killed"
    got = _footprints_table(fp)
    assert got["photo_id"].is_unique and len(got) == 3
    pd.testing.assert_frame_equal(_footprints_table(local_footprints), got)


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


def test_file_urls_are_paths_and_other_urls_are_refused_with_a_way_out(tiny, tmp_path, capsys):
    """Shared storage: ``file://`` URLs (what fsspec and pyarrow write for local files) work as paths; ``s3://``,
    ``gs://``, ``memory://`` are refused naming the option and saying what to do."""
    base = ["run", "pairs", "--workdir", str(tiny), "--workers", "1", "-q"]
    assert main([*base, "--footprints", str(tiny / "truth.parquet"), "--out", str(tmp_path / "plain.parquet")]) == 0
    url = (tmp_path / "url dir" / "pairs.parquet").as_uri()  # a space: percent-encoded in the URL
    assert main([*base, "--footprints", (tiny / "truth.parquet").as_uri(), "--out", url]) == 0
    pd.testing.assert_frame_equal(
        pq.read_table(tmp_path / "plain.parquet").to_pandas(),
        pq.read_table(tmp_path / "url dir" / "pairs.parquet").to_pandas(),
    )
    for scheme in ("s3", "gs", "memory"):
        capsys.readouterr()
        assert main([*base, "--footprints", f"{scheme}://bucket/fp.parquet"]) == 1
        err = capsys.readouterr().err
        assert f"--footprints {scheme}://bucket/fp.parquet" in err and "mount the bucket" in err
