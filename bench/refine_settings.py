"""The refinement's settings at the true footprints of the real sample: inliers of one refinement match per setting.

For each localizable photo of truth.csv, one refinement match (``refine_iterations`` 1) from its true footprint and
from the true footprint with each corner moved by 3 % of its size (seeded), under each setting side by side: the
refinement before (twice the footprint, the photo at 512 px, 1024 keypoints on each side) and the ones it was
weighed against. Prints the inliers per photo and setting, the lowest per setting and the seconds per match.

    python bench/refine_settings.py [--real-sample ../shared/real-sample]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from manifests import read_queries
from pipeline.footprint import homography as hg
from pipeline.footprint.search import FootprintSearch
from pipeline.footprint.settings import SearchSettings
from pipeline.imagery.photos import read_photo
from pipeline.tile_sources import open_tile_source

SETTINGS = {
    "before: 2x, 512 px, 1024/1024": {
        "refine_context": 2.0,
        "refine_px": 512,
        "refine_keypoints": 1024,
        "refine_surroundings_keypoints": 1024,
        "refine_crop": 0.0,
    },
    "1.5x, 512 px, 1024/2048": {
        "refine_context": 1.5,
        "refine_px": 512,
        "refine_keypoints": 1024,
        "refine_surroundings_keypoints": 2048,
        "refine_crop": 0.0,
    },
    "now: 1.5x, 640 px, 1536/3072 crop 1.2": {},
    "1.5x, 768 px, 2048/4096 crop 1.2": {
        "refine_px": 768,
        "refine_keypoints": 2048,
        "refine_surroundings_keypoints": 4096,
    },
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--real-sample", default=str(Path(__file__).resolve().parents[2] / "shared" / "real-sample"))
    args = ap.parse_args()
    rs = Path(args.real_sample)
    queries = read_queries(rs / "queries.csv")[0].set_index("photo_id")
    truth = pd.read_csv(rs / "truth.csv").set_index("photo_id")
    source = open_tile_source(rs / "mosaics")
    searches = {
        name: FootprintSearch(source, SearchSettings(calibration=None, refine_iterations=1, **s))
        for name, s in SETTINGS.items()
    }
    rng = np.random.default_rng(0)
    rows = []
    for pid, t in truth[truth["localizable"]].iterrows():
        photo = read_photo(queries.loc[pid, "image_path"])
        h, w = photo.shape[:2]
        true = np.array([[t[f"{c}_lon"], t[f"{c}_lat"]] for c in ("tl", "tr", "br", "bl")])
        starts = [true, true + (true.max(0) - true.min(0)) * 0.03 * rng.standard_normal((4, 2))]
        for name, search in searches.items():
            for k, corners in enumerate(starts):
                t0 = time.perf_counter()
                ref = search.refine(photo, hg.photo_to_mercator(corners, w, h))
                rows.append(
                    {
                        "photo_id": pid,
                        "setting": name,
                        "start": "truth" if k == 0 else "moved 3 %",
                        "inliers": ref.trace[0] if ref.trace else 0,
                        "seconds": time.perf_counter() - t0,
                    }
                )
        got = pd.DataFrame(rows)
        line = got[got["photo_id"] == pid].groupby("setting", sort=False)["inliers"].apply(list)
        print(f"  {pid:<16} " + "  ".join(f"{v}" for v in line), flush=True)
    df = pd.DataFrame(rows)
    print()
    for name, g in df.groupby("setting", sort=False):
        print(
            f"  {name:<40} lowest {g['inliers'].min():>4d}  median {g['inliers'].median():>6.0f}  "
            f"{g['seconds'].min():.1f}-{g['seconds'].max():.1f} s per match"
        )


if __name__ == "__main__":
    main()
