"""ALIKED on a 768 px image with glibc's default allocator settings and with pipeline.runtime.tune_malloc.

Each setting runs in its own process (mallopt is process-wide); prints seconds, user and system
CPU time and page faults per image, medians of 5 after one warm-up.

    python bench/allocator.py
"""

from __future__ import annotations

import statistics
import subprocess
import sys

CHILD = """
import resource, sys, time, cv2, numpy as np
from pipeline.matching import build_extractor
from pipeline.runtime import tune_malloc
if sys.argv[1] == "tuned":
    tune_malloc()
ext = build_extractor("aliked", max_keypoints=1024)
img = cv2.GaussianBlur((np.random.default_rng(0).random((768, 768, 3)) * 255).astype(np.uint8), (0, 0), 2)
ext(img)
for _ in range(5):
    r0, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    ext(img)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    print(time.perf_counter() - t, r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime, r1.ru_minflt - r0.ru_minflt)
"""


def main() -> None:
    out = {}
    for mode in ("default", "tuned"):
        lines = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True).stdout
        rows = [list(map(float, line.split())) for line in lines.strip().splitlines()]
        out[mode] = [statistics.median(col) for col in zip(*rows)]
        w, u, s, f = out[mode]
        print(f"{mode:<8} {w:.3f} s per image (user {u:.3f} s, system {s:.3f} s, {f:,.0f} page faults)")
    print(f"tuned / default: {out['tuned'][0] / out['default'][0]:.2f}")


if __name__ == "__main__":
    main()
