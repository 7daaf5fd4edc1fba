"""Does refinement lose right candidates? The refinement before (photo at 512 px, 1024 keypoints on each side, the
surroundings twice the footprint) and the current one, on the same candidates, side by side.

For each photo: every pair matched, the ``--top`` strongest distinct candidates (the right place and the strongest
wrong ones) refined by both; per candidate its inliers before refinement, after each, and its IoU with the truth
(right: 0.5 before or after either refinement). Then, per refinement: how many candidates lose more than half their inliers (right ones and all),
the right candidates' inliers (median, lowest), the wrong ones' most inliers, and the time per refinement.

    python bench/refine_loss.py --queries ../shared/real-sample/queries.csv --tiles ../shared/real-sample/mosaics \\
        --truth ../shared/real-sample/truth.csv
    python bench/refine_loss.py --workdir workspace --photos 30
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
from photo_set import add_photo_arguments, open_photo_set  # bench/photo_set.py

from pipeline.footprint import homography as hg
from pipeline.footprint.evidence import Catalogue
from pipeline.footprint.search import FootprintSearch
from pipeline.footprint.settings import SearchSettings
from pipeline.geometry.geodesy import footprint_polygon, iou
from pipeline.imagery.photos import read_photo

BEFORE = {
    "refine_px": 512,
    "refine_context": 2.0,
    "refine_keypoints": 1024,
    "refine_surroundings_keypoints": 1024,
    "refine_crop": 0.0,
}
"""The refinement of the search before this one (its settings, expressed in today's options)."""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_photo_arguments(ap)
    ap.add_argument("--top", type=int, default=3, help="distinct candidates refined per photo")
    ap.add_argument("--csv", help="write one row per candidate here")
    args = ap.parse_args()
    q, truth, source = open_photo_set(args)
    q = q.head(args.photos)
    searches = {
        "before": FootprintSearch(source, SearchSettings(calibration=None, **BEFORE)),
        "now": FootprintSearch(source, SearchSettings(calibration=None)),
    }
    rows = []
    for r in q.itertuples():
        photo = read_photo(r.image_path)
        h, w = photo.shape[:2]
        t = truth.loc[r.photo_id]
        true = (
            footprint_polygon(np.array([[t[f"{c}_lon"], t[f"{c}_lat"]] for c in ("tl", "tr", "br", "bl")]))
            if bool(t["localizable"])
            else None
        )
        cands = list(searches["now"].candidates(photo, r.center_lon, r.center_lat, Catalogue.from_row(r).focal_mm))
        for cand in searches["now"].distinct_candidates(cands, w, h, args.top):
            c_iou = iou(footprint_polygon(hg.corners_lonlat(cand.to_mercator, w, h)), true) if true else 0.0
            row = {
                "photo_id": r.photo_id,
                "zoom": cand.window.zoom,
                "rotation_deg": cand.rotation_deg,
                "candidate": cand.inliers,
                "candidate_iou": c_iou,
            }
            for name, search in searches.items():
                t0 = time.perf_counter()
                ref = search.refine(photo, cand.to_mercator)
                row[f"{name}_seconds"] = time.perf_counter() - t0
                row[name] = ref.inliers if ref.to_mercator is not None else 0
                row[f"{name}_iou"] = (
                    iou(footprint_polygon(hg.corners_lonlat(ref.to_mercator, w, h)), true)
                    if true and ref.to_mercator is not None
                    else 0.0
                )
            row["right"] = max(c_iou, row["before_iou"], row["now_iou"]) >= 0.5  # on the true footprint
            rows.append(row)
            print(
                f"  {r.photo_id:<16} z{cand.window.zoom} {cand.rotation_deg:>3d} deg  {'right' if row['right'] else 'wrong'}"
                f"  candidate {cand.inliers:>4d}  before {row['before']:>4d}  now {row['now']:>4d}  IoU "
                f"{row['before_iou']:.2f} / {row['now_iou']:.2f}",
                flush=True,
            )
    df = pd.DataFrame(rows)
    right = df[df["right"]]
    print(f"\n{len(df)} candidates of {q['photo_id'].nunique()} photos ({len(right)} right)")
    for name in searches:
        lost = df[name] < 0.5 * df["candidate"]
        print(
            f"  {name:<6}: lose more than half their inliers: {int(lost[df['right']].sum())}/{len(right)} right, "
            f"{int(lost.sum())}/{len(df)} in all; right ones after refinement: median {right[name].median():.0f}, "
            f"lowest {right[name].min() if len(right) else 0:.0f}; most inliers of a wrong one: "
            f"{df.loc[~df['right'], name].max() if (~df['right']).any() else 0:.0f}; "
            f"{df[f'{name}_seconds'].mean():.1f} s per refinement"
        )
    if args.csv:
        df.to_csv(args.csv, index=False)


if __name__ == "__main__":
    main()
