"""The footprints stage's batches submitted all at once (the path before) against a window at a time.

Each mode runs in its own process (peak memory is process-wide): a local cluster of ``--workers``
single-threaded worker processes, ``--batches`` tasks shaped as the footprints stage's (4 rows of a
queries table each, with the search's settings, ``retries=2``, one key per batch) run through
:func:`stages.cluster.gather_isolating`: ``all`` submits every batch before gathering any
(``in_flight`` = all, as the stage did), ``window`` keeps :func:`stages.cluster.in_flight_batches`
submitted. The tasks only sleep ``--task-ms``, so what is measured is the client's and the
scheduler's share (a LocalCluster's scheduler runs in the client's process). Prints per mode the
seconds to the first gathered result, the wall time, and the process's peak resident memory above
its level once the cluster was up.

    python bench/dask_window.py --batches 20000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, os, resource, sys, time
sys.path.insert(0, os.getcwd())
from contextlib import contextmanager
from dask.distributed import Client, LocalCluster
import stages.cluster as cluster
from pipeline.footprint.settings import SearchSettings

mode, n, workers, task_s = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
first = []

class Bar:
    def update(self, k=1):
        if not first:
            first.append(time.perf_counter())
    def set_postfix(self, *a, **k):
        pass

@contextmanager
def bar(**kw):
    yield Bar()

cluster.progress = bar  # measured, not drawn

def run_batch(rows, tiles, conf, device, part, threads, model):
    time.sleep(task_s)
    return {"photos": len(rows), "localized": 0}

def rows(b):
    return [{"photo_id": f"ISS064-E-{4 * b + k}", "image_path": f"/data/photos/ISS064-E-{4 * b + k}.jpg",
             "center_lat": 10.0 + k, "center_lon": 40.0 + k, "nadir_lat": 11.0, "nadir_lon": 43.0,
             "focal_length_mm": 140.0, "tilt_deg": 39.0, "cloud_pct": 50.0, "_row": 4 * b + k} for k in range(4)]

with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as lc, \
        Client(lc) as client:
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    work = [(f"/tmp/parts/batch{b:07d}.parquet", rows(b)) for b in range(n)]
    search = SearchSettings()

    def submit(items, part, suffix):
        return client.submit(run_batch, items, "/data/tiles", search, "cpu", part, 1, None,
                             key=f"footprints-bench-{suffix}", retries=2, pure=False)

    t0 = time.perf_counter()
    cluster.gather_isolating(client, work, submit, None, None, "bench", "localized",
                             in_flight=n if mode == "all" else None)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"mode": mode, "first_s": first[0] - t0, "wall_s": wall, "peak_mb": (peak - base) / 1024,
                      "in_flight": n if mode == "all" else cluster.in_flight_batches(client)}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=20000, help="tasks (4 photos each)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--task-ms", type=float, default=1.0, help="each task sleeps this long")
    ap.add_argument("--modes", default="all,window")
    a = ap.parse_args()
    print(f"{a.batches} batches ({4 * a.batches} photos), {a.workers} workers, tasks of {a.task_ms:g} ms")
    print(f"{'mode':<8} {'in flight':>9} {'first result s':>15} {'wall s':>8} {'peak MB above start':>20}")
    for mode in a.modes.split(","):
        out = subprocess.run(
            [sys.executable, "-c", CHILD, mode, str(a.batches), str(a.workers), str(a.task_ms / 1000)],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        if out.returncode:
            sys.exit(f"{mode} failed:\n{out.stderr[-3000:]}")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{r['mode']:<8} {r['in_flight']:>9} {r['first_s']:>15.1f} {r['wall_s']:>8.1f} {r['peak_mb']:>20.0f}")


if __name__ == "__main__":
    main()
