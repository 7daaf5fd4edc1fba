"""The ceiling the orchestration puts on the footprints stage: photos per second through its Dask loop
(`stages.cluster.gather_isolating`, the loop `run footprints` uses) with tasks that do no matching (each writes
its batch's Parquet part and returns), on 1, 2 and 4 local worker processes over loopback TCP.

    python bench/cluster_scale.py --photos 2000 --workers 1,2,4 --batch-sizes 1,4
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def no_matching(items: list, part: str) -> dict:
    """A footprints task's shape without its work: one row per photo, written as the batch's part."""
    from manifests.files import atomic_output

    table = pa.table({"photo_id": [str(i) for i in items], "status": ["not_localized"] * len(items)})
    with atomic_output(part) as tmp:
        pq.write_table(table, tmp)
    return {"photos": len(items), "localized": 0}


def main() -> None:
    from dask.distributed import Client, LocalCluster

    from stages.cluster import gather_isolating

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=int, default=2000)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--batch-sizes", default="1,4")
    args = ap.parse_args()
    print("| workers | photos per task | photos | wall s | photos/s | ms per photo |")
    print("| --- | --- | --- | --- | --- | --- |")
    for n in [int(v) for v in args.workers.split(",")]:
        cluster = LocalCluster(
            n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0", protocol="tcp"
        )
        client = Client(cluster)
        client.submit(sum, [1, 2]).result()  # connected and warm
        for bs in [int(v) for v in args.batch_sizes.split(",")]:
            with tempfile.TemporaryDirectory() as d:
                ids = list(range(args.photos))
                work = [(f"{d}/batch{k:05d}.parquet", ids[i : i + bs]) for k, i in enumerate(range(0, len(ids), bs))]

                def submit(items, part, suffix, _d=d):
                    return client.submit(no_matching, items, part, key=f"noop-{Path(part).stem}{suffix}-{_d[-6:]}",
                                         retries=2, pure=False)  # fmt: skip

                t = time.perf_counter()
                gather_isolating(
                    client, work, submit, lambda row, e: pd.DataFrame(), lambda part, pieces: None, "noop", "localized"
                )
                wall = time.perf_counter() - t
            print(
                f"| {n} | {bs} | {args.photos} | {wall:.1f} | {args.photos / wall:.0f} | {1000 * wall / args.photos:.2f} |"
            )
        client.close()
        cluster.close()


if __name__ == "__main__":
    main()
