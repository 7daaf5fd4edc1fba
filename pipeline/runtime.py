"""Process-wide settings for model inference on the CPU.

glibc hands every allocation above its mmap threshold (at most 32 MB by default) straight to
``mmap`` and returns it with ``munmap`` when freed. Feature extractors allocate dense maps of
hundreds of MB per image (ALIKED at 768 x 768: 128 channels x 590k pixels x 4 bytes = 300 MB),
so each image paid for ~500k page faults: half of ALIKED's time on 2 cores was spent in the
kernel (``python bench/allocator.py``: 1.20 s -> 0.67 s per 768 px image after :func:`tune_malloc`). Raising the mmap
and trim thresholds keeps freed buffers in the heap for the next image. The price, a heap that
only grows, is paid back between photos by :func:`release_heap`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_THRESHOLD = 2**31 - 1  # bytes; mallopt takes an int
_done = False


def host_cores() -> int:
    """The cores this process may run on: its CPU affinity (``taskset``, a container's cpuset, a test process's
    share), which the processes it starts inherit; the machine's count where affinity is unknown (not Linux)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def tune_malloc() -> bool:
    """Keep large freed buffers in the heap (glibc only; idempotent). Returns whether it applied."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, _THRESHOLD)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _THRESHOLD))
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        ok = False
    if not ok:
        log.debug("mallopt not available; large buffers stay mmap-backed")
    _done = ok
    return ok


_M_ARENA_MAX = -8


def one_arena() -> bool:
    """At most one malloc arena from now on (glibc ``mallopt(M_ARENA_MAX, 1)``): what ``MALLOC_ARENA_MAX=1``
    does for a process started with it (:func:`worker_environ`), for a process already running (a worker of an
    existing cluster). Returns whether it applied."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_ARENA_MAX, 1))
    except (OSError, AttributeError):
        return False


def apply_worker_runtime(torch_threads: int | None = None) -> dict[str, object]:
    """In a worker process of an existing Dask cluster: the runtime a local cluster gives its workers (the
    allocator of :func:`tune_malloc` with one arena, ``torch_threads`` torch threads: Dask starts its workers
    with ``OMP_NUM_THREADS=1``). Returns what it set (also kept in ``ASTROLOC_WORKER_RUNTIME``)."""
    import os

    import torch

    done: dict[str, object] = {"malloc": tune_malloc() and one_arena()}
    if torch_threads:
        torch.set_num_threads(int(torch_threads))
    done["torch_threads"] = torch.get_num_threads()
    os.environ["ASTROLOC_WORKER_RUNTIME"] = ",".join(f"{k}={v}" for k, v in done.items())
    return done


def release_heap() -> bool:
    """Hand the heap's free pages back to the OS (glibc ``malloc_trim``; no-op elsewhere). Returns whether it ran.

    The counterpart of :func:`tune_malloc`: with it a process's one arena fragments over a run and its
    resident memory climbs to its fragmented peak heap, about 4 times what it holds (20 sample photos in
    one process: 4.0 GB resident for 1.0 GB in use, ``python bench/heap.py``), and never comes back by
    itself. See :func:`release_heap_over` for when the footprint workers call it.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        return False
    return True


def release_heap_over(limit_bytes: float | None, fraction: float = 0.7) -> bool:
    """:func:`release_heap` when this process's resident memory is above ``fraction`` x ``limit_bytes``
    (a Dask worker's memory limit, :func:`worker_memory_limit`; None: never). Returns whether it released.

    Between photos in a Dask worker. Dask starts acting at 70 % of a worker's limit and pauses the worker
    above 80 % until its memory falls again, but a heap kept by :func:`tune_malloc` never falls: the worker
    stays paused and the run hangs (a 1-worker local cluster with a 4.2 GB limit stopped at photo 12 of 24
    for good). Released only then, since giving the pages back costs the next photo their faults: 8 % more
    time over 20 sample photos in one process (``python bench/heap.py``), for 0.37x the resident memory
    between photos (1.4 GB instead of 4.0 GB); the peak while a photo is matched hardly changes.
    """
    if not limit_bytes or resident_mb() * 2**20 <= fraction * limit_bytes:
        return False
    return release_heap()


def worker_memory_limit() -> int | None:
    """The memory limit of the Dask worker this runs in, bytes; None outside a worker or without a limit."""
    try:
        from distributed import get_worker

        return get_worker().memory_manager.memory_limit or None
    except (ImportError, ValueError, AttributeError):  # not in a Dask worker
        return None


def resident_mb() -> float:
    """This process's resident memory in MB (2**20 bytes), as Dask measures it (psutil)."""
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def worker_environ() -> dict[str, str]:
    """Environment for worker processes that run models: the same allocator settings from the start.

    Dask's nanny sets ``MALLOC_TRIM_THRESHOLD_=65536`` in its workers (to hand memory back to the
    OS), which undoes :func:`tune_malloc` for tasks; and a task runs in a worker thread, whose own
    malloc arena cannot hold a 300 MB buffer, so one arena. Measured on 3 real-sample photos in
    one worker: sys time 14.7 -> 8.8 s, wall 50.9 -> 44.4 s.
    """
    big = str(_THRESHOLD)
    return {"MALLOC_TRIM_THRESHOLD_": big, "MALLOC_MMAP_THRESHOLD_": big, "MALLOC_ARENA_MAX": "1"}


_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (x86 AVX512-BF16 or AMX-BF16 in ``cpuinfo``'s flags).

    On such a CPU, oneDNN runs bfloat16 matrix products at about twice the float32 rate (LightGlue on
    2 EPYC cores: 1.9x, ``python bench/kernels.py``). Elsewhere bfloat16 is emulated and buys nothing, so the
    answer is False on any other platform or when the file cannot be read.
    """
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[-1].split())
                    return any(flag in flags for flag in _BF16_FLAGS)
    except OSError:
        pass
    return False


def cuda_device_count() -> int:
    """GPUs visible to this process (at least 1, so that ``--device cuda`` without one fails in torch with its
    own message rather than here)."""
    import torch

    return max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1


def worker_device(device: str, worker_name: object = None, count: int | None = None) -> str:
    """The torch device a Dask worker uses for ``device``: a bare ``"cuda"`` becomes ``"cuda:k"``, k = the
    worker's number modulo the GPUs it sees, so the local cluster's worker k uses GPU k. On a cluster whose
    workers each see one GPU (``CUDA_VISIBLE_DEVICES`` per worker, as dask-cuda sets it) that is ``"cuda:0"``.
    ``"cpu"`` and explicit ``"cuda:N"`` are kept. ``worker_name``: the worker's name (the current worker's
    when None); ``count``: GPUs visible (torch's when None)."""
    if device != "cuda":
        return device
    if worker_name is None:
        try:
            from distributed import get_worker

            worker_name = get_worker().name
        except (ImportError, ValueError):  # not in a Dask worker
            worker_name = 0
    count = cuda_device_count() if count is None else max(1, int(count))
    try:
        k = int(worker_name)
    except (TypeError, ValueError):
        k = 0
    return f"cuda:{k % count}"
