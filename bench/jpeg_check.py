"""The JPEG structure check (:func:`pipeline.imagery.photos.jpeg_damage`) against decoding: its cost, and which damage it sees.

* Cost: milliseconds per file (median) of the check and of ``cv2.imdecode`` on the same bytes, for the real
  sample's largest photo and for a generated 6000 x 4000 photo-like JPEG (noise plus gradients, quality 95, a
  camera-sized file).
* Damage: for seeded random cuts (the file ends at a random byte of its compressed data) and random overwrites
  (16 random bytes written at a random offset of the compressed data), the share of files the check refuses.
  libjpeg decodes all of them with warnings only; an overwrite that forms no invalid marker and leaves the
  structure whole is invisible to a structural check (it decodes to wrong but valid pixels).

    python bench/jpeg_check.py
    python bench/jpeg_check.py --trials 500 --photo ../shared/real-sample/photos/ISS064-E-513.jpg
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import cv2
import numpy as np

from pipeline.imagery.photos import jpeg_damage

ROOT = Path(__file__).resolve().parents[1]


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def camera_like(seed: int = 0) -> np.ndarray:
    """A 6000 x 4000 JPEG's bytes with a camera-sized file (noise on smooth gradients, quality 95)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:4000, 0:6000].astype(np.float32)
    base = np.stack([x / 6000 * 200, y / 4000 * 200, (x + y) / 10000 * 200], axis=-1)
    img = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return buf.ravel()


def scan_start(data: np.ndarray) -> int:
    """Byte after the first SOS segment (where compressed data begins)."""
    sos = int(np.flatnonzero((data[:-1] == 0xFF) & (data[1:] == 0xDA))[0])
    return sos + 2 + (int(data[sos + 2]) << 8 | int(data[sos + 3]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--photo", type=Path, default=None, help="a real JPEG (default: the real sample's largest)")
    ap.add_argument("--trials", type=int, default=200, help="damaged copies per kind of damage")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    photo = args.photo
    if photo is None:
        photos = sorted(
            (ROOT.parent / "shared" / "real-sample" / "photos").glob("*.jpg"), key=lambda p: p.stat().st_size
        )
        photo = photos[-1] if photos else None
    files = {"camera-like 6000x4000 (generated)": camera_like()}
    if photo is not None:
        files = {f"{photo.name} (real)": np.fromfile(photo, np.uint8), **files}
    flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    print(f"cost (median of {args.repeats}):")
    for name, data in files.items():
        assert jpeg_damage(data) is None, f"{name} is reported damaged"
        check = median_ms(lambda: jpeg_damage(data), args.repeats)
        decode = median_ms(lambda: cv2.imdecode(data, flags), max(3, args.repeats // 2))
        print(
            f"  {name:<40} {data.size / 1e6:6.1f} MB  check {check:7.2f} ms  decode {decode:8.1f} ms  "
            f"check/decode {check / decode:.4f}"
        )
    rng = np.random.default_rng(0)
    print(f"damage seen by the check ({args.trials} seeded copies each):")
    for name, data in files.items():
        start = scan_start(data)
        cut = sum(jpeg_damage(data[: int(rng.integers(start, data.size - 2))]) is not None for _ in range(args.trials))
        over = 0
        for _ in range(args.trials):
            bad = data.copy()
            at = int(rng.integers(start, data.size - 18))
            bad[at : at + 16] = rng.integers(0, 256, 16, dtype=np.uint8)
            over += jpeg_damage(bad) is not None
        print(
            f"  {name:<40} cut short {cut}/{args.trials} = {cut / args.trials:.0%}   "
            f"16 bytes overwritten {over}/{args.trials} = {over / args.trials:.0%}"
        )


if __name__ == "__main__":
    main()
