"""The uniform average of retrieval checkpoints' weights, written as one checkpoint `run describe --model` reads.

A measurement of how much of a trained model's recall is its draw (bench/RESULTS.md, 2026-12-07 ninth session):
the average of one run's last checkpoints (as in stochastic weight averaging, Izmailov et al., UAI 2018) or of
the last checkpoints of runs that differ only in their seed (a "uniform soup", Wortsman et al., ICML 2022). Every
run must start from the same model and have the same configuration; the float weights are averaged in float64,
and the rest (integer buffers) taken from the first checkpoint.

    python bench/average_checkpoints.py OUT.pt T/model-200.pt T/model-300.pt T/model-400.pt
    python bench/train_frozen_tokens.py ... --compare OUT.pt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.model.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402


def average(paths: list[Path]) -> tuple[torch.nn.Module, list[int]]:
    """(the first checkpoint's model holding the mean of every checkpoint's float weights, their steps)."""
    first, extra = load_checkpoint(paths[0])
    config = first.config.to_dict()
    sums = {k: v.double() for k, v in first.state_dict().items() if v.is_floating_point()}
    steps = [int(extra.get("step", 0))]
    for path in paths[1:]:
        model, extra = load_checkpoint(path)
        if model.config.to_dict() != config:
            raise SystemExit(f"{path}: its model configuration differs from {paths[0]}'s; average runs of one model")
        for k, v in model.state_dict().items():
            if k in sums:
                sums[k] += v.double()
        steps.append(int(extra.get("step", 0)))
    state = first.state_dict()
    state.update({k: (s / len(paths)).to(state[k].dtype) for k, s in sums.items()})
    first.load_state_dict(state)
    return first, steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path, help="the averaged checkpoint to write")
    ap.add_argument("checkpoints", nargs="+", type=Path, help="two or more checkpoints of one model configuration")
    a = ap.parse_args()
    if len(a.checkpoints) < 2:
        ap.error("give two or more checkpoints to average")
    model, steps = average(a.checkpoints)
    save_checkpoint(a.out, model, step=max(steps), averaged=[str(p) for p in a.checkpoints])
    print(f"{a.out}: the mean of {len(a.checkpoints)} checkpoints (steps {', '.join(map(str, steps))})")


if __name__ == "__main__":
    main()
