"""Seconds to render one 1024 x 1024 database window of the procedural world, per zoom.

    python bench/world_render.py [--repeats 3]

Prints the median of the repeats (after one warm-up) for 1 and 2 render threads side by side.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

CHILD = """
import statistics, sys, time
from pipeline.geometry.windows import windows_containing
from pipeline.world import ProceduralWorld
world = ProceduralWorld(region_lonlat=(3.0, 44.5, 9.0, 48.5), seed=0, cache_bytes=0)
for zoom in (8, 10, 12):
    w = windows_containing(5.0, 46.5, zoom)[0]
    world.render(w.bounds_mercator(), 1024, 1024)  # warm-up
    times = []
    for _ in range(int(sys.argv[1])):
        t = time.perf_counter(); world.render(w.bounds_mercator(), 1024, 1024); times.append(time.perf_counter() - t)
    print(zoom, statistics.median(times))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    results = {}
    for threads in (1, 2):
        env = dict(os.environ, PROCEDURAL_WORLD_THREADS=str(threads))
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(args.repeats)], env=env, check=True, capture_output=True, text=True
        ).stdout
        for line in out.split("\n"):
            if line.strip():
                z, s = line.split()
                results[(int(z), threads)] = float(s)
    print(f"{'zoom':>4}  {'1 thread s':>10}  {'2 threads s':>11}  {'ratio':>5}")
    for z in (8, 10, 12):
        a, b = results[(z, 1)], results[(z, 2)]
        print(f"{z:>4}  {a:>10.3f}  {b:>11.3f}  {a / b:>5.2f}")


if __name__ == "__main__":
    main()
