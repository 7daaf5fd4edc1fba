"""The workers of an existing Dask cluster get the runtime a local cluster gives its own (the allocator's settings,
torch threads: :func:`pipeline.runtime.apply_worker_runtime`), in one of two ways:

- **automatically**: a stage run with ``--scheduler`` registers :class:`WorkerRuntime` with the cluster; each
  worker (and each that joins later) then uses its host's cores divided by the workers the scheduler knows on
  that host as torch threads;
- **as a preload**, for workers started before any stage, or to set the threads by hand::

      dask worker tcp://HOST:8786 --nworkers 2 --nthreads 1 --preload stages.worker \\
          --preload-argv "--torch-threads 8" [--resources GPU=1]
"""

from __future__ import annotations

import click
from distributed.diagnostics.plugin import WorkerPlugin

from pipeline.runtime import apply_worker_runtime, host_cores


class WorkerRuntime(WorkerPlugin):
    """Registered by the stages on an existing cluster; ``per_host``: worker processes per host, as the scheduler
    knew them at registration (a worker of a host it did not know counts itself alone)."""

    name = "astroloc-worker-runtime"

    def __init__(self, per_host: dict[str, int]):
        self.per_host = dict(per_host)

    def setup(self, worker) -> None:
        n = max(1, self.per_host.get(worker.address.rsplit(":", 1)[0].split("://")[-1], 1))
        apply_worker_runtime(max(1, host_cores() // n))


def register_worker_runtime(client) -> dict[str, int]:
    """Register :class:`WorkerRuntime` with ``client``'s cluster; returns the workers per host it counted."""
    per_host: dict[str, int] = {}
    for w in client.scheduler_info().get("workers", {}).values():
        per_host[w["host"]] = per_host.get(w["host"], 0) + 1
    client.register_plugin(WorkerRuntime(per_host))
    return per_host


@click.command()
@click.option("--torch-threads", type=int, default=None, help="torch threads per worker (default: the host's cores)")
def dask_setup(worker, torch_threads: int | None) -> None:
    """The preload entry point (``dask worker --preload stages.worker``)."""
    apply_worker_runtime(torch_threads or host_cores())


__all__ = ["WorkerRuntime", "dask_setup", "register_worker_runtime"]
