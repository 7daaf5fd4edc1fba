"""Localize the first photos of a workspace (or the real sample) and score them against the truth.

Runs :class:`pipeline.footprint.search.FootprintSearch` in this process (no Dask) with its
default settings plus ``--set key=value`` overrides, and prints per photo: the truth's kind,
the status and reason, inliers, zoom, rotation, seconds, pairs matched and the IoU with the
true footprint; then the acceptance figures of the footprint stage:

* localizable photos localized with IoU >= 0.8 (share),
* photos reported localized with IoU < 0.5 (count and share; negatives count as IoU 0),
* negatives (limb, night, wrong label, clouds) not localized (share).

``--exhaustive N`` also runs the exhaustive path (all 80 pairs, each matched to the end, no feature
cache, photo and windows at full resolution, the default's matching kernels: LightGlue in the same
precision, each image extracted and prepared for LightGlue once per photo) on the first N photos, right after the
default path on the same photos, and prints seconds per photo of both and their ratio.

    python bench/footprints_sample.py --workdir workspace --photos 60 --csv fp60.csv
    python bench/footprints_sample.py --workdir workspace --photos 10 --exhaustive 10
    python bench/footprints_sample.py --queries ../shared/real-sample/queries.csv \\
        --tiles ../shared/real-sample/mosaics --truth ../shared/real-sample/truth.csv
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pandas as pd
from photo_set import add_photo_arguments, open_photo_set  # bench/photo_set.py

from pipeline.footprint.evidence import Catalogue
from pipeline.footprint.search import FootprintSearch
from pipeline.footprint.settings import SearchSettings
from pipeline.geometry.geodesy import footprint_polygon, iou
from pipeline.imagery.photos import read_photo


def exhaustive_conf(photo_long_side: int, size_tiles: int = 4) -> dict:
    """The exhaustive path: AstroLoc's 80 pairs (every window at 5 zooms x 4 quarter turns), each matched to the
    end (no screen), no cache, native resolutions; the default's matching kernels (LightGlue's precision, each image
    prepared once per photo), so that the ratio measures the search alone."""
    return {
        "early_stop_inliers": 0,
        "screen_inliers": 0,
        "feature_cache": 0,
        "photo_px": photo_long_side,
        "rotations": [0, 90, 180, 270],
        "window_px": size_tiles * 256,
        "refine_px": photo_long_side,
    }


def run(search: FootprintSearch, q: pd.DataFrame, truth: pd.DataFrame, label: str) -> pd.DataFrame:
    rows = []
    for r in q.itertuples():
        t = truth.loc[r.photo_id]
        res = search.localize(read_photo(r.image_path), r.center_lon, r.center_lat, Catalogue.from_row(r))
        kind = t["reason"] if "reason" in t else ("ok" if t["localizable"] else "negative")
        score = float("nan")
        if res.corners_lonlat is not None:
            score = 0.0
            if bool(t["localizable"]):
                true = np.array(
                    [[t.tl_lon, t.tl_lat], [t.tr_lon, t.tr_lat], [t.br_lon, t.br_lat], [t.bl_lon, t.bl_lat]]
                )
                score = iou(footprint_polygon(res.corners_lonlat), footprint_polygon(true))
        rows.append(
            {
                "photo_id": r.photo_id,
                "kind": kind,
                "status": res.status,
                "inliers": res.inliers,
                "zoom": res.zoom,
                "rotation_deg": res.rotation_deg,
                "iterations": res.iterations,
                "pairs": res.pairs_matched,
                "iou": score,
                "confidence": res.confidence,
                "seconds": res.elapsed_s,
                "reason": res.reason,
            }
        )
        print(
            f"  [{label}] {r.photo_id:<16} {kind:<12} {res.status:<13} inliers {res.inliers:>4d}  zoom {res.zoom}  "
            f"rot {res.rotation_deg}  P {res.confidence if res.confidence is not None else float('nan'):.4f}  "
            f"{res.elapsed_s:5.1f} s  pairs {res.pairs_matched:>2d}  IoU {score:.3f}  "
            f"{res.reason or ''}",
            flush=True,
        )
    return pd.DataFrame(rows)


def summary(df: pd.DataFrame, label: str) -> str:
    pos, neg = df[df["kind"] == "ok"], df[df["kind"] != "ok"]
    loc = df[df["status"] == "localized"]
    good = int((pos["iou"] >= 0.8).sum())
    bad = int((loc["iou"].fillna(0) < 0.5).sum())
    rejected = int((neg["status"] != "localized").sum())
    return (
        f"{label}: {len(df)} photos, {df['seconds'].mean():.1f} s per photo (median {df['seconds'].median():.1f})\n"
        f"  localizable localized with IoU >= 0.8: {good}/{len(pos)} = {good / max(len(pos), 1):.1%}\n"
        f"  reported localized with IoU < 0.5:     {bad}/{len(loc)} = {bad / max(len(loc), 1):.1%}\n"
        f"  negatives not localized:               {rejected}/{len(neg)} = {rejected / max(len(neg), 1):.1%}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_photo_arguments(ap, "the first N photos (after --skip)")
    ap.add_argument("--skip", type=int, default=0, help="skip the first N photos (e.g. to calibrate on others)")
    ap.add_argument("--set", action="append", default=[], help="search option key=JSON value")
    ap.add_argument(
        "--negatives",
        action="store_true",
        help="of the selected photos, only the negatives (with "
        "--set candidate_min_inliers=0 --set calibration=null: the inliers refinement gives wrong candidates)",
    )
    ap.add_argument("--exhaustive", type=int, default=0, help="also run the exhaustive path on the first N photos")
    ap.add_argument("--csv", help="write the per-photo rows here")
    args = ap.parse_args()
    q, truth, source = open_photo_set(args)
    q = q.iloc[args.skip :].head(args.photos)
    if args.negatives:
        q = q[~truth.loc[q["photo_id"], "localizable"].astype(bool).to_numpy()]
    conf = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    t0 = time.perf_counter()
    search = FootprintSearch(source, SearchSettings.from_layers((conf, "--set")))
    print(f"default path: LightGlue in {'mixed' if search.half_precision() else 'full (float32)'} precision on the CPU")
    df = run(search, q, truth, "default")
    print(f"\n{summary(df, 'default path')}  ({time.perf_counter() - t0:.0f} s in all)")
    if args.exhaustive:
        sub = q.head(args.exhaustive)
        long_side = int(max(read_photo(sub["image_path"].iloc[0]).shape[:2]))  # the sample's photos share a size
        ex = run(
            FootprintSearch(
                source, SearchSettings.from_layers((conf, "--set"), (exhaustive_conf(long_side), "exhaustive"))
            ),
            sub,
            truth,
            "exhaustive",
        )
        d = df.head(len(sub))
        print(f"\n{summary(ex, 'exhaustive path')}")
        print(
            f"\nsame {len(sub)} photos: default {d['seconds'].mean():.1f} s/photo, exhaustive "
            f"{ex['seconds'].mean():.1f} s/photo, ratio {ex['seconds'].mean() / d['seconds'].mean():.1f}x; "
            f"localized: default {(d['status'] == 'localized').sum()}, exhaustive {(ex['status'] == 'localized').sum()}; "
            f"pairs matched: default {d['pairs'].sum()}, exhaustive {ex['pairs'].sum()}"
        )
        df = pd.concat([df.assign(path="default"), ex.assign(path="exhaustive")])
    if args.csv:
        df.to_csv(args.csv, index=False)


if __name__ == "__main__":
    main()
