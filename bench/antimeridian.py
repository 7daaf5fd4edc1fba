"""A photo straddling lon 180, searched from weak labels on either side of it.

    python bench/antimeridian.py [--workdir DIR] [--res 100] [--seed 25]

Database windows wrap as the map does: a weak label near lon 180 lies in four windows, two of them
across it, so a photo straddling the antimeridian is first matched against windows that hold all of
it, whichever side its label is on. Tile sources read what lies beyond lon 180 from the other end of
the map. This builds one continuous procedural world cut into two EPSG:3857 GeoTIFFs at the seam
(lon 179..180 and -180..-179, ``--res`` m per pixel), a 640 x 480 photo of it looking at lon
``--look-at`` (179.9; 200 mm, turned), and localizes it from labels at several longitudes, printing
for each the share of the photo on the label's side of lon 180, the outcome, the inliers, the IoU
against the camera's true footprint and the largest corner error, with windows across lon 180
(``across``) and, side by side on the same tile source, with the windows the search had before
(``edge``: windows end at the map's edges, so only those on the label's side are matched).
No Dask, one process.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pipeline.footprint.search as search_module  # noqa: E402
from pipeline.footprint.evidence import Catalogue
from pipeline.footprint.search import FootprintSearch  # noqa: E402
from pipeline.geometry.geodesy import footprint_polygon, iou, wrap_lon  # noqa: E402
from pipeline.geometry.mercator import ORIGIN_SHIFT_M, lonlat_to_mercator  # noqa: E402
from pipeline.geometry.windows import windows_containing  # noqa: E402
from pipeline.imagery import RasterTileSource  # noqa: E402
from pipeline.simulate.camera import camera_looking_at  # noqa: E402
from pipeline.simulate.render import render_view  # noqa: E402
from pipeline.world import ProceduralWorld  # noqa: E402

WORLD_M = 2 * ORIGIN_SHIFT_M


def edge_windows(lon: float, lat: float, zoom: int, size_tiles: int = 4) -> list:
    """The windows the search had before they wrapped: those across lon 180 left out (the old path)."""
    return [w for w in windows_containing(lon, lat, zoom, size_tiles) if not w.wraps]


def seam_tiles(folder: Path, res: float, seed: int) -> list[Path]:
    """Two GeoTIFFs either side of lon 180 (lat -19..-15) cut from one world continuous across it."""
    world = ProceduralWorld((176.0, -22.0, 184.0, -12.0), seed=seed)  # lon beyond 180: unwrapped
    _, south = lonlat_to_mercator(0.0, -19.0)
    _, north = lonlat_to_mercator(0.0, -15.0)
    ny = int(round((north - south) / res))
    paths = []
    for name, xa in (("east", ORIGIN_SHIFT_M - WORLD_M / 360), ("west", ORIGIN_SHIFT_M)):
        xb = xa + WORLD_M / 360
        nx = int(round((xb - xa) / res))
        r = world.render((xa, north - ny * res, xb, north), nx, ny)  # its frame is lon 176..184 (its region)
        left = xa if name == "east" else xa - WORLD_M
        path = folder / f"{name}.tif"
        with rasterio.open(
            path,
            "w",
            driver="GTiff",
            width=nx,
            height=ny,
            count=3,
            dtype="uint8",
            crs="EPSG:3857",
            transform=from_origin(left, north, (xb - xa) / nx, res),
            nodata=0,
        ) as ds:
            ds.write(np.where(r.mask[None], np.maximum(r.rgb, 1).transpose(2, 0, 1), 0))
        paths.append(path)
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, help="where the GeoTIFFs go (default: a temporary folder)")
    ap.add_argument("--res", type=float, default=100.0, help="imagery resolution, Mercator metres per pixel")
    ap.add_argument("--seed", type=int, default=25, help="the procedural world's seed (25: land at the seam)")
    ap.add_argument("--look-at", type=float, default=179.9, help="longitude the camera looks at (lat -17)")
    ap.add_argument(
        "--labels",
        default="179.6,179.75,179.9,-179.95,-179.99",
        help="weak-label longitudes (lat -17), comma-separated",
    )
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.workdir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        tiles = seam_tiles(folder, args.res, args.seed)
        source = RasterTileSource(tiles)
        cam, _ = camera_looking_at(args.look_at, -17.0, 15.0, 60.0, 25.0, 410e3, 200.0, 640, 480)
        view = render_view(cam, source)
        photo = np.ascontiguousarray(view.rgb)
        c = cam.corners()
        hits = cam.cast(c[:, 0], c[:, 1])
        truth = np.column_stack([hits.lon, hits.lat])
        east_share = float((view.hits.lon < 0).mean())
        print(
            f"photo: {photo.shape[1]}x{photo.shape[0]} px, {view.valid.mean():.1%} with imagery, "
            f"{east_share:.0%} of it east of lon 180; true corners (lon, lat): "
            + " ".join(f"({a:.4f}, {b:.4f})" for a, b in truth)
        )
        # one search and one tile source per path: neither reuses the other's features or reads
        paths = {
            "across": (FootprintSearch(RasterTileSource(tiles)), windows_containing),
            "edge": (FootprintSearch(RasterTileSource(tiles)), edge_windows),
        }
        print(
            f"{'label lon':>10} {'side':>5} {'share':>6} {'windows':>9} {'status':>14} {'inliers':>8} {'IoU':>7} "
            f"{'corner err m':>12} {'s':>5}"
        )
        for lon in (float(v) for v in args.labels.split(",")):
            side = "east" if lon < 0 else "west"
            share = east_share if lon < 0 else 1 - east_share
            for name, (search, windows) in paths.items():
                search_module.windows_containing = windows
                t0 = time.perf_counter()
                r = search.localize(photo, lon, -17.0, Catalogue(focal_mm=200.0))
                dt = time.perf_counter() - t0
                search_module.windows_containing = windows_containing
                head = f"{lon:10.2f} {side:>5} {share:6.0%} {name:>9} {r.status:>14} {r.inliers or 0:8d}"
                if r.status != "localized":
                    print(f"{head} {'':>7} {'':>12} {dt:5.1f}  {r.reason}")
                    continue
                got = np.asarray(r.corners_lonlat)
                d = got - truth
                d[:, 0] = wrap_lon(d[:, 0])
                err = float(np.max(np.hypot(d[:, 0] * 111320 * np.cos(np.radians(17.0)), d[:, 1] * 110574)))
                score = iou(footprint_polygon(got), footprint_polygon(truth))
                print(f"{head} {score:7.4f} {err:12.0f} {dt:5.1f}  {r.candidate_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
