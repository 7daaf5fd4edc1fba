"""Process-wide inference settings: which CPUs get bfloat16, which GPU a worker uses, the heap."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipeline.runtime import cpu_has_native_bf16

_FLAGS = "fpu vme de pse tsc msr pae mce cx8 apic sep avx2 avx512f avx512bw"


@pytest.mark.parametrize(
    "flags, expected",
    [
        (_FLAGS, False),  # AVX-512 alone: bfloat16 would be emulated
        (_FLAGS + " avx512_bf16 avx512_vnni", True),  # e.g. AMD Zen 4, Intel Cooper Lake
        (_FLAGS + " amx_bf16 amx_tile", True),  # Intel Sapphire Rapids
    ],
)
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, flags, expected):
    info = tmp_path / "cpuinfo"
    info.write_text(
        f"processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: avx512_bf16 in a name is not a flag\n"
        f"flags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n"
    )
    assert cpu_has_native_bf16(str(info)) is expected


def test_native_bf16_is_false_where_cpuinfo_is_missing(tmp_path):
    assert cpu_has_native_bf16(str(tmp_path / "no-such-file")) is False


def test_each_local_gpu_worker_gets_its_own_gpu():
    from pipeline.runtime import worker_device

    assert [worker_device("cuda", k, count=2) for k in range(4)] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert worker_device("cuda", "tcp://10.0.0.5:4242", count=1) == "cuda:0"  # a named remote worker, one GPU
    assert worker_device("cuda:1", 0, count=4) == "cuda:1" and worker_device("cpu", 3, count=4) == "cpu"
    assert worker_device("cuda", count=2) == "cuda:0"  # outside a Dask worker


_HEAP_CHILD = """
import numpy as np
from pipeline.runtime import release_heap_over, resident_mb, tune_malloc
assert tune_malloc()
blocks = [np.ones(2**20) for _ in range(32)]  # 32 x 8 MB, in the heap since tune_malloc raised the mmap threshold
del blocks
rss = [resident_mb()]
for limit in (None, 100 * resident_mb() * 2**20, 0.5 * resident_mb() * 2**20):  # none; far above; below
    released = release_heap_over(limit)
    rss.append(resident_mb())
    print(released, end=" ")
print(*rss)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's")
def test_the_heap_is_given_back_only_near_the_memory_limit():
    # a fresh process: the test process's heap is shared with everything else the suite ran
    out = subprocess.run([sys.executable, "-c", _HEAP_CHILD], capture_output=True, text=True, check=True)
    *released, freed, no_limit, far_below, near = out.stdout.split()
    assert released == ["False", "False", "True"]
    assert float(freed) - float(no_limit) < 20 and float(freed) - float(far_below) < 20  # MB: kept in the heap
    assert float(far_below) - float(near) > 200  # the 256 MB freed went back once resident memory neared the limit


def test_worker_memory_limit_is_the_dask_workers():
    from distributed import Client, LocalCluster

    from pipeline.runtime import worker_memory_limit

    assert worker_memory_limit() is None  # not in a worker
    with (
        LocalCluster(n_workers=1, processes=False, memory_limit="3GB", dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        assert client.submit(worker_memory_limit).result() == 3_000_000_000
