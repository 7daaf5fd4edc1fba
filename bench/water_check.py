"""Does a footprint put the photo's lakes on the imagery's lakes? A check with no learned features.

    python bench/water_check.py FOOTPRINTS --queries Q --tiles DIR [--photo ID ...] [--poses 2000] [--png DIR]

For each localized photo of a footprints manifest (or each localizable row of the real sample's
truth.csv) it marks water by colour alone, ``blue - red > --blue-minus-red`` (default 20 of 255)
followed by a 7 x 7 pixel opening, in the photo and in the imagery, and scores the overlap (IoU of the
two masks) with the imagery brought into the photo's frame:

- through the footprint;
- through the footprint shifted by 10, 20 and 30 % of the photo's width in 8 directions, and turned
  by 90, 180 and 270 degrees (the nearby poses a wrong footprint would be as good as);
- through ``--poses`` random poses: the footprint's own shape centred on a random pixel with imagery
  in a box four times its extent, at a random angle, kept when at least 90 % of it lies on imagery
  (how well chance does).

A footprint that shows the imagery's own lakes scores well above every one of those. The colour rule
needs water that is bluer than the land around it (arid land, frozen or open lakes): a hazy photo is
blue all over and marks most of itself as water, so with more than 30 % of the photo marked the line
says "not applicable". A study for contested truth rows, not a stage: nothing in ``pipeline/`` uses it.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from manifests import read_manifest, read_queries  # noqa: E402
from pipeline.footprint import homography as hg  # noqa: E402
from pipeline.footprint.overlay import CORNERS  # noqa: E402
from pipeline.imagery.photos import PhotoError, read_photo  # noqa: E402
from pipeline.tile_sources import open_tile_source  # noqa: E402

SIDE = 512  # the photo's long side for the masks, pixels
BOX = 4.0  # the imagery box around the footprint, in footprint extents
MAX_WATER = 0.3  # above this share of the photo marked water, the colour rule says nothing


def water(rgb: np.ndarray, blue_minus_red: float) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) bool: bluer than red by more than ``blue_minus_red``, opened by 7 x 7."""
    m = (rgb[..., 2].astype(np.int16) - rgb[..., 0].astype(np.int16)) > blue_minus_red
    return cv2.morphologyEx(m.astype(np.uint8), cv2.MORPH_OPEN, np.ones((7, 7), np.uint8)) > 0


def check(
    photo: np.ndarray, corners_lonlat: np.ndarray, source, blue_minus_red: float, poses: int, seed: int = 0
) -> dict:
    """Water-mask IoU at the footprint and at the poses a chance alignment could take.

    Args:
        photo: RGB uint8 (H, W, 3).
        corners_lonlat: (4, 2) lon/lat degrees of the photo's tl, tr, br, bl corners.
        source: the tile source the footprint is in.
    Returns:
        ``water`` (share of the photo marked), ``pose`` (IoU at the footprint), ``near`` (best IoU of the
        shifted and turned poses), ``random`` (IoUs of the random poses kept), ``picture`` (h, w, 3)
        uint8 RGB in the photo's frame: the photo's water red, the imagery's green, both yellow.
    """
    s = SIDE / max(photo.shape[:2])
    w, h = round(photo.shape[1] * s), round(photo.shape[0] * s)
    mp = water(cv2.resize(photo, (w, h), interpolation=cv2.INTER_AREA), blue_minus_red)
    to_merc = hg.photo_to_mercator(corners_lonlat, w, h)
    xy = hg.apply(to_merc, hg.photo_corners(w, h))
    (x0, y0), (x1, y1) = xy.min(axis=0), xy.max(axis=0)
    cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, BOX * max(x1 - x0, y1 - y0) / 2
    n = math.ceil(BOX * SIDE)
    bounds = (cx - half, cy - half, cx + half, cy + half)
    north_up = source.render(bounds, n, n)
    mi, valid = water(north_up.rgb, blue_minus_red).astype(np.uint8), north_up.mask.astype(np.uint8)
    to_box = np.linalg.inv(hg.pixels_to_mercator(bounds, n, n)) @ to_merc  # mask px -> box px

    def masks(m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The photo's water, the imagery's water and where there is imagery, all in the photo's frame."""
        flags = cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP
        b = cv2.warpPerspective(mi, hg.to_centres(m), (w, h), flags=flags) > 0
        v = cv2.warpPerspective(valid, hg.to_centres(m), (w, h), flags=flags) > 0
        return mp & v, b & v, v

    def score(m: np.ndarray) -> tuple[float, float]:
        a, b, v = masks(m)
        union = (a | b).sum()
        return float((a & b).sum() / union) if union else 0.0, float(v.mean())

    near = []
    for k in (1, 2, 3):
        near.append(score(to_box @ np.linalg.inv(hg.rotation(k, w, h)))[0])
    for f in (0.1, 0.2, 0.3):
        for t in np.linspace(0, 2 * np.pi, 8, endpoint=False):
            near.append(score(to_box @ np.array([[1, 0, f * w * np.cos(t)], [0, 1, f * w * np.sin(t)], [0, 0, 1]]))[0])
    rng = np.random.default_rng(seed)
    centre = hg.apply(to_box, np.array([[w / 2, h / 2]]))[0]
    vy, vx = np.nonzero(valid)
    rand = []
    for _ in range(poses if len(vx) else 0):
        j, t = rng.integers(len(vx)), rng.uniform(0, 2 * np.pi)
        px, py = vx[j] + 0.5, vy[j] + 0.5
        c, si = np.cos(t), np.sin(t)
        move = np.array(
            [[c, -si, px - c * centre[0] + si * centre[1]], [si, c, py - si * centre[0] - c * centre[1]], [0, 0, 1]]
        )
        iou, cover = score(move @ to_box)
        if cover >= 0.9:
            rand.append(iou)
    a, b, _ = masks(to_box)
    picture = np.zeros((h, w, 3), np.uint8)  # photo's water red, imagery's green, both yellow
    picture[..., 0], picture[..., 1] = a * 255, b * 255
    return {
        "water": float(mp.mean()),
        "pose": score(to_box)[0],
        "near": max(near),
        "random": np.array(rand),
        "picture": picture,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("footprints", help="a footprints manifest, or the real sample's truth.csv")
    ap.add_argument("--queries", required=True)
    ap.add_argument("--tiles", required=True)
    ap.add_argument("--photo", nargs="*", help="these photos only (default: every footprint)")
    ap.add_argument("--poses", type=int, default=2000, help="random poses per photo")
    ap.add_argument("--blue-minus-red", type=float, default=20.0)
    ap.add_argument("--png", help="write DIR/<photo_id>.water.png: the photo's water red, the imagery's green")
    args = ap.parse_args(argv)
    if args.footprints.endswith(".csv"):
        fp = pd.read_csv(args.footprints)
        fp = fp[fp["localizable"].astype(bool)]
    else:
        fp = read_manifest(args.footprints, "footprints", geometry=False)
        fp = fp[fp["status"] == "localized"]
    if args.photo:
        fp = fp[fp["photo_id"].isin(args.photo)]
    paths = read_queries(args.queries, check_images=False)[0].set_index("photo_id")["image_path"]
    source = open_tile_source(args.tiles)
    print(f"water = blue - red > {args.blue_minus_red:g}, 7 x 7 opening; IoU of the photo's and the imagery's water")
    print(f"{'photo':18s} {'water':>6s} {'pose':>6s} {'near':>6s} {'random 99.9%':>12s} {'max':>6s}  random >= pose")
    for _, row in fp.iterrows():
        try:
            rgb = read_photo(paths[row["photo_id"]])
        except PhotoError as e:
            print(f"{row['photo_id']:18s} {e}")
            continue
        corners = np.array([[row[f"{c}_lon"], row[f"{c}_lat"]] for c in CORNERS], np.float64)
        r = check(rgb, corners, source, args.blue_minus_red, args.poses)
        if r["water"] > MAX_WATER:
            print(f"{row['photo_id']:18s} {r['water']:6.3f}  not applicable: the rule marks most of the photo as water")
            continue
        if args.png:
            Path(args.png).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(Path(args.png) / f"{row['photo_id']}.water.png"), r["picture"][..., ::-1])
        rand = r["random"]
        q = (
            f"{np.quantile(rand, 0.999):12.3f} {rand.max():6.3f}  {(rand >= r['pose']).sum()} of {len(rand)}"
            if len(rand)
            else f"{'-':>12s} {'-':>6s}  no random pose on imagery"
        )
        print(f"{row['photo_id']:18s} {r['water']:6.3f} {r['pose']:6.3f} {r['near']:6.3f} {q}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
