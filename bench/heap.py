"""A footprint worker's memory and speed with freed heap kept (tune_malloc alone) and given back after each photo.

:func:`pipeline.runtime.tune_malloc` keeps freed buffers in the heap, so that a photo's many images do
not each pay for fresh pages; but over a run the single arena fragments and a worker's resident memory
climbs to several times what it holds. :func:`pipeline.runtime.release_heap` hands the free pages back
between photos. Each mode runs the same photos with :class:`FootprintSearch` in its own process (the heap
is process-wide), modes alternating over ``--rounds``; prints per mode the median seconds per photo, the
resident memory after the last photo, the peak (``ru_maxrss``) and the heap in use (``mallinfo2``).

    python bench/heap.py --workdir workspace --photos 20 --rounds 2
    python bench/heap.py --workdir workspace --modes kornia-dense,keep   # ALIKED's dense maps: kornia's, in place
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = """
import ctypes, json, os, resource, sys, time
sys.path[:0] = [os.getcwd(), os.path.join(os.getcwd(), "bench")]
import argparse
from photo_set import open_photo_set
from pipeline.footprint.evidence import Catalogue
from pipeline.footprint.search import FootprintSearch
from pipeline.imagery.photos import read_photo
from pipeline.runtime import release_heap, resident_mb

mode, workdir, photos = sys.argv[1], sys.argv[2], int(sys.argv[3])
args = argparse.Namespace(workdir=workdir, queries=None, tiles=None, truth=None, photos=photos)
q, _, source = open_photo_set(args)
search = FootprintSearch(source)
if mode == "kornia-dense":  # kornia's own ALIKED.extract_dense_map instead of the in-place one
    vars(search._extract.model).pop("extract_dense_map")

class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Mallinfo2
seconds, rss, statuses = [], [], []
for r in q.head(photos).itertuples():
    t = time.perf_counter()
    res = search.localize(read_photo(r.image_path), r.center_lon, r.center_lat, Catalogue.from_row(r))
    if mode == "release":
        release_heap()
    seconds.append(time.perf_counter() - t)
    rss.append(resident_mb())
    statuses.append(res.status)
use = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"seconds": seconds, "rss_mb": rss, "peak_mb": use.ru_maxrss / 1024,
                  "in_use_mb": libc.mallinfo2().uordblks / 2**20, "statuses": statuses,
                  "sys_s": use.ru_stime, "user_s": use.ru_utime}))
"""

MODES = ("keep", "release", "kornia-dense")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", required=True, help="a sample workspace")
    ap.add_argument("--photos", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument(
        "--modes",
        default="keep,release",
        help=f"comma-separated, the first is the reference: {', '.join(MODES)} (keep with kornia's own "
        "ALIKED dense maps instead of the in-place ones)",
    )
    args = ap.parse_args()
    modes = tuple(args.modes.split(","))
    if len(modes) < 2 or set(modes) - set(MODES):
        ap.error(f"--modes: two or more of {', '.join(MODES)}")
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    for k in range(args.rounds):
        for mode in modes if k % 2 == 0 else modes[::-1]:
            out = subprocess.run(
                [sys.executable, "-c", CHILD, mode, args.workdir, str(args.photos)],
                capture_output=True,
                text=True,
                cwd=os.path.dirname(os.path.dirname(__file__)) or ".",
            )
            if out.returncode:
                sys.exit(f"{mode} run failed:\n{out.stderr[-3000:]}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            runs[mode].append(r)
            print(
                f"round {k + 1} {mode:<12} {sum(r['seconds']):7.1f} s for {len(r['seconds'])} photos, "
                f"resident {r['rss_mb'][-1]:6.0f} MB after the last, peak {r['peak_mb']:6.0f} MB, "
                f"heap in use {r['in_use_mb']:5.0f} MB, system CPU {r['sys_s']:5.1f} s",
                flush=True,
            )
    if len({json.dumps(rs[0]["statuses"]) for rs in runs.values()}) > 1:
        print("note: the modes' statuses differ")
    summary = {}
    for mode, rs in runs.items():
        per_photo = [s for r in rs for s in r["seconds"]]
        summary[mode] = (
            statistics.median([sum(r["seconds"]) / len(r["seconds"]) for r in rs]),
            statistics.median(per_photo),
            max(r["rss_mb"][-1] for r in rs),
            max(r["peak_mb"] for r in rs),
        )
        print(
            f"{mode:<12} {summary[mode][0]:.2f} s per photo (median of rounds; per-photo median "
            f"{summary[mode][1]:.2f} s), resident after the last photo up to {summary[mode][2]:.0f} MB, "
            f"peak {summary[mode][3]:.0f} MB"
        )
    k = summary[modes[0]]
    for mode in modes[1:]:
        r = summary[mode]
        print(
            f"{mode} / {modes[0]}: time {r[0] / k[0]:.3f}x, resident after the last photo {r[2] / k[2]:.2f}x, "
            f"peak {r[3] / k[3]:.2f}x"
        )


if __name__ == "__main__":
    main()
