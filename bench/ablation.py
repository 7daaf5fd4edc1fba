"""AstroLoc's Table 6 on a sample workspace: the pairwise loss and the three MUM sampling solutions, alone and
together, every row with the same budget (steps, batch sizes, seed), each model described and evaluated on the
held-out evaluation region exactly as `run describe` and `run eval` do.

    python bench/ablation.py --workdir W [--steps 100] [--out A] [--rows pair,sol3,pair+sol3]

The workspace needs pairs made without the evaluation region's photos:

    python -m pipeline run pairs --workdir W --footprints W/truth.parquet --exclude W/regions.geojson#eval

Every training run holds the evaluation region back (``--exclude W/regions.geojson#eval``: its photos, and the
windows that touch it, never train). Rows: ``untrained`` (the cpu model as it starts), ``pair`` (L_pairs alone),
``sol1``/``sol2``/``sol3`` (L_MUM alone with random windows, clusters drawn uniformly, clusters drawn by their share
of the training photos), ``pair+sol1``... (both losses). Prints a Markdown table of recall@1/10/100 and the training
seconds; each row's files stay under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROWS = {
    "untrained": None,
    "pair": ["--lambda2", "0"],
    "sol1": ["--lambda1", "0", "--mining", "random"],
    "sol2": ["--lambda1", "0", "--mining", "uniform"],
    "sol3": ["--lambda1", "0", "--mining", "photos"],
    "pair+sol1": ["--mining", "random"],
    "pair+sol2": ["--mining", "uniform"],
    "pair+sol3": ["--mining", "photos"],
}


def run(args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipeline", *args], check=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", required=True, type=Path)
    ap.add_argument("--out", type=Path, default=Path("ablation"))
    ap.add_argument(
        "--steps", type=int, default=100, help="every row's budget (training iterations; the cpu recipe's 100)"
    )
    ap.add_argument("--rows", default=",".join(ROWS), help=f"some of {', '.join(ROWS)}")
    ap.add_argument("--train-args", default="", help="more options for every `run train`, e.g. '--pair-batch 4'")
    a = ap.parse_args()
    w = a.workdir.resolve()
    region = f"{w / 'regions.geojson'}#eval"
    lines = [
        "| row | R@1 | R@5 | R@10 | R@100 | training s | describe + eval s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in a.rows.split(","):
        extra = ROWS[name]
        folder = (a.out / name.replace("+", "_")).resolve()
        model = "cpu"
        train_s = 0.0
        if extra is not None:
            model = str(folder / "model.pt")
            train_s = run(
                ["run", "train", "--workdir", str(w), "--exclude", region, "--out", model, "--steps", str(a.steps)]
                + extra
                + a.train_args.split()
            )
        store = folder / "store" / "index.parquet"
        t = run(
            ["run", "describe", "--workdir", str(w), "--region", region, "--model", model, "--out", str(store), "-q"]
        )
        summary = folder / "eval" / "summary.json"
        t += run(["run", "eval", "--workdir", str(w), "--store", str(store), "--out", str(summary), "-q"])
        r = json.loads(summary.read_text())["recall"]
        lines.append(
            f"| {name} | {r['1']:.3f} | {r['5']:.3f} | {r['10']:.3f} | {r['100']:.3f} | {train_s:.0f} | {t:.0f} |"
        )
        print(lines[-1], flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
