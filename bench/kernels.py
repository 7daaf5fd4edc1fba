"""The CPU kernel choices of the footprint search, each against the path it replaced, side by side in one run.

* ALIKED on channels-last tensors (the default) against NCHW: seconds per image (median), and how far the
  features move (share of keypoints within 1e-3 px of an NCHW keypoint, largest shift, largest descriptor change).
* ALIKED's dense maps built in place (the default, :func:`~pipeline.matching.extractors.aliked_dense_map`)
  against kornia's own ``extract_dense_map``: seconds per image (median), how far one extraction raises the peak
  resident memory, and whether the features are identical.
* LightGlue in mixed precision (bfloat16 on the CPU, what ``half`` gives on a CPU with native bfloat16) against
  float32: milliseconds per pair (median), matches and MAGSAC++ inliers, for a pair that matches (a real photo
  against a perspective warp of itself) and one that does not (two real photos of different places).
* LightGlue on prepared images (``matcher.prepare``: each image's input projection, positional encoding and first
  self-attention done once, as the search does for a photo turn met by 20 windows and a window met by 4 turns)
  against unprepared, both in the mixed precision of the search: milliseconds per pair and whether the matches
  are identical.

    python bench/kernels.py                      # the real sample's photos beside the repository
    python bench/kernels.py --size 768 --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from pipeline.matching import build_extractor, build_matcher, estimate_homography
from pipeline.runtime import cpu_has_native_bf16, release_heap, tune_malloc

PHOTOS = Path(__file__).resolve().parents[1].parent / "shared" / "real-sample" / "photos"


def median_s(fn, repeats: int) -> tuple[float, object]:
    out = fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def peak_rise_mb(fn) -> float:
    """How far one call of ``fn`` raises this process's peak resident memory above its resident memory before,
    in MB: the heap's free pages handed back first (``malloc_trim``), then Linux's peak counter reset
    (``/proc/self/clear_refs``), the call, and ``VmHWM`` read back. NaN where Linux does not offer that."""

    def status_kb(key: str) -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))

    try:
        release_heap()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = status_kb("VmRSS")
        fn()
        return (status_kb("VmHWM") - before) / 1024
    except OSError:
        return float("nan")


def read(path: Path, size: int) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise SystemExit(f"cannot read {path}; pass --photo and --other (the real sample ships beside the repository)")
    return np.ascontiguousarray(cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)[..., ::-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--photo", type=Path, default=PHOTOS / "ISS051-E-43872.jpg")
    ap.add_argument("--other", type=Path, default=PHOTOS / "ISS062-E-24032.jpg", help="a photo of another place")
    ap.add_argument("--size", type=int, default=768, help="image side, pixels")
    ap.add_argument(
        "--dense-size",
        type=int,
        default=1024,
        help="image side for the dense-map comparison, pixels (the refinement's surroundings: 1024)",
    )
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    tune_malloc()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, native bfloat16: {cpu_has_native_bf16()}")
    photo, other = read(args.photo, args.size), read(args.other, args.size)
    warp = np.array([[0.9, 0.15, 20.0], [-0.1, 0.95, 30.0], [1e-4, -5e-5, 1.0]])
    warped = cv2.warpPerspective(photo, warp, (args.size, args.size))

    fast = build_extractor("aliked", max_keypoints=1024)
    plain = build_extractor("aliked", max_keypoints=1024, channels_last=False)
    t_plain, f_plain = median_s(lambda: plain(photo), args.repeats)
    t_fast, f_fast = median_s(lambda: fast(photo), args.repeats)
    dist, j = torch.cdist(torch.as_tensor(f_plain["keypoints"]), torch.as_tensor(f_fast["keypoints"])).min(1)
    ddesc = (torch.as_tensor(f_plain["descriptors"]) - torch.as_tensor(f_fast["descriptors"])[j]).abs().max()
    print(
        f"\nALIKED at {args.size} x {args.size}: NCHW {t_plain:.3f} s, channels-last {t_fast:.3f} s "
        f"({t_plain / t_fast:.2f}x); {len(f_plain['keypoints'])} / {len(f_fast['keypoints'])} keypoints, "
        f"{float((dist < 1e-3).float().mean()):.0%} within 1e-3 px, largest shift {float(dist.max()):.2f} px, "
        f"largest descriptor change {float(ddesc):.1e}"
    )

    print(
        f"\nALIKED's dense maps at {args.dense_size} x {args.dense_size}, built in place (the default) against "
        "kornia's own method:"
    )
    dense_photo = read(args.photo, args.dense_size)
    lean, kornia_own = fast, build_extractor("aliked", max_keypoints=1024, lean_dense_map=False)
    rows = {}
    for name, ext in (("kornia", kornia_own), ("in place", lean)):
        rise = peak_rise_mb(lambda: ext(dense_photo))
        t, feats = median_s(lambda: ext(dense_photo), args.repeats)
        rows[name] = (t, rise, feats)
    (tk, rk, fk), (tl, rl, fl) = rows["kornia"], rows["in place"]
    same = all(
        torch.equal(torch.as_tensor(fk[k]), torch.as_tensor(fl[k])) for k in ("keypoints", "descriptors", "scores")
    )
    print(
        f"  kornia {tk:.3f} s, peak +{rk:.0f} MB; in place {tl:.3f} s ({tk / tl:.2f}x), peak +{rl:.0f} MB "
        f"({rl / rk:.2f}x); identical features: {same}"
    )

    f0, f_warp, f_other = fast(photo), fast(warped), fast(other)
    full, mixed = build_matcher("aliked"), build_matcher("aliked", mp=True)
    print("\nLightGlue, per pair (median):")
    for label, f1 in (("matching pair", f_warp), ("non-matching pair", f_other)):
        row = []
        for name, matcher in (("float32", full), ("mixed", mixed)):
            t, (m0, m1, _) = median_s(lambda: matcher(f0, f1), args.repeats)
            _, mask = estimate_homography(m0, m1)
            row.append((name, t, len(m0), 0 if mask is None else int(mask.sum())))
        (n0, t0, m0_, i0), (n1, t1, m1_, i1) = row
        print(
            f"  {label:<18} {n0} {t0 * 1000:.0f} ms ({m0_} matches, {i0} inliers), {n1} {t1 * 1000:.0f} ms "
            f"({m1_} matches, {i1} inliers): {t0 / t1:.2f}x"
        )

    print("\nLightGlue on prepared images, per pair (median, mixed precision):")
    p0 = mixed.prepare(f0)
    for label, f1 in (("matching pair", f_warp), ("non-matching pair", f_other)):
        p1 = mixed.prepare(f1)
        t_raw, raw = median_s(lambda: mixed.match_indices(f0, f1), args.repeats)
        t_prep, prep = median_s(lambda: mixed.match_indices(p0, p1), args.repeats)
        same = np.array_equal(raw[0], prep[0]) and np.array_equal(raw[1], prep[1])
        print(
            f"  {label:<18} unprepared {t_raw * 1000:.0f} ms, prepared {t_prep * 1000:.0f} ms "
            f"({t_raw / t_prep:.2f}x), {len(prep[0])} matches, identical: {same}"
        )


if __name__ == "__main__":
    main()
