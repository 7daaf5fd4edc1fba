"""Shared test fixtures: the real sample (skipped with a reason where ../shared is absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REAL_SAMPLE = REPO.parent / "shared" / "real-sample"


@pytest.fixture(scope="session")
def real_sample() -> Path:
    if not (REAL_SAMPLE / "queries.csv").is_file():
        pytest.skip(f"real sample not found at {REAL_SAMPLE} (it ships beside the repository as ../shared)")
    return REAL_SAMPLE


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Path:
    """The tiny sample workspace (``run sample --size tiny``), made once per test session.

    Tests must not change it; those that need their own write elsewhere."""
    from stages.cli import main

    out = tmp_path_factory.mktemp("tiny")
    assert main(["run", "sample", "--size", "tiny", "--workdir", str(out), "-q"]) == 0
    return out
