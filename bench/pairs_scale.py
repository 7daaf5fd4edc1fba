"""The pairs join at AstroLoc's scale: 221k footprints x 5.2M database windows, IoU >= 0.2.

Synthesizes the workload (seeded):

* database: every window (4 x 4 tiles, half-window stride, with the windows across lon 180)
  at zooms 8-12 whose centre lies on a land-like mask (smooth noise, thresholded so that 5.2M
  windows remain: at zooms 8-12 the whole Mercator world has 5.59M windows);
* footprints: photo-like quads (aspect ~1.5, rotated, slightly trapezoidal) centred on the
  mask within +-60 deg latitude, areas log-normal with AstroLoc's 5th/95th percentiles (239
  and 39,729 km2), clipped to 40-1.36M km2.

Then times :func:`pipeline.pairs.join` over all footprints (chunks of ``--chunk``, in
``--workers`` processes), and, on ``--naive`` of the same footprints and on as many near lon 180, the plain approach
(shapely STRtree query of the windows' lon/lat boxes, polygon intersection, geodesic areas)
against the fast path on the same subsets, and prints throughput, the ratio, pairs and the peak
memory.

    python bench/pairs_scale.py                      # the full workload
    python bench/pairs_scale.py --footprints 20000 --windows-fraction 0.1   # a quick look
"""

from __future__ import annotations

import argparse
import math
import resource
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from pipeline.geometry.mercator import EARTH_RADIUS_M, mercator_to_lonlat
from pipeline.pairs import Database, footprint_rings, join

WORLD_M = 2 * math.pi * EARTH_RADIUS_M


def field(x: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """A smooth random field on the Mercator plane (metres): a sum of random waves."""
    rng = np.random.default_rng(seed)
    u, v = x / WORLD_M * 2 * math.pi, y / WORLD_M * 2 * math.pi
    f = np.zeros(np.broadcast(u, v).shape)
    for k in range(1, 7):
        for _ in range(3):
            a, b = rng.normal(size=2) * k
            f += np.sin(a * u + b * v + rng.uniform(0, 2 * math.pi)) / k
    return f


def _origins(z: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Window origins (tiles) and centres (metres, wrapped): columns wrap (x = n - 2 straddles lon 180), rows do not."""
    n = 1 << z
    ox, oy = (a.ravel() for a in np.meshgrid(np.arange(0, n, 2), np.arange(0, n - 4 + 1, 2)))
    cx = ((ox + 2) % n) / n * WORLD_M - WORLD_M / 2
    return ox, oy, cx, WORLD_M / 2 - (oy + 2) / n * WORLD_M


def database(seed: int, zooms=range(8, 13), target: int = 5_200_000, fraction: float = 1.0) -> Database:
    """Windows whose centre is on land; the land level keeps ``target * fraction`` of them."""
    total = sum((1 << z) // 2 * ((1 << z) // 2 - 1) for z in zooms)
    _, _, cx, cy = _origins(10)
    level = float(np.quantile(field(cx, cy, seed), 1 - min(1.0, target * fraction / total)))
    zs, xs, ys = [], [], []
    for z in zooms:
        ox, oy, cx, cy = _origins(z)
        keep = field(cx, cy, seed) > level
        zs.append(np.full(int(keep.sum()), z))
        xs.append(ox[keep])
        ys.append(oy[keep])
    return Database.from_columns(np.concatenate(zs), np.concatenate(xs), np.concatenate(ys), 4)


def footprints(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(count, 4) lon and lat of photo-like quads with AstroLoc's area distribution."""
    rng = np.random.default_rng(seed + 1)
    mu, sd = (math.log(239) + math.log(39729)) / 2, (math.log(39729) - math.log(239)) / (2 * 1.645)
    area = np.clip(np.exp(rng.normal(mu, sd, count)), 40, 1.36e6)
    # centres: uniform on the sphere within +-60 deg (sampled by sin(lat))
    lat = np.degrees(np.arcsin(rng.uniform(-math.sin(math.radians(60)), math.sin(math.radians(60)), count)))
    lon = rng.uniform(-180, 180, count)
    aspect = rng.uniform(1.3, 1.6, count)
    w = np.sqrt(area * aspect)
    h = area / w
    ang = rng.uniform(0, 2 * math.pi, count)
    skew = rng.uniform(0, 0.3, count)
    local = np.stack(
        [
            np.stack([-w / 2, h / 2 * (1 + skew)], 1),
            np.stack([w / 2, h / 2 * (1 - skew)], 1),
            np.stack([w / 2, -h / 2 * np.ones(count)], 1),
            np.stack([-w / 2, -h / 2 * np.ones(count)], 1),
        ],
        1,
    )
    c, s = np.cos(ang)[:, None], np.sin(ang)[:, None]
    ex, ny = local[..., 0] * c - local[..., 1] * s, local[..., 0] * s + local[..., 1] * c
    dlat = ny / 111.32
    clat = np.clip(lat[:, None] + dlat, -84.0, 84.0)
    dlon = ex / (111.32 * np.cos(np.radians(clat)))
    return (lon[:, None] + dlon + 180) % 360 - 180, clat


_DB: Database | None = None


def _init(seed: int, fraction: float) -> None:
    global _DB
    _DB = database(seed, fraction=fraction)


def _chunk(args) -> tuple[int, int, float]:
    lon, lat, iou = args
    t = time.perf_counter()
    pairs = join(footprint_rings(lon, lat), _DB, iou)
    return len(pairs), int(pairs["fp"].nunique()) if len(pairs) else 0, time.perf_counter() - t


def naive(lon: np.ndarray, lat: np.ndarray, db: Database, iou_min: float) -> int:
    """STRtree over the windows' lon/lat boxes near the footprints, shapely intersections, geodesic areas.

    A window across lon 180 is a MultiPolygon of its halves on either side, as a footprint across it is
    (:func:`footprint_polygon`)."""
    import shapely

    from pipeline.geometry.geodesy import area_km2, footprint_polygon

    z = (db.keys >> 56).astype(np.int64)
    x = ((db.keys >> 28) & ((1 << 28) - 1)).astype(np.int64)
    y = (db.keys & ((1 << 28) - 1)).astype(np.int64)
    n = (1 << z).astype(np.float64)
    west, north = mercator_to_lonlat(x / n * WORLD_M - WORLD_M / 2, WORLD_M / 2 - y / n * WORLD_M)
    east, south = mercator_to_lonlat((x + 4) / n * WORLD_M - WORLD_M / 2, WORLD_M / 2 - (y + 4) / n * WORLD_M)
    across = east > 180.0
    near = (
        (((west <= lon.max() + 1) & (east >= lon.min() - 1)) | across)
        & (south <= lat.max() + 1)
        & (north >= lat.min() - 1)
    )
    boxes = shapely.box(west[near], south[near], np.minimum(east[near], 180.0), north[near])
    for j in np.flatnonzero(across[near]):
        b = boxes[j].bounds
        boxes[j] = shapely.MultiPolygon([boxes[j], shapely.box(-180.0, b[1], east[near][j] - 360.0, b[3])])
    tree = shapely.STRtree(boxes)
    box_area = {}
    found = 0
    for k in range(len(lon)):
        poly = footprint_polygon(np.column_stack([lon[k], lat[k]]))
        a = area_km2(poly)
        for j in tree.query(poly):
            inter = shapely.intersection(poly, boxes[j])
            if inter.is_empty:
                continue
            i = area_km2(inter)
            if j not in box_area:
                box_area[j] = area_km2(boxes[j])
            if i / (a + box_area[j] - i) >= iou_min:
                found += 1
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--footprints", type=int, default=221_000)
    ap.add_argument("--windows-fraction", type=float, default=1.0, help="scale the database (1.0: 5.2M)")
    ap.add_argument("--iou", type=float, default=0.2)
    ap.add_argument("--chunk", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--naive", type=int, default=300, help="footprints for the naive comparison (0: skip)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--stage",
        metavar="DIR",
        help="also write the workload as manifests in DIR and time "
        "`python -m pipeline run pairs` on them (Dask, Parquet in and out)",
    )
    args = ap.parse_args()

    t0 = time.perf_counter()
    db = database(args.seed, fraction=args.windows_fraction)
    lon, lat = footprints(args.footprints, args.seed)
    print(
        f"workload: {len(db.keys):,} windows (zooms {db.zooms}), {len(lon):,} footprints; "
        f"built in {time.perf_counter() - t0:.1f} s",
        flush=True,
    )

    chunks = [(lon[i : i + args.chunk], lat[i : i + args.chunk], args.iou) for i in range(0, len(lon), args.chunk)]
    t = time.perf_counter()
    with ProcessPoolExecutor(args.workers, initializer=_init, initargs=(args.seed, args.windows_fraction)) as ex:
        list(ex.map(_init_noop, range(args.workers)))
        t_ready = time.perf_counter() - t
        t = time.perf_counter()
        results = list(ex.map(_chunk, chunks))
        wall = time.perf_counter() - t
    pairs = sum(r[0] for r in results)
    photos = sum(r[1] for r in results)
    print(
        f"join: {pairs:,} pairs for {photos:,} of {len(lon):,} footprints ({pairs / len(lon):.2f} per footprint) "
        f"in {wall:.1f} s on {args.workers} workers ({len(lon) / wall:,.0f} footprints/s; workers ready in "
        f"{t_ready:.1f} s)",
        flush=True,
    )

    if args.naive:
        seam = np.flatnonzero((np.abs(lon) > 178.0).any(1))[: args.naive]
        for what, sub in (
            (f"the first {args.naive} footprints", np.arange(min(args.naive, len(lon)))),
            (f"{len(seam)} footprints within 2 deg of lon 180", seam),
        ):
            k = len(sub)
            t = time.perf_counter()
            found = join(footprint_rings(lon[sub], lat[sub]), db, args.iou)
            fast = time.perf_counter() - t
            t = time.perf_counter()
            slow_pairs = naive(lon[sub], lat[sub], db, args.iou)
            slow = time.perf_counter() - t
            across = int((found["x"].to_numpy() == (1 << found["zoom"].to_numpy()) - 2).sum())
            print(
                f"{what}, one process: fast {fast:.2f} s ({k / fast:,.0f}/s, {len(found)} pairs, {across} with "
                f"windows across lon 180), naive {slow:.1f} s ({k / slow:,.1f}/s, {slow_pairs} pairs): "
                f"{slow / fast:,.0f}x"
            )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    print(f"peak memory: this process {rss:.2f} GB, largest worker {kids:.2f} GB", flush=True)
    if args.stage:
        stage(args, db, lon, lat)


def stage(args, db: Database, lon: np.ndarray, lat: np.ndarray) -> None:
    """Write database.parquet and footprints.parquet, then time the pairs stage in a subprocess."""
    import subprocess
    import sys
    from pathlib import Path

    import pandas as pd
    import shapely

    from manifests import DATABASE, FOOTPRINTS, ManifestWriter, write_manifest
    from pipeline.database import window_rows

    d = Path(args.stage)
    d.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    z = (db.keys >> 56).astype(np.int64)
    x = ((db.keys >> 28) & ((1 << 28) - 1)).astype(np.int64)
    y = (db.keys & ((1 << 28) - 1)).astype(np.int64)
    with ManifestWriter(d / "database.parquet", DATABASE) as w:
        for zoom in np.unique(z):
            idx = np.flatnonzero(z == zoom)
            for i in range(0, len(idx), 500_000):
                part = idx[i : i + 500_000]
                w.write(window_rows(int(zoom), x[part], y[part], 4, None))
    cols = {
        f"{c}_{k}": (lon if k == "lon" else lat)[:, j]
        for j, c in enumerate(("tl", "tr", "br", "bl"))
        for k in ("lat", "lon")
    }
    ring = np.stack([lon, lat], 2)
    write_manifest(
        pd.DataFrame(
            {
                "photo_id": [f"P{i:07d}" for i in range(len(lon))],
                "status": "localized",
                "geometry": shapely.polygons(np.concatenate([ring, ring[:, :1]], 1)),
                **cols,
            }
        ),
        d / "footprints.parquet",
        FOOTPRINTS,
    )
    print(f"stage inputs written to {d} in {time.perf_counter() - t:.0f} s", flush=True)
    t = time.perf_counter()
    cmd = [
        sys.executable,
        "-m",
        "pipeline",
        "run",
        "pairs",
        "--workdir",
        str(d),
        "--iou",
        str(args.iou),
        "--workers",
        str(args.workers),
        "--overwrite",
        "-q",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    print(res.stdout if res.returncode == 0 else res.stdout + res.stderr[-3000:])
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    print(
        f"stage: {wall:.1f} s wall for {len(lon):,} footprints x {len(db.keys):,} windows "
        f"({len(lon) / wall:,.0f} footprints/s); peak memory of a process in it {kids:.2f} GB"
    )


def _init_noop(_):
    return None


if __name__ == "__main__":
    main()
