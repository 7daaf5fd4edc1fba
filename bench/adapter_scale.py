"""The adapter's memory and time per iteration at AstroLoc's scale: P unlabelled photo descriptors and N database
descriptors (random unit vectors: the cost does not depend on their values), d0 -> d.

    python bench/adapter_scale.py --photos 100000 --references 1000000 --in-dim 768 --iterations 3

Prints the resident memory after the descriptors are held (float16) and at the end (peak), and the seconds of
each iteration (Algorithm 1 with the streamed E-step over all N references and the InfoNCE over the
pseudo-positives plus --references-per-step drawn ones).
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.train.adapter import AdapterData, AdapterRun, AdapterTrainer  # noqa: E402


def _rss_gib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def _unit_rows(n: int, d: int, seed: int, chunk: int = 65536) -> np.ndarray:
    out = np.empty((n, d), np.float16)
    rng = np.random.default_rng(seed)
    for i in range(0, n, chunk):
        x = rng.standard_normal((min(chunk, n - i), d), dtype=np.float32)
        out[i : i + chunk] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=int, default=100_000)
    ap.add_argument("--references", type=int, default=1_000_000)
    ap.add_argument("--in-dim", type=int, default=768, help="d0: 768 for paper-gem (ViT-B/14), 2048 for AstroLoc's")
    ap.add_argument("--out-dim", type=int, default=2048)
    ap.add_argument("--photos-per-step", type=int, default=700)
    ap.add_argument("--references-per-step", type=int, default=65536)
    ap.add_argument("--iterations", type=int, default=3)
    args = ap.parse_args()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; RSS at start {_rss_gib():.2f} GiB")
    t = time.perf_counter()
    photos = _unit_rows(args.photos, args.in_dim, 0)
    refs = _unit_rows(args.references, args.in_dim, 1)
    held = (photos.nbytes + refs.nbytes) / 2**30
    print(
        f"{args.photos} photos + {args.references} references x {args.in_dim} values in float16: {held:.2f} GiB "
        f"(made in {time.perf_counter() - t:.0f} s); RSS {_rss_gib():.2f} GiB"
    )
    run = AdapterRun(
        steps=args.iterations,
        photos_per_step=args.photos_per_step,
        references_per_step=args.references_per_step,
        lr=1e-3,
        tau=0.1,
        out_dim=args.out_dim,
        residual=False,
        aic=True,
        aic_weight=1.0,
        labels="em",
        seed=0,
        checkpoint_every=10**9,
    )
    with tempfile.TemporaryDirectory() as work:
        _, metrics = AdapterTrainer(run, AdapterData(photos, refs), Path(work)).run()
    secs = [m["seconds"] for m in metrics]
    from pipeline.model.adapter import Adapter, AdapterConfig
    from pipeline.train.adapter import streamed_labels

    adapter = Adapter(AdapterConfig(args.in_dim, args.out_dim))
    with torch.no_grad():
        zq = adapter(torch.from_numpy(photos[: args.photos_per_step].astype(np.float32)))
    t = time.perf_counter()
    streamed_labels(adapter, zq, refs)
    e_step = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"iterations: {', '.join(f'{s:.1f}' for s in secs)} s (median {np.median(secs):.1f} s)")
    print(f"of which the E-step over all {args.references} references: {e_step:.1f} s (measured alone)")
    print(f"M-step references per iteration: {metrics[-1]['references']}; peak RSS {peak:.2f} GiB")


if __name__ == "__main__":
    main()
