"""Localize the first photos of a workspace (or the real sample) and score them against the truth.

Runs :class:`pipeline.footprint.search.FootprintSearch` in this process (no Dask) with its
default settings plus ``--set key=value`` overrides, and prints per photo: the truth's kind,
the status and reason, inliers, zoom, rotation, seconds, pairs matched and the IoU with the
true footprint; then the totals.

    python bench/footprints_sample.py --workdir workspace --photos 8
    python bench/footprints_sample.py --queries ../shared/real-sample/queries.csv \\
        --tiles ../shared/real-sample/mosaics --truth ../shared/real-sample/truth.csv --set zooms=[8,9,10,11,12,13]
"""

from __future__ import annotations

import argparse
import json
import time

import cv2
import numpy as np
import pandas as pd

from manifests import read_manifest, read_queries
from pipeline.footprint.search import FootprintSearch
from pipeline.geometry.geodesy import footprint_polygon, iou
from pipeline.imagery import open_tile_source


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", help="a sample workspace (queries.parquet, truth.parquet, tiles/)")
    ap.add_argument("--queries")
    ap.add_argument("--tiles")
    ap.add_argument("--truth", help="truth.parquet or the real sample's truth.csv")
    ap.add_argument("--photos", type=int, default=8)
    ap.add_argument("--set", action="append", default=[], help="search option key=JSON value")
    args = ap.parse_args()
    queries = args.queries or f"{args.workdir}/queries.parquet"
    tiles = args.tiles or f"{args.workdir}/tiles"
    truth_path = args.truth or f"{args.workdir}/truth.parquet"
    q, _ = read_queries(queries)
    truth = (pd.read_csv(truth_path) if truth_path.endswith(".csv")
             else read_manifest(truth_path, "truth", geometry=False)).set_index("photo_id")
    conf = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    search = FootprintSearch(open_tile_source(tiles), **conf)
    rows = []
    t0 = time.perf_counter()
    for r in q.head(args.photos).itertuples():
        t = truth.loc[r.photo_id]
        img = np.ascontiguousarray(cv2.imread(r.image_path)[..., ::-1])
        res = search.localize(img, r.center_lon, r.center_lat, r.focal_length_mm)
        score = float("nan")
        if res.corners_lonlat is not None and bool(t["localizable"]):
            true = np.array([[t.tl_lon, t.tl_lat], [t.tr_lon, t.tr_lat], [t.br_lon, t.br_lat], [t.bl_lon, t.bl_lat]])
            score = iou(footprint_polygon(res.corners_lonlat), footprint_polygon(true))
        kind = t["reason"] if "reason" in t else ("ok" if t["localizable"] else "negative")
        rows.append((kind, res.status, score, res.elapsed_s))
        print(f"  {r.photo_id:<16} {kind:<12} {res.status:<13} inliers {res.inliers:>4d}  zoom {res.zoom}  "
              f"rot {res.rotation_deg}  {res.elapsed_s:5.1f} s  pairs {res.pairs_matched:>2d}  IoU {score:.3f}  "
              f"{res.reason or ''}", flush=True)
    df = pd.DataFrame(rows, columns=["kind", "status", "iou", "seconds"])
    pos = df[df["kind"] == "ok"]
    neg = df[df["kind"] != "ok"]
    print(f"\nlocalizable: {len(pos)}, localized with IoU >= 0.8: {(pos['iou'] >= 0.8).sum()}; "
          f"negatives: {len(neg)}, not localized: {(neg['status'] != 'localized').sum()}; "
          f"median {df['seconds'].median():.1f} s per photo ({time.perf_counter() - t0:.0f} s in all)")


if __name__ == "__main__":
    main()
