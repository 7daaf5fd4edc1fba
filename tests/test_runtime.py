"""Process-wide inference settings: which CPUs get bfloat16."""

from __future__ import annotations

import pytest

from pipeline.runtime import cpu_has_native_bf16

_FLAGS = "fpu vme de pse tsc msr pae mce cx8 apic sep avx2 avx512f avx512bw"


@pytest.mark.parametrize("flags, expected", [
    (_FLAGS, False),  # AVX-512 alone: bfloat16 would be emulated
    (_FLAGS + " avx512_bf16 avx512_vnni", True),  # e.g. AMD Zen 4, Intel Cooper Lake
    (_FLAGS + " amx_bf16 amx_tile", True),  # Intel Sapphire Rapids
])
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, flags, expected):
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: avx512_bf16 in a name is not a flag\n"
                    f"flags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    assert cpu_has_native_bf16(str(info)) is expected


def test_native_bf16_is_false_where_cpuinfo_is_missing(tmp_path):
    assert cpu_has_native_bf16(str(tmp_path / "no-such-file")) is False


def test_each_local_gpu_worker_gets_its_own_gpu():
    from pipeline.runtime import worker_device

    assert [worker_device("cuda", k, count=2) for k in range(4)] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert worker_device("cuda", "tcp://10.0.0.5:4242", count=1) == "cuda:0"  # a named remote worker, one GPU
    assert worker_device("cuda:1", 0, count=4) == "cuda:1" and worker_device("cpu", 3, count=4) == "cpu"
    assert worker_device("cuda", count=2) == "cuda:0"  # outside a Dask worker
