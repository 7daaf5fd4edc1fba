"""The Dask side shared by the stages: a client (local cluster or ``--scheduler``), the device policy and a
progress loop."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.progress import progress, quiet_distributed
from pipeline.runtime import cuda_device_count

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 30.0
"""How long ``--scheduler`` may take to connect and answer Dask's handshake, seconds."""


def check_device(device: Any, remote: bool = False) -> None:
    """``device`` must be ``auto``, ``cpu``, ``cuda`` (one GPU per worker) or ``cuda:N``; CUDA must exist here
    unless the workers are ``remote`` (an existing cluster's machines may have GPUs this one lacks)."""
    import re

    from stages.base import StageError

    if not isinstance(device, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise StageError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if device.startswith("cuda") and not remote:
        import torch

        if not torch.cuda.is_available():
            why = "torch was built without CUDA" if torch.version.cuda is None else "no GPU is visible"
            raise StageError(
                f"--device {device}: CUDA is not available here ({why}); use --device cpu, or "
                "--scheduler with a cluster whose workers have GPUs"
            )


def resolve_device(device: str, remote: bool = False) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU here, else ``cpu``; other values as given. With ``remote``
    workers ``auto`` stays: it is settled by the cluster's workers (:func:`cluster_device`)."""
    if device != "auto" or remote:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cluster_device(device: str, client: Any, scheduler: str) -> str:
    """The device on an existing cluster: ``auto`` -> ``cuda`` when a worker declares the ``GPU`` resource,
    else ``cpu``; ``cuda`` when none declares it is refused (its tasks, annotated ``{"GPU": 1}``, would wait
    for ever)."""
    from stages.base import StageError

    if not client.scheduler_info().get("workers"):  # a scheduler started before its (jobqueue, SLURM) workers
        log.info("waiting for the first worker of %s to decide the device", scheduler)
        client.wait_for_workers(1)
    workers = client.scheduler_info().get("workers", {})
    gpus = sum(1 for w in workers.values() if (w.get("resources") or {}).get("GPU", 0) >= 1)
    if device == "auto":
        device = "cuda" if gpus else "cpu"
        log.info("--device auto: %s (%d of the %d workers of %s declare a GPU)", device, gpus, len(workers), scheduler)
    elif device.startswith("cuda") and not gpus:
        raise StageError(
            f"--device {device}: none of the {len(workers)} workers of {scheduler} declares the GPU "
            "resource, so the tasks would wait for ever; start the workers with `dask worker "
            f"{scheduler} --resources GPU=1` on machines with a GPU, or pass --device cpu"
        )
    return device


def check_cluster_options(scheduler: Any, workers: Any) -> None:
    """Refuse a ``--scheduler`` address or ``--workers`` count that cannot work, before any work.

    ``scheduler``: None or ``[scheme://]host:port`` with a scheme Dask speaks (tcp, tls, ws, wss,
    ucx, inproc); a tcp one must answer Dask's handshake (:func:`probe_scheduler`). ``workers``:
    None or an integer >= 1 (0 or -1 would start a cluster that never runs a task). Stages call
    this in their ``check``, before any work and before :func:`dask_client`."""
    from stages.base import StageError

    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise StageError(
            f"--workers must be an integer of at least 1 (local worker processes), got {workers!r}; "
            "leave it out for one per core"
        )
    if scheduler is None:
        return
    if not isinstance(scheduler, str) or not scheduler:
        raise StageError(f"--scheduler must be an address such as tcp://host:8786, got {scheduler!r}")
    from distributed.comm import parse_address
    from distributed.comm.addressing import parse_host_port
    from distributed.comm.registry import backends

    scheme, loc = parse_address(scheduler)
    if scheme not in backends:
        raise StageError(
            f"--scheduler {scheduler}: Dask does not speak {scheme}://; give the scheduler's own "
            f"address (its log prints it), e.g. tcp://host:8786, not its dashboard"
        )
    if scheme in ("tcp", "tls"):
        try:
            parse_host_port(loc)
        except ValueError:
            raise StageError(f"--scheduler {scheduler}: no port; give host and port, e.g. tcp://{loc}:8786") from None
    if scheme == "tcp":  # tls and the others need the cluster's security settings to connect at all
        probe_scheduler(scheduler)


def probe_scheduler(address: str, timeout: float | None = None) -> None:
    """Connect to ``address`` and complete Dask's handshake within ``timeout`` seconds, or raise StageError.

    ``Client`` alone waits forever on a live port that is not a Dask scheduler (its handshake read
    has no time limit, distributed 2026.8): a dashboard, a web server or a database port would hang
    the run at start. The probe puts one deadline on the connection and the handshake together."""
    import asyncio

    from distributed.comm import connect

    from stages.base import StageError

    timeout = CONNECT_TIMEOUT_S if timeout is None else timeout

    async def handshake() -> None:
        comm = await connect(address, timeout=timeout)
        await comm.close()

    try:
        # connect() gives up on a closed port by itself (OSError); the outer deadline ends a handshake that hangs
        asyncio.run(asyncio.wait_for(handshake(), timeout + 2))
    except TimeoutError:
        raise StageError(
            f"--scheduler {address}: something listens there but did not answer as a Dask scheduler "
            f"in {timeout:g} s (another service, such as the dashboard? or a blocked scheduler); give "
            "the address the scheduler's log prints, usually tcp://host:8786"
        ) from None
    except OSError as e:
        raise StageError(
            f"cannot reach the Dask scheduler at {address} ({e}); is it running, and is this its "
            "address (the scheduler's log prints it)?"
        ) from None


def local_worker_count(requested: int | None, units: int, memory_bytes: float, need_bytes: float | None) -> int:
    """How many local worker processes to start: ``requested`` (``--workers``) when given, else one per
    ``units`` (cores, or GPUs) but no more than ``memory_bytes`` holds at ``need_bytes`` each (what a
    worker should have; None: no memory bound). Each local worker's Dask memory limit is memory / workers,
    and Dask pauses a worker above 80 % of it and restarts it above 95 %: 16 footprint workers on 16 cores
    and 32 GB would be restarted again and again. Logs a warning when it bounds the count, and when
    ``requested`` workers do not fit."""
    gb = 2**30
    if requested:
        if need_bytes and memory_bytes / requested < need_bytes:
            log.warning(
                "--workers %d: %.1f GB of memory each, less than the %.1f GB a worker should have; Dask "
                "pauses and restarts workers that near their limit: fewer --workers may finish sooner",
                requested,
                memory_bytes / requested / gb,
                need_bytes / gb,
            )
        return int(requested)
    n = max(1, int(units))
    if need_bytes:
        fit = max(1, int(memory_bytes // need_bytes))
        if fit < n:
            log.warning(
                "%d worker%s, not %d: %.1f GB of memory holds %d at the %.1f GB a worker should have "
                "(--workers overrides)",
                fit,
                "s" if fit > 1 else "",
                n,
                memory_bytes / gb,
                fit,
                need_bytes / gb,
            )
            n = fit
    return n


@contextmanager
def dask_client(
    scheduler: str | None,
    workers: int | None,
    gpu: bool = False,
    environ: dict[str, str] | None = None,
    worker_memory: float | None = None,
) -> Iterator[tuple[Any, int]]:
    """Yields ``(client, torch threads per worker)``; a local cluster is closed on exit.

    Local cluster: one process per core (per GPU with ``gpu``: worker k then uses GPU k, see
    :func:`pipeline.runtime.worker_device`), single-threaded for Dask, with
    cores / workers torch threads each: all cores busy, none oversubscribed (2 torch threads
    beside one other busy process made a footprints batch 5x slower: 41.6 s against 8.5 s).
    With ``gpu`` the workers declare the resource ``GPU: 1``. ``environ`` is set in the workers
    before they start. ``worker_memory``: bytes a worker should have, which bounds the default
    number of workers (:func:`local_worker_count`). With ``scheduler`` the threads are 0: leave them
    to the cluster. The options are those :func:`check_cluster_options` accepted.
    """
    from dask.distributed import Client, LocalCluster

    quiet_distributed()

    if scheduler:
        try:
            client, cluster, threads = Client(scheduler, timeout=f"{CONNECT_TIMEOUT_S:g}s"), None, 0
            from .worker import register_worker_runtime

            register_worker_runtime(client)  # the allocator and torch threads a local cluster gives its workers
        except OSError as e:
            from stages.base import StageError

            raise StageError(
                f"cannot reach the Dask scheduler at {scheduler} ({e}); is it running, and is this "
                "its address (the scheduler's log prints it)?"
            ) from None
    else:
        import dask
        from distributed.system import MEMORY_LIMIT  # the machine's memory, or its cgroup's / rlimit's limit

        from pipeline.runtime import host_cores

        cores = host_cores()  # the cores this process may run on (its CPU affinity: taskset, cpusets)
        n = local_worker_count(workers, cuda_device_count() if gpu else cores, MEMORY_LIMIT, worker_memory)
        threads = max(1, cores // n)
        env = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}), **(environ or {})}
        # ":0": the scheduler's HTTP server on a free port, so runs side by side never fight over 8787
        with dask.config.set({"distributed.nanny.pre-spawn-environ": env}):
            cluster = LocalCluster(
                n_workers=n,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",
                silence_logs=logging.WARNING,
                resources={"GPU": 1} if gpu else None,
            )
        client = Client(cluster)
    try:
        yield client, threads
    except KeyboardInterrupt:  # Ctrl-C: the closing cluster's tracebacks (cancelled tasks, closed comms) say
        # nothing to the user; the stage prints one line on how to resume
        for name in ("distributed", "tornado", "asyncio"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
        raise
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def lost_connection() -> tuple[type[BaseException], ...]:
    """What a future's ``result()`` raises when the client loses its scheduler: the task cancelled, or the
    connection closed while the result was being fetched (which of the two depends on the moment)."""
    from distributed.comm.core import CommClosedError

    return (CancelledError, CommClosedError)


def gather(futures: list, total: int, desc: str, postfix: str) -> None:
    """Wait for task futures with a progress bar; each task returns ``{"photos": n, postfix: m, ...}``."""
    from dask.distributed import as_completed

    done, lost = 0, lost_connection()
    with progress(total=total, desc=desc, unit="photo") as bar:
        for f in as_completed(futures):
            try:
                res = f.result()
            except lost as e:  # the scheduler went away (or someone cancelled the task there)
                from stages.base import StageError

                raise StageError(
                    f"a {desc} task was cancelled ({type(e).__name__}: {str(e).splitlines()[0]}): the connection to "
                    "the Dask scheduler was lost, or the task was cancelled on the cluster. The finished parts are "
                    "kept: run the same command again to resume from them"
                ) from None
            done += res[postfix]
            bar.set_postfix({postfix: done}, refresh=False)  # a running total, not the last task's; drawn by
            bar.update(res["photos"])  # update, at the bar's interval (refresh=True would draw a line per task)


def in_flight_batches(client: Any) -> int:
    """How many batches to keep submitted at once: four per worker thread of the cluster now (at least 8).

    Enough that no worker waits for its next task between two gathers; few enough that the client and the
    scheduler hold a bounded number of tasks (``python bench/dask_window.py --batches 10000``: submitted at once,
    the first result came after 7.3 s and the client's process grew by 22 KB per batch, about 28 GB for the
    1.25M batches of a 5M-photo backlog; with this window 0.1 s and 58 MB in all)."""
    return max(8, 4 * sum(client.nthreads().values()))


def gather_isolating(
    client: Any,
    work: list[tuple[str, list]],
    submit: Callable[[list, str, str], Any],
    failed_rows: Callable[[Any, BaseException], Any],
    assemble: Callable[[str, list], None],
    desc: str,
    postfix: str,
    in_flight: int | None = None,
) -> list[str]:
    """Run batches as Dask tasks with a progress bar; a batch that fails for good is run again item by item.

    Args:
        work: ``(part, items)`` per batch: the task for ``items`` writes the file ``part``.
        submit: ``submit(items, part, suffix)`` submits one task (``suffix`` makes its key unique) that
            writes ``part`` and returns ``{"photos": n, postfix: m}``.
        failed_rows: rows (a DataFrame) saying why ``item`` failed, given the exception.
        assemble: ``assemble(part, pieces)`` writes ``part`` (atomically) from pieces, each a finished
            single-item part's path or ``failed_rows``' rows, in the batch's order.
        in_flight: tasks submitted and not yet gathered, at most (None: :func:`in_flight_batches`, looked up
            again every minute, so a cluster that grows gets more); batches are submitted in ``work``'s order.

    Raises:
        StageError: a task was cancelled (the connection to the scheduler was lost, or someone cancelled it):
            its batch did not fail, so it is not run item by item; the finished parts stay for a resume.

    A task that fails for good (its worker died in every try: out of memory, or a crash in native code;
    or it raised) does not stop the others. Its batch's items run again one per task (into
    ``part.NNN``). An item whose task fails too is run once more at the end, alone on the cluster: a
    worker that dies takes the tasks queued on it down with it, so only an item that fails alone is
    taken to be the cause, and becomes ``failed_rows``. The batch's part is then assembled from its
    pieces. So a photo that kills its worker costs its own row, not the run. Returns a line per item
    that failed alone.
    """
    from dask.distributed import as_completed

    pieces: dict[int, dict[int, Any]] = {}
    lost = lost_connection()
    failed: list[str] = []
    suspects: list[tuple[int, int | None]] = []
    done = 0

    def cancelled(part: str, e: BaseException) -> None:
        from stages.base import StageError

        raise StageError(
            f"{Path(part).name}'s task was cancelled ({type(e).__name__}: {e}): the connection to the "
            "Dask scheduler was lost, or the task was cancelled on the cluster. The finished batches are "
            "kept: run the same command again to resume from them"
        ) from None

    def single_part(b: int, j: int | None) -> str:
        return work[b][0] if j is None else f"{work[b][0]}.{j:03d}"

    def finish_piece(b: int, j: int | None, piece: Any) -> None:
        part, items = work[b]
        if j is None:  # a one-item batch: its own part
            if not isinstance(piece, str):
                assemble(part, [piece])
            return
        pieces[b][j] = piece
        if len(pieces[b]) == len(items):
            assemble(part, [pieces[b][k] for k in range(len(items))])
            for k in range(len(items)):
                Path(f"{part}.{k:03d}").unlink(missing_ok=True)

    with progress(total=sum(len(items) for _, items in work), desc=desc, unit="photo") as bar:

        def count(res: dict) -> None:
            nonlocal done
            done += res[postfix]
            bar.set_postfix({postfix: done}, refresh=False)  # drawn by update, at the bar's interval
            bar.update(res["photos"])

        pending: dict[Any, tuple[int, int | None]] = {}
        running = as_completed()
        queued = iter(enumerate(work))
        window, looked = in_flight, time.monotonic()

        def top_up() -> None:
            nonlocal window, looked
            if in_flight is None and (window is None or time.monotonic() - looked > 60.0):
                window, looked = in_flight_batches(client), time.monotonic()
            while len(pending) < window:
                nxt = next(queued, None)
                if nxt is None:
                    return
                b, (part, items) = nxt
                f = submit(items, part, str(b))
                pending[f] = (b, None)
                running.add(f)

        top_up()
        for f in running:
            b, j = pending.pop(f)
            part, items = work[b]
            try:
                res = f.result()
            except lost as e:
                cancelled(part, e)
            except Exception as e:  # noqa: BLE001 - whatever it was, the other batches go on
                if j is None and len(items) > 1:
                    log.warning(
                        "%s: the task failed for good (%s: %s); running its %d items one by one",
                        Path(part).name,
                        type(e).__name__,
                        e,
                        len(items),
                    )
                    pieces[b] = {}
                    for k, item in enumerate(items):
                        g = submit([item], single_part(b, k), f"{b}-{k}")
                        pending[g] = (b, k)
                        running.add(g)
                else:
                    suspects.append((b, j))
            else:
                count(res)
                if j is not None:
                    finish_piece(b, j, single_part(b, j))
            top_up()
        for b, j in suspects:  # one at a time, nothing else running
            item = work[b][1][0 if j is None else j]
            try:
                res = submit([item], single_part(b, j), f"{b}-{0 if j is None else j}-alone").result()
                finish_piece(b, j, single_part(b, j))
            except lost as e:
                cancelled(work[b][0], e)
            except Exception as e:  # noqa: BLE001
                name = item.get("photo_id", item) if isinstance(item, dict) else item
                failed.append(f"{name}: {type(e).__name__}: {e}")
                log.warning("%s failed alone (%s: %s); recorded as an error", name, type(e).__name__, e)
                finish_piece(b, j, failed_rows(item, e))
                res = {"photos": 1, postfix: 0}
            count(res)
    return failed
