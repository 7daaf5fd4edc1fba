"""Are the sample's photos matchable, and its negatives not? ALIKED + LightGlue inliers per kind.

For each photo of a sample workspace (``python -m pipeline run sample`` first): the zoom whose
database window is about twice the footprint's width, the window containing the weak label
nearest its centre, and a window two window-widths away; the photo scaled to the window's
ground resolution and tried at 0/90/180/270 deg (as the footprint stage does); the best
inlier count of each. Clean nadir photos (no appearance effects, another season) are measured
too. Prints per-kind medians and ranges.

    python bench/sample_matchability.py --workdir workspace --per-kind 6
"""

from __future__ import annotations

import argparse
import math
import time

import cv2
import numpy as np

from manifests import read_manifest
from pipeline.geometry.mercator import lonlat_to_mercator, resolution_m
from pipeline.geometry.windows import Window, windows_containing
from pipeline.matching import build_extractor, build_matcher, estimate_homography
from pipeline.simulate.camera import camera_looking_at
from pipeline.simulate.render import render_view
from pipeline.simulate.sample import GLOBE
from pipeline.tile_sources import open_tile_source
from pipeline.world import ProceduralWorld, load_world


def nearest_window(lon: float, lat: float, zoom: int) -> Window:
    x, y = lonlat_to_mercator(lon, lat)

    def dist(w: Window) -> float:
        b = w.bounds_mercator()
        return (x - (b[0] + b[2]) / 2) ** 2 + (y - (b[1] + b[3]) / 2) ** 2

    return min(windows_containing(lon, lat, zoom), key=dist)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", default="workspace")
    ap.add_argument("--per-kind", type=int, default=6)
    ap.add_argument("--max-keypoints", type=int, default=2048)
    args = ap.parse_args()
    truth = read_manifest(f"{args.workdir}/truth.parquet", "truth", geometry=False)
    db = open_tile_source(f"{args.workdir}/tiles")
    seed = load_world(f"{args.workdir}/tiles").seed
    ext = build_extractor("aliked", max_keypoints=args.max_keypoints)
    matcher = build_matcher("aliked")

    def inliers(photo_rgb, feats_db) -> int:
        best = 0
        for k in range(4):
            f0 = ext(np.ascontiguousarray(np.rot90(photo_rgb, k)))
            m0, m1, _ = matcher(f0, feats_db)
            H, mask = estimate_homography(m0, m1)
            best = max(best, int(mask.sum()) if H is not None else 0)
        return best

    results: dict[str, list[tuple[int, int]]] = {}
    t0 = time.perf_counter()
    picks = truth.sort_values("photo_id").groupby("reason").head(args.per_kind)
    for row in picks.itertuples():
        gsd = math.sqrt(row.area_km2 * 1e6 / (row.width * row.height)) if row.area_km2 == row.area_km2 else 100.0
        width_m = gsd * row.width
        coslat = math.cos(math.radians(row.center_lat))
        # window (1024 px) about twice the footprint's width
        zoom = int(np.clip(round(math.log2(1024 * resolution_m(0) * coslat / (2 * width_m))), 8, 12))
        res_ground = resolution_m(zoom) * coslat
        photo = cv2.imread(f"{args.workdir}/photos/{row.photo_id}.jpg")[..., ::-1]
        scale = gsd / res_ground
        photo = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        win = nearest_window(row.center_lon, row.center_lat, zoom)
        far = Window(zoom, win.x + 2 * win.size_tiles, win.y + win.size_tiles, win.size_tiles)
        f_in, f_far = ext(db.read_window(win).rgb), ext(db.read_window(far).rgb)
        results.setdefault(row.reason, []).append((inliers(photo, f_in), inliers(photo, f_far)))
        if row.reason == "ok":  # the same place as a clean nadir photo of another season
            cam, _ = camera_looking_at(
                row.target_lon,
                row.target_lat,
                0.0,
                0.0,
                0.0,
                410e3,
                410e3 * 36 / (row.width * res_ground) * row.width / 640,
                640,
                427,
            )
            clean = render_view(cam, ProceduralWorld(GLOBE, seed=seed, year=(row.world_year + 1) % 4)).rgb
            w2 = nearest_window(row.target_lon, row.target_lat, zoom)
            far2 = Window(zoom, w2.x + 2 * w2.size_tiles, w2.y + w2.size_tiles, w2.size_tiles)
            results.setdefault("clean nadir", []).append(
                (inliers(clean, ext(db.read_window(w2).rgb)), inliers(clean, ext(db.read_window(far2).rgb)))
            )
        print(
            f"  {row.photo_id} {row.reason:<12} zoom {zoom}  containing {results[row.reason][-1][0]:>4d}  "
            f"far {results[row.reason][-1][1]:>3d}",
            flush=True,
        )
    print(f"\nALIKED + LightGlue inliers, best of 4 rotations ({time.perf_counter() - t0:.0f} s)")
    print(f"  {'kind':<12} {'n':>3}  {'containing: median [min, max]':<32} far: median [min, max]")
    for kind, v in results.items():
        a = np.array(v)
        print(
            f"  {kind:<12} {len(a):>3}  {np.median(a[:, 0]):>8.0f} [{a[:, 0].min():>4d}, {a[:, 0].max():>4d}]"
            f"{'':<15} {np.median(a[:, 1]):>5.0f} [{a[:, 1].min():>3d}, {a[:, 1].max():>3d}]"
        )


if __name__ == "__main__":
    main()
