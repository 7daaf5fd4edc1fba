"""Real wrong-label negatives: every real-sample photo searched under every other photo's catalogue row.

56 searches on real imagery (its own pixels; the other row's weak label, nadir, tilt and focal length, as when a
file is attached to the wrong row), with the footprint stage's search and decision (the packaged calibration unless
``--calibration``). One of them is no negative: the imagery at ISS056-E-153176's label is ISS062-E-81917's own, so
ISS062-E-81917 under that row should be localized, in that imagery's georeference. Prints each search, then how many
of the 55 negatives got a footprint, whether the one positive did (and its IoU), and the strongest wrong evidence
seen: the wrong footprint with the highest probability (localized or turned down) and its inliers.

    python bench/real_negatives.py [--real-sample ../shared/real-sample] [--csv out.csv] [--only 8]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from manifests import read_queries
from pipeline.footprint.evidence import Catalogue
from pipeline.footprint.search import FootprintSearch
from pipeline.footprint.settings import SearchSettings
from pipeline.footprint.wrong_labels import moved_corners, swapped_queries
from pipeline.geometry.geodesy import footprint_polygon, iou
from pipeline.imagery.photos import read_photo
from pipeline.tile_sources import open_tile_source

POSITIVE = ("ISS062-E-81917", "ISS056-E-153176")
"""(photo, row): the one swapped search that is no negative (the row's imagery is the photo's own)."""
CORNERS = ("tl", "tr", "br", "bl")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--real-sample", default=str(Path(__file__).resolve().parents[2] / "shared" / "real-sample"))
    ap.add_argument("--calibration", default="packaged", help="a calibration.json, 'packaged' or 'none'")
    ap.add_argument("--only", type=int, default=0, help="only the first N searches (the positive always runs)")
    ap.add_argument("--csv", help="write one row per search here")
    args = ap.parse_args()
    rs = Path(args.real_sample)
    queries, _ = read_queries(rs / "queries.csv")
    truth = pd.read_csv(rs / "truth.csv").set_index("photo_id")
    runs = swapped_queries(queries)
    if args.only:
        runs = runs[
            (np.arange(len(runs)) < args.only) | ((runs["photo"] == POSITIVE[0]) & (runs["row"] == POSITIVE[1]))
        ]
    t = truth.loc[POSITIVE[0]]
    positive_truth = moved_corners(
        np.array([[t[f"{c}_lon"], t[f"{c}_lat"]] for c in CORNERS]),
        str(rs / truth.loc[POSITIVE[0], "mosaic"]),
        str(rs / truth.loc[POSITIVE[1], "mosaic"]),
    )
    search = FootprintSearch(
        open_tile_source(rs / "mosaics"),
        SearchSettings(calibration=None if args.calibration == "none" else args.calibration),
    )
    rows = []
    t0 = time.perf_counter()
    for r in runs.itertuples():
        res = search.localize(read_photo(r.image_path), r.center_lon, r.center_lat, Catalogue.from_row(r))
        positive = (r.photo, r.row) == POSITIVE
        score = float("nan")
        if res.corners_lonlat is not None:
            score = iou(footprint_polygon(res.corners_lonlat), footprint_polygon(positive_truth)) if positive else 0.0
        rows.append(
            {
                "photo": r.photo,
                "row": r.row,
                "positive": positive,
                "status": res.status,
                "inliers": res.inliers,
                "confidence": res.confidence,
                "iou": score,
                "seconds": res.elapsed_s,
                "pairs": res.pairs_matched,
                "reason": res.reason,
            }
        )
        print(
            f"  {r.photo:<16} under {r.row:<16} {'POSITIVE ' if positive else ''}{res.status:<13} inliers "
            f"{res.inliers:>4d}  P {res.confidence if res.confidence is not None else float('nan'):.3g}  "
            f"{res.elapsed_s:5.1f} s  {res.reason or f'IoU {score:.3f}'}",
            flush=True,
        )
    df = pd.DataFrame(rows)
    neg, pos = df[~df["positive"]], df[df["positive"]]
    wrong = neg[neg["confidence"].notna()]
    print(f"\n{len(df)} searches in {time.perf_counter() - t0:.0f} s ({df['seconds'].mean():.1f} s each)")
    print(f"  negatives localized: {int((neg['status'] == 'localized').sum())}/{len(neg)}")
    for p in pos.itertuples():
        print(
            f"  the positive ({p.photo} under {p.row}): {p.status}, {p.inliers} inliers, P {p.confidence:.6f}, "
            f"IoU {p.iou:.3f} with its footprint in that imagery"
        )
    if len(wrong):
        w = wrong.sort_values("confidence").iloc[-1]
        print(
            f"  strongest wrong evidence: {w.photo} under {w.row}: P {w.confidence:.3g} at {w.inliers} inliers "
            f"({w.status}); most inliers of a wrong footprint: {int(wrong['inliers'].max())}"
        )
    else:
        print(
            f"  no wrong footprint survived refinement and the checks; most candidate inliers seen: "
            f"{int(neg['inliers'].max())}"
        )
    if args.csv:
        df.to_csv(args.csv, index=False)


if __name__ == "__main__":
    main()
