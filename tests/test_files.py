"""Atomic output: the file appears whole or not at all, with ordinary permissions."""

import os
import stat

import pytest

from manifests.files import atomic_output


def test_atomic_output_writes_with_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_output(tmp_path / "sub" / "out.txt") as tmp:
            tmp.write_text("done")
    finally:
        os.umask(old)
    out = tmp_path / "sub" / "out.txt"
    assert out.read_text() == "done"
    assert stat.S_IMODE(out.stat().st_mode) == 0o644  # not mkstemp's 0o600
    assert [p.name for p in out.parent.iterdir()] == ["out.txt"]  # no temporary left


def test_atomic_output_leaves_old_file_on_error(tmp_path):
    out = tmp_path / "out.txt"
    out.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_output(out) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed half way")
    assert out.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
