"""One queries row -> manifest rows: what a worker does per photo, for the footprints and calibrate stages.

Never raises for a bad photo: an unreadable file, a label beyond the map or a failure deep in the search
becomes an ``error`` row with its reason, and the other photos go on.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from ..geometry.geodesy import area_km2, corners_columns, footprint_polygon
from ..geometry.mercator import MAX_LATITUDE
from ..imagery.photos import PhotoError, read_photo
from .evidence import FEATURES, Catalogue
from .search import FootprintSearch

log = logging.getLogger(__name__)

CATALOGUE = ("focal_length_mm", "tilt_deg", "nadir_lat", "nadir_lon")
"""The queries columns that the search reads besides the photo and its weak label (:class:`Catalogue`)."""


def matcher_name(extractor: str) -> str:
    """The manifest's ``matcher`` value for an extractor."""
    return f"{extractor}+lightglue" if extractor != "sift" else "sift+nn"


def _error(photo_id: str, reason: str, t0: float, matcher: str) -> dict:
    return {"photo_id": photo_id, "status": "error", "reason": reason, "geometry": None, "homography": None,
            "matcher": matcher, "elapsed_s": time.perf_counter() - t0}


def _photo(row: dict, t0: float, matcher: str) -> tuple[np.ndarray | None, dict | None]:
    """(the photo, None) or (None, its error row)."""
    lat = float(row["center_lat"])
    if abs(lat) > MAX_LATITUDE:
        return None, _error(row["photo_id"], f"weak label latitude {lat:g} is beyond the Web Mercator map (|lat| <= "
                                             f"{MAX_LATITUDE:.4f}); no imagery to match", t0, matcher)
    try:
        return read_photo(row["image_path"]), None
    except PhotoError as e:
        return None, _error(row["photo_id"], str(e), t0, matcher)


def footprint_row(search: FootprintSearch, row: dict[str, Any], matcher: str) -> dict:
    """One queries row (photo_id, image_path, center_lat/lon, and the catalogue's focal_length_mm, tilt_deg,
    nadir_lat/lon where known) -> one footprints manifest row."""
    t0 = time.perf_counter()
    pid = row["photo_id"]
    photo, err = _photo(row, t0, matcher)
    if err is not None:
        return err
    try:
        r = search.localize(photo, float(row["center_lon"]), float(row["center_lat"]), Catalogue.from_row(row))
    except Exception as e:  # one photo never stops the others
        log.exception("photo %s failed", pid)
        return _error(pid, f"{type(e).__name__}: {e}", t0, matcher)
    out = {"photo_id": pid, "status": r.status, "reason": r.reason, "inliers": r.inliers, "zoom": r.zoom,
           "rotation_deg": r.rotation_deg, "candidate_id": r.candidate_id, "iterations": r.iterations,
           "confidence": r.confidence, "geometry": None, "homography": None, "matcher": matcher,
           "elapsed_s": time.perf_counter() - t0}
    if r.evidence is not None:
        out.update({k: v for k, v in r.evidence.as_dict().items() if k != "inliers"})
    if r.status == "localized":
        poly = footprint_polygon(r.corners_lonlat)
        out.update(corners_columns(r.corners_lonlat), geometry=poly, area_km2=area_km2(poly),
                   homography=[float(v) for v in r.homography.ravel()])
    return out


def decision_rows(search: FootprintSearch, row: dict[str, Any], matcher: str, top: int = 3) -> list[dict]:
    """For calibration: one queries row -> one row per refined candidate (its evidence, its footprint's corners
    when it has one, the reason it would be turned down), or one row without a candidate when none was refined
    (``refined`` False), or an error row."""
    t0 = time.perf_counter()
    pid = row["photo_id"]
    photo, err = _photo(row, t0, matcher)
    if err is not None:
        return [err]
    try:
        decided, pairs = search.decisions(photo, float(row["center_lon"]), float(row["center_lat"]),
                                          Catalogue.from_row(row), top=top)
    except Exception as e:  # noqa: BLE001 - one photo never stops the others
        log.exception("photo %s failed", pid)
        return [_error(pid, f"{type(e).__name__}: {e}", t0, matcher)]
    base = {"photo_id": pid, "matcher": matcher, "pairs": pairs, "elapsed_s": time.perf_counter() - t0}
    if not decided:
        return [{**base, "status": "not_localized", "refined": False, "reason": "no candidate to refine"}]
    rows = []
    for d in decided:
        r = {**base, "status": "localized" if d.accepted else "not_localized", "refined": True,
             "survived": d.refinement.to_mercator is not None, "reason": d.reason, "confidence": d.confidence,
             "zoom": d.candidate.window.zoom, "rotation_deg": d.candidate.rotation_deg,
             "candidate_id": d.candidate.window.tile_id, "iterations": d.refinement.iterations,
             "trace": list(d.refinement.trace), **{k: getattr(d.evidence, k) for k in FEATURES}}
        if d.corners_lonlat is not None:
            r.update(corners_columns(d.corners_lonlat))
        rows.append(r)
    return rows
