"""Footprints a person can check by eye: the photo beside the imagery its footprint says it shows.

:func:`overlay` renders the tile source's imagery under a footprint's four corners into the
photo's own frame (the same homography the footprint stands for) and sets three panels side
by side: the photo, that imagery, and a checkerboard of the two. A right footprint shows the
same coast, rivers and lakes in the same places in the first two panels and continuous edges
across the squares of the third; a wrong one does not. :func:`write_overlays` does it for the
photos of a footprints manifest (``python -m pipeline inspect FOOTPRINTS --overlay DIR``).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import cv2
import numpy as np

from manifests.files import atomic_output

from ..imagery.base import TileSource
from ..imagery.photos import PhotoError, read_photo
from . import homography as hg

log = logging.getLogger(__name__)

CORNERS = ("tl", "tr", "br", "bl")


def overlay(
    photo: np.ndarray, corners_lonlat: np.ndarray, source: TileSource, long_side: int = 768, square_px: int = 64
) -> np.ndarray:
    """Photo | imagery through the footprint | checkerboard of both, as one RGB uint8 image.

    Args:
        photo: RGB uint8 ``(H, W, 3)``.
        corners_lonlat: ``(4, 2)`` lon/lat degrees of the photo's top-left, top-right, bottom-right and
            bottom-left corners (the footprints manifest's corner columns).
        source: the tile source the footprint was found in.
        long_side: the panels' long side, pixels.
        square_px: the checkerboard's square, pixels.

    Returns:
        RGB uint8 ``(h, 3 * w, 3)`` with ``max(h, w) == long_side``; imagery the source lacks is black.
    """
    corners = np.asarray(corners_lonlat, np.float64).reshape(4, 2).copy()
    if not np.all(np.isfinite(corners)):
        raise ValueError("the footprint's corners are not all finite")
    # a footprint across the antimeridian: keep its corners on one side of it
    corners[:, 0] = corners[0, 0] + (corners[:, 0] - corners[0, 0] + 180.0) % 360.0 - 180.0
    hgt, wid = photo.shape[:2]
    s = long_side / max(hgt, wid)
    w, h = max(1, round(wid * s)), max(1, round(hgt * s))
    small = cv2.resize(np.ascontiguousarray(photo), (w, h), interpolation=cv2.INTER_AREA)
    to_merc = hg.photo_to_mercator(corners, w, h)
    xy = hg.apply(to_merc, hg.photo_corners(w, h))
    (x0, y0), (x1, y1) = xy.min(axis=0), xy.max(axis=0)
    n = int(2 * long_side)  # the north-up box at twice the panel's resolution, then warped down
    res = max(x1 - x0, y1 - y0) / n
    nx, ny = max(1, math.ceil((x1 - x0) / res)), max(1, math.ceil((y1 - y0) / res))
    bounds = (x0, y1 - ny * res, x0 + nx * res, y1)
    north_up = source.render(bounds, nx, ny)
    m = np.linalg.inv(hg.pixels_to_mercator(bounds, nx, ny)) @ to_merc  # panel pixels -> north-up pixels
    # warpPerspective has no area filter (INTER_AREA there is bilinear): smooth the 2x rendering first, so the
    # warp down samples an averaged image instead of aliasing
    smooth = cv2.GaussianBlur(north_up.rgb, (0, 0), 0.8)
    imagery = cv2.warpPerspective(smooth, hg.to_centres(m), (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    yy, xx = np.mgrid[0:h, 0:w]
    checker = ((yy // square_px + xx // square_px) % 2 == 0)[..., None]
    return np.concatenate([small, imagery, np.where(checker, small, imagery)], axis=1)


def safe_file_name(photo_id: str) -> str:
    """``photo_id`` as one file name inside a folder: path separators, ``..`` and control characters become
    ``_`` (an id such as ``a/../../b`` would otherwise write outside the overlay folder). A changed id gets
    ``~`` and 8 hex digits of its hash, so that ``ISS/1`` and ``ISS_1`` do not share a file."""
    import hashlib
    import re

    pid = str(photo_id)
    name = re.sub(r"[\x00-\x1f/\\:]", "_", pid).replace("..", "__").strip() or "_"
    if name != pid:
        name += "~" + hashlib.sha256(pid.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return name


def write_overlays(
    footprints,
    queries: str | os.PathLike,
    source: TileSource,
    out_dir: str | os.PathLike,
    photo_ids: list[str] | None = None,
    long_side: int = 768,
) -> list[Path]:
    """One ``{photo_id}.png`` of :func:`overlay` per localized photo of ``footprints`` (a DataFrame) or of those
    in ``photo_ids``; returns the files written. Photos without a footprint or an image are skipped, with a
    warning."""
    from manifests import read_queries

    q, _ = read_queries(queries, check_images=False, on_error="collect")
    paths = q.set_index("photo_id")["image_path"]
    fp = footprints.set_index("photo_id")
    wanted = list(photo_ids) if photo_ids else fp.index[fp["status"] == "localized"].tolist()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for pid in wanted:
        if pid not in fp.index or fp.at[pid, "status"] != "localized":
            log.warning(
                "%s: no footprint in the manifest (status %s); no overlay",
                pid,
                fp.at[pid, "status"] if pid in fp.index else "absent",
            )
            continue
        if pid not in paths.index:
            log.warning("%s: not in the queries; no overlay", pid)
            continue
        try:
            rgb = read_photo(paths[pid])
        except PhotoError as e:
            log.warning("%s: %s; no overlay", pid, e)
            continue
        row = fp.loc[pid]
        corners = np.array([[row[f"{c}_lon"], row[f"{c}_lat"]] for c in CORNERS], np.float64)
        panel = overlay(rgb, corners, source, long_side)
        path = out_dir / f"{safe_file_name(pid)}.png"
        ok, buf = cv2.imencode(".png", np.ascontiguousarray(panel[..., ::-1]))
        if not ok:
            raise RuntimeError(f"{pid}: OpenCV could not encode the overlay as PNG")
        with atomic_output(path) as tmp:
            tmp.write_bytes(buf.tobytes())
        written.append(path)
    return written
