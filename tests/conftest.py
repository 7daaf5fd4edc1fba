"""Shared test fixtures: the real sample (skipped with a reason where ../shared is absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REAL_SAMPLE = REPO.parent / "shared" / "real-sample"

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs several test processes (pytest-xdist). Each gets its own share of the cores (its CPU
    # affinity, which the processes it starts inherit: a stage's local Dask cluster counts those cores) and as
    # many torch threads. With two threads in each of two processes on two cores, one process's threads
    # spin-wait while the other's hold the cores, and the suite ran no faster than in one process.
    _index = int(os.environ["PYTEST_XDIST_WORKER"].removeprefix("gw") or 0)
    _count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    _cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    _share = max(1, len(_cores) // _count)
    if len(_cores) >= _count > 1:
        os.sched_setaffinity(0, _cores[(_index % _count) * _share : (_index % _count + 1) * _share])
    os.environ["OMP_NUM_THREADS"] = str(_share)
    import torch

    torch.set_num_threads(_share)


@pytest.fixture(scope="session")
def real_sample() -> Path:
    if not (REAL_SAMPLE / "queries.csv").is_file():
        pytest.skip(f"real sample not found at {REAL_SAMPLE} (it ships beside the repository as ../shared)")
    return REAL_SAMPLE


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Path:
    """The tiny sample workspace (``run sample --size tiny``), made once per test session: under pytest-xdist
    (``make test`` runs two processes) the first process to get here makes it, under a lock, and the others
    read the same folder.

    Tests must not change it; those that need their own write elsewhere."""
    from filelock import FileLock

    from stages.cli import main

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by the session's worker processes
    out = root / "tiny-sample"
    with FileLock(str(root / "tiny-sample.lock")):
        if not (root / "tiny-sample.made").is_file():
            assert main(["run", "sample", "--size", "tiny", "--workdir", str(out), "-q"]) == 0
            (root / "tiny-sample.made").touch()
    return out
