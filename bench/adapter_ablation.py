"""Table VI of the adapter paper on the sample: each row trains (or not) an adapter on the frozen store, adapts the
evaluation region's descriptors and runs `run eval` on them, all through the command line.

    python -m pipeline run describe --workdir W --model cpu-gem --out W/frozen/index.parquet
    python bench/adapter_ablation.py --workdir W --features W/frozen/index.parquet --out A

Rows (the paper's Table VI, every one with one budget: --steps iterations of the recipe's photos per iteration,
d = d0 as the paper's ablation keeps it): baseline (the frozen descriptors), supervised (the pairs manifest's
pairs as labels), em (EM pseudo-labels), residual (EM, z = x + f(x)), em+aic (EM and the reconstruction loss);
the default run (em+aic at d = 2048) as ``default``, and em+aic with Eq. 8 averaged instead of summed as
``em+aic-mean``. No label is used by em, residual, em+aic and default;
the evaluation region's photos and windows never train (--exclude). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROWS = {
    "baseline": None,
    "supervised": ["--labels", "pairs", "--no-aic"],
    "em": ["--no-aic"],
    "residual": ["--no-aic", "--residual"],
    "em+aic": [],
    "em+aic-mean": ["--aic-reduction", "mean"],
    "default": ["--adapter-dim", "2048"],
}


def _cli(*args: str) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipeline", *args, "-q"], cwd=ROOT, check=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", required=True, type=Path)
    ap.add_argument("--features", required=True, type=Path, help="the frozen model's store of the whole workspace")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--region", default=None, help="held-out region (default: WORKDIR/regions.geojson#eval)")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--seeds", type=int, default=1, help="train each row with seeds 0..N-1; recall is their mean")
    ap.add_argument("--rows", default=",".join(ROWS), help=f"some of {', '.join(ROWS)}")
    ap.add_argument("--extra", default="", help="more `run train` options for every trained row")
    args = ap.parse_args()
    w, region = args.workdir, args.region or f"{args.workdir / 'regions.geojson'}#eval"
    d0 = _dim(args.features)
    seeds = range(args.seeds)
    lines = [
        "| row | R@1 | R@5 | R@10 | R@100 | R@1 per seed | R@10 per seed | train s | adapt + eval s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in args.rows.split(","):
        flags = ROWS[name]
        runs, train_s, eval_s = [], 0.0, 0.0
        for seed in seeds if flags is not None else [0]:
            out = args.out / name / f"seed{seed}"
            if flags is None:
                import tomllib

                cfg = tomllib.loads(Path(str(args.features) + ".config.toml").read_text())
                model = cfg["describe"]["model"]
            else:
                model = str(out / "adapter.pt")
                dim = [] if "--adapter-dim" in flags else ["--adapter-dim", str(d0)]
                train_s += _cli(
                    "run", "train", "--method", "adapter", "--workdir", str(w), "--features", str(args.features),
                    "--exclude", region, "--out", model, "--steps", str(args.steps), "--seed", str(seed), *dim,
                    *flags, *args.extra.split(),
                )  # fmt: skip
            t = time.perf_counter()
            store = out / "store" / "index.parquet"
            _cli(
                "run", "describe", "--workdir", str(w), "--model", model, "--from-store", str(args.features),
                "--region", region, "--out", str(store),
            )  # fmt: skip
            summary = out / "eval" / "summary.json"
            _cli("run", "eval", "--workdir", str(w), "--store", str(store), "--out", str(summary))
            eval_s += time.perf_counter() - t
            runs.append(json.loads(summary.read_text()))
        mean = {k: sum(r["recall"][k] for r in runs) / len(runs) for k in ("1", "5", "10", "100")}
        each = {k: " ".join(f"{r['recall'][k]:.3f}" for r in runs) for k in ("1", "10")}
        lines.append(
            f"| {name} | {mean['1']:.3f} | {mean['5']:.3f} | {mean['10']:.3f} | {mean['100']:.3f} | {each['1']} | "
            f"{each['10']} | {train_s / len(runs):.0f} | {eval_s / len(runs):.0f} |"
        )
        print(lines[-1], flush=True)
    s = runs[-1]
    print(f"\n{s['queries']} queries, {s['database_entries']} database entries; mean over {len(seeds)} seeds\n")
    print("\n".join(lines))


def _dim(store: Path) -> int:
    import numpy as np
    import pyarrow.parquet as pq

    shard = pq.read_table(store).column("shard")[0].as_py()
    return int(np.load(store.parent / shard, mmap_mode="r").shape[1])


if __name__ == "__main__":
    main()
