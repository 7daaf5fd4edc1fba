"""Where to screen candidate pairs: each pair's homography inliers after LightGlue's layer L against its final ones.

The footprint search ends a candidate pair after LightGlue's ``screen_layer`` when the matches of that layer fit a
homography with fewer than ``screen_inliers`` inliers (``pipeline/footprint/search.py``). This script measures what
that rule would cost and save: it matches every candidate pair of the given photos to the end (no early stop of the
search, no screen), recording for each pair the inliers at layer L (``--layer``) and at the end, and prints for each
threshold R:

* the share of pairs that match nothing (final inliers < 15, the least a candidate needs) that the rule ends,
* the pairs with 15 or more final inliers that it would end,
* the localizable photos whose best pair it would end, and whose every pair with 15 or more it would end (a photo
  lost to the search),
* the lowest layer-L inliers of a localizable photo's best pair (the margin above R).

A pair that LightGlue stops before layer L is never screened. Photos of every kind count; "localizable" comes from
the truth. Writes the per-pair rows with ``--csv``; ``--tabulate`` prints the table of rows written before
(several files together).

    python bench/screen_study.py --workdir workspace --photos 60 --csv pairs60.csv
    python bench/screen_study.py --queries ../shared/real-sample/queries.csv \\
        --tiles ../shared/real-sample/mosaics --truth ../shared/real-sample/truth.csv --csv pairs_real.csv
    python bench/screen_study.py --tabulate pairs60.csv pairs_real.csv
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
from photo_set import add_photo_arguments, open_photo_set  # bench/photo_set.py

from pipeline.footprint import homography as hg
from pipeline.footprint.search import FootprintSearch, Match
from pipeline.footprint.settings import SearchSettings
from pipeline.imagery.photos import read_photo
from pipeline.matching import estimate_homography


class RecordingSearch(FootprintSearch):
    """The search with a screen that keeps every pair and records its inliers at the screen's layer."""

    def __init__(self, source, settings: SearchSettings, **kw) -> None:
        super().__init__(source, settings.replace(screen_inliers=0, early_stop_inliers=0), **kw)
        self.at_screen: list[int | None] = []

    def _match(self, f0: dict, f1: dict, full_precision: bool = False, screen: bool = False):
        seen: list[int] = []
        rule = None
        if screen:
            k0, k1 = np.asarray(f0["keypoints"]), np.asarray(f1["keypoints"])

            def keep(idx: np.ndarray) -> bool:
                _, mask = estimate_homography(k0[idx[:, 0]], k1[idx[:, 1]], threshold_px=self.settings.ransac_px)
                seen.append(int(mask.sum()))
                return True

            rule = (self.settings.screen_layer, keep)
        m0, m1, _ = self.matcher(f0, f1, full_precision=full_precision, screen=rule)
        if screen:
            self.at_screen.append(seen[0] if seen else None)
        h, mask = estimate_homography(m0, m1, threshold_px=self.settings.ransac_px)
        return Match(None, 0, len(m0)) if h is None else Match(hg.from_centres(h), int(mask.sum()), len(m0))


def table(d: pd.DataFrame, thresholds: list[int]) -> str:
    """The rule's cost and savings for each threshold (see the module docstring)."""
    nothing = d[d["final"] < 15]
    good = d[d["final"] >= 15]
    loc = d[d["localizable"]]
    best = loc.loc[loc.groupby("photo_id")["final"].idxmax()]
    best = best[best["final"] >= 15]
    lines = [
        f"{len(d)} pairs of {d['photo_id'].nunique()} photos: {len(nothing)} match nothing (< 15 inliers), "
        f"{len(good)} have 15 or more; {len(best)} localizable photos have a pair with 15 or more; "
        f"pairs stopped by LightGlue before the screen: {int(d['at_screen'].isna().sum())}",
        f"lowest screen inliers of a localizable photo's best pair: {best['at_screen'].min()}",
        "   R  ended (match nothing)  ended (>= 15)  best pair ended  photos lost",
    ]
    for r in thresholds:
        ended = d["at_screen"].notna() & (d["at_screen"] < r)
        ended_best = sorted(best.loc[ended[best.index], "photo_id"])
        keeps = d[~ended & (d["final"] >= 15) & d["localizable"]]["photo_id"]
        lost = sorted(set(best["photo_id"]) - set(keeps))
        lines.append(
            f"{r:4d}  {ended[nothing.index].mean():21.1%}  {int(ended[good.index].sum()):13d}  "
            f"{', '.join(ended_best) or '-':>15}  {', '.join(lost) or '-'}"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_photo_arguments(ap)
    ap.add_argument("--layer", type=int, default=1, help="LightGlue layer after which pairs are screened")
    ap.add_argument("--csv", help="write the per-pair rows here")
    ap.add_argument(
        "--tabulate",
        nargs="+",
        metavar="CSV",
        help="only print the table for rows written before (several files: their pairs together)",
    )
    args = ap.parse_args()
    if args.tabulate:
        d = pd.concat([pd.read_csv(f) for f in args.tabulate], ignore_index=True)
        d["at_screen"] = d["at_screen"].astype("Int64")
        print(table(d, list(range(4, 11))))
        return
    q, truth, source = open_photo_set(args)
    q = q.head(args.photos)
    search = RecordingSearch(source, SearchSettings(screen_layer=args.layer))
    rows = []
    t0 = time.perf_counter()
    for i, r in enumerate(q.itertuples(), 1):
        img = read_photo(r.image_path)
        search.at_screen.clear()
        cands = list(search.candidates(img, r.center_lon, r.center_lat, r.focal_length_mm))
        for c, s in zip(cands, search.at_screen):
            rows.append(
                {
                    "photo_id": r.photo_id,
                    "localizable": bool(truth.loc[r.photo_id, "localizable"]),
                    "zoom": c.window.zoom,
                    "tile": c.window.tile_id,
                    "rotation_deg": c.rotation_deg,
                    "at_screen": s,
                    "final": c.inliers,
                }
            )
        el = time.perf_counter() - t0
        print(
            f"  {i}/{len(q)} {r.photo_id}: {len(cands)} pairs, best {max((c.inliers for c in cands), default=0)} "
            f"inliers  ({el / i:.1f} s per photo, {el / i * (len(q) - i):.0f} s left)",
            flush=True,
        )
    d = pd.DataFrame(rows)
    d["at_screen"] = d["at_screen"].astype("Int64")
    if args.csv:
        d.to_csv(args.csv, index=False)
    print(f"\nscreen after LightGlue layer {args.layer}:\n{table(d, list(range(4, 11)))}")


if __name__ == "__main__":
    main()
