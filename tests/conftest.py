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
