"""Which evidence should the decision weigh? Feature sets fitted on a calibration's decisions, side by side.

Reads the scored decisions that `run calibrate` writes beside its calibration (``calibration-decisions.parquet``:
one row per refined candidate, its evidence, source, role and rightness). For each feature set, the model is
fitted twice: on the fit sources without the held-out one (``--hold-out``, by default the real sample: does what
the synthetic photos teach carry over to real ones?) and on all fit sources. Prints per fit: the weights, the
operating point, and on the held-out source's right decisions the lowest probability, the lowest with a fifth fewer
inliers (and inlier ratio), and how many of them fall below the operating point then; and the strongest wrong
decision of every source.

    python bench/decision_features.py workspace/calibration-decisions.parquet
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from pipeline.footprint.calibration import fit_model, weighed
from pipeline.footprint.evidence import FEATURES

SETS = (
    ("inliers",),
    ("inliers", "coverage"),
    ("inliers", "inlier_ratio"),
    ("inliers", "candidate_inliers"),
    ("inliers", "inlier_ratio", "coverage"),
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("decisions", help="calibration-decisions.parquet of `run calibrate`")
    ap.add_argument("--hold-out", default="real-sample", help="a source (part of its name) to hold out of the fit")
    args = ap.parse_args()
    d = weighed(pd.read_parquet(args.decisions))
    fit = d[d["role"] == "fit"]
    held = fit["source"].str.contains(args.hold_out, regex=False)
    if not held.any():
        raise SystemExit(f"no fit source named like {args.hold_out!r}: {sorted(fit['source'].unique())}")
    out = fit[held]
    print(
        f"{len(d)} decisions; held out: {sorted(out['source'].unique())} ({int(out['right'].sum())} right, "
        f"{int((~out['right']).sum())} wrong)"
    )
    for s, g in d.groupby("source"):
        print(
            f"  {s}: {int(g['right'].sum())} right (inliers {g.loc[g['right'], 'inliers'].min():.0f}-"
            f"{g.loc[g['right'], 'inliers'].max():.0f}), {int((~g['right']).sum())} wrong (inliers up to "
            f"{g.loc[~g['right'], 'inliers'].max():.0f}); role {g['role'].iloc[0]}"
        )
    print()
    right = out[out["right"]][list(FEATURES)].to_numpy(np.float64)
    weaker = right.copy()
    for f in ("inliers", "inlier_ratio"):
        weaker[:, FEATURES.index(f)] *= 0.8
    for feats in SETS:
        for name, data in (("without it", fit[~held]), ("with it", fit)):
            m = fit_model(data[list(FEATURES)].to_numpy(np.float64), data["right"].to_numpy(bool), feats)
            p, pw = m.probabilities(right), m.probabilities(weaker)
            wrong = d[~d["right"]]
            pwrong = m.probabilities(wrong[list(FEATURES)].to_numpy(np.float64))
            print(
                f"{'+'.join(feats):<36} fitted {name:<10} weights {np.round(m.weights, 2)} operating point "
                f"{m.operating_point:.3f} | held-out right: lowest P {p.min():.3f}, {pw.min():.3f} with 0.8x "
                f"inliers ({int((pw < m.operating_point).sum())} of {len(pw)} below) | strongest wrong P "
                f"{pwrong.max():.3f}"
            )


if __name__ == "__main__":
    main()
