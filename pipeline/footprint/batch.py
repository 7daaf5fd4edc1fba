"""What a worker does: a batch of queries rows -> a part file of manifest rows (footprints or decisions).

:func:`run_batch` is the task the footprints and calibrate stages hand to Dask; :func:`footprint_row` and
:func:`decision_rows` turn one queries row into rows; :func:`rows_in_file_order` puts the parts back in the
queries file's order. Never raises for a bad photo: an unreadable file, a label beyond the map or a failure deep
in the search becomes an ``error`` row with its reason, and the other photos go on.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from manifests import DECISIONS, FOOTPRINTS, to_table, write_manifest

from ..config import files_fingerprint, fingerprint
from ..geometry.geodesy import area_km2, corners_columns, footprint_polygon
from ..geometry.mercator import MAX_LATITUDE
from ..imagery.photos import PhotoError, read_photo
from .evidence import FEATURES, Catalogue
from .search import FootprintSearch
from .settings import SearchSettings

log = logging.getLogger(__name__)

CATALOGUE = ("focal_length_mm", "tilt_deg", "nadir_lat", "nadir_lon")
"""The queries columns that the search reads besides the photo and its weak label (:class:`Catalogue`)."""


def matcher_name(extractor: str) -> str:
    """The manifest's ``matcher`` value for an extractor."""
    return f"{extractor}+lightglue" if extractor != "sift" else "sift+nn"


def _error(photo_id: str, reason: str, t0: float, matcher: str) -> dict:
    return {
        "photo_id": photo_id,
        "status": "error",
        "reason": reason,
        "geometry": None,
        "homography": None,
        "matcher": matcher,
        "elapsed_s": time.perf_counter() - t0,
    }


def _photo(row: dict, t0: float, matcher: str) -> tuple[np.ndarray | None, dict | None]:
    """(the photo, None) or (None, its error row)."""
    lat = float(row["center_lat"])
    if abs(lat) > MAX_LATITUDE:
        return None, _error(
            row["photo_id"],
            f"weak label latitude {lat:g} is beyond the Web Mercator map (|lat| <= "
            f"{MAX_LATITUDE:.4f}); no imagery to match",
            t0,
            matcher,
        )
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
    out = {
        "photo_id": pid,
        "status": r.status,
        "reason": r.reason,
        "inliers": r.inliers,
        "zoom": r.zoom,
        "rotation_deg": r.rotation_deg,
        "candidate_id": r.candidate_id,
        "iterations": r.iterations,
        "confidence": r.confidence,
        "geometry": None,
        "homography": None,
        "matcher": matcher,
        "elapsed_s": time.perf_counter() - t0,
    }
    if r.evidence is not None:
        out.update({k: v for k, v in r.evidence.as_dict().items() if k != "inliers"})
    if r.status == "localized":
        poly = footprint_polygon(r.corners_lonlat)
        out.update(
            corners_columns(r.corners_lonlat),
            geometry=poly,
            area_km2=area_km2(poly),
            homography=[float(v) for v in r.homography.ravel()],
        )
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
        decided, pairs = search.decisions(
            photo, float(row["center_lon"]), float(row["center_lat"]), Catalogue.from_row(row), top=top
        )
    except Exception as e:  # noqa: BLE001 - one photo never stops the others
        log.exception("photo %s failed", pid)
        return [_error(pid, f"{type(e).__name__}: {e}", t0, matcher)]
    base = {"photo_id": pid, "matcher": matcher, "pairs": pairs, "elapsed_s": time.perf_counter() - t0}
    if not decided:
        return [{**base, "status": "not_localized", "refined": False, "reason": "no candidate to refine"}]
    rows = []
    for d in decided:
        r = {
            **base,
            "status": "localized" if d.accepted else "not_localized",
            "refined": True,
            "survived": d.refinement.to_mercator is not None,
            "reason": d.reason,
            "confidence": d.confidence,
            "zoom": d.candidate.window.zoom,
            "rotation_deg": d.candidate.rotation_deg,
            "candidate_id": d.candidate.window.tile_id,
            "iterations": d.refinement.iterations,
            "trace": list(d.refinement.trace),
            **{k: getattr(d.evidence, k) for k in FEATURES},
        }
        if d.corners_lonlat is not None:
            r.update(corners_columns(d.corners_lonlat))
        rows.append(r)
    return rows


_SEARCHERS: dict[str, FootprintSearch] = {}
"""Per worker process: one FootprintSearch (models, feature cache) for the settings of its latest batch."""


def searcher(tiles: str, settings: SearchSettings, device: str) -> FootprintSearch:
    """This process's search for ``settings`` on the tile source ``tiles`` (built once, kept while the batches'
    settings stay the same; a calibration file refitted in place counts as other settings)."""
    cal = settings.calibration
    cal_id = files_fingerprint([Path(cal)]) if cal and cal != "packaged" and Path(cal).is_file() else None
    key = fingerprint({"tiles": tiles, "device": device, "calibration_file": cal_id, **settings.flat()})
    if key not in _SEARCHERS:
        from ..tile_sources import open_tile_source

        _SEARCHERS.clear()
        _SEARCHERS[key] = FootprintSearch(open_tile_source(tiles), settings, device=device)
    return _SEARCHERS[key]


def run_batch(
    rows: list[dict], tiles: str, settings: SearchSettings, device: str, part: str, threads: int = 0, decisions: int = 0
) -> dict:
    """A Dask task: localize a batch of photos and write their rows to ``part`` (atomically).

    ``threads``: torch threads in this worker (Dask sets OMP_NUM_THREADS=1 in its workers; with fewer workers
    than cores that leaves cores idle). ``device``: ``cuda`` is this worker's GPU. ``decisions`` > 0: for
    calibration, the decisions of that many refined candidates per photo (a decisions manifest) instead of
    footprints. Returns counts for the progress line."""
    from ..runtime import release_heap_over, worker_device, worker_memory_limit

    if threads:
        import torch

        torch.set_num_threads(int(threads))
    search = searcher(tiles, settings, worker_device(device))
    matcher = matcher_name(settings.extractor)
    limit = worker_memory_limit()
    out = []
    for r in rows:
        out += decision_rows(search, r, matcher, decisions) if decisions else [footprint_row(search, r, matcher)]
        release_heap_over(limit)  # else a Dask worker paused for memory would never resume
    write_manifest(pd.DataFrame(out), part, DECISIONS if decisions else FOOTPRINTS)
    return {
        "photos": len(rows),
        "localized": sum(o["status"] == "localized" for o in out),
        "seconds": sum(o["elapsed_s"] for o in out if o.get("elapsed_s")),
    }


def rows_in_file_order(
    queries: pd.DataFrame,
    rejected: pd.DataFrame,
    part_files: list[Path],
    batch_size: int,
    kept: pa.Table | None = None,
    file_rows: pd.Series | None = None,
):
    """Yield the footprints manifest's rows (tables) in the queries file's order.

    ``queries`` (with ``_row``, the file row) were searched in batches of ``batch_size`` whose rows are in
    ``part_files``; ``rejected`` (with ``row``) are the bad rows, each one error row put where it is in the file.
    Streams a part file at a time. With ``kept`` (``--retry-errors``: the old manifest's rows to keep, already in
    memory) all rows are sorted at once by ``file_rows`` (photo_id -> file row, the whole file); kept rows of
    photos the file no longer has come last, in their old order."""

    def order(table: pa.Table, rows: pd.Series) -> pa.Table:
        key = rows.reindex(table.column("photo_id").to_pandas()).to_numpy(dtype=np.float64, copy=True)
        gone = np.isnan(key)
        key[gone] = np.inf
        return table.take(pa.array(np.argsort(key, kind="stable")))

    if len(rejected):
        err = to_table(
            pd.DataFrame(
                {
                    "photo_id": rejected["photo_id"].astype(str),
                    "status": "error",
                    "reason": "bad queries row: " + rejected["reason"].astype(str),
                }
            ),
            FOOTPRINTS,
        )
        err_rows = rejected["row"].to_numpy()
    else:
        err, err_rows = None, np.empty(0, dtype=np.int64)
    if kept is not None:
        tables = [kept, *(pq.read_table(f) for f in part_files)] + ([err] if err is not None else [])
        yield order(pa.concat_tables([t.cast(FOOTPRINTS.schema) for t in tables]), file_rows)
        return
    done = 0  # bad rows yielded so far (err_rows is sorted)
    for k, f in enumerate(part_files):
        batch = queries.iloc[k * batch_size : (k + 1) * batch_size]
        upto = int(np.searchsorted(err_rows, int(batch["_row"].iloc[-1]), side="right"))
        rows = pd.Series(
            np.concatenate([batch["_row"].to_numpy(), err_rows[done:upto]]),
            index=np.concatenate(
                [
                    batch["photo_id"].to_numpy(dtype=object),
                    rejected["photo_id"].iloc[done:upto].astype(str).to_numpy(dtype=object),
                ]
            ),
        )
        pieces = [pq.read_table(f).cast(FOOTPRINTS.schema)] + (
            [err.slice(done, upto - done)] if err is not None else []
        )
        done = upto
        yield order(pa.concat_tables(pieces), rows)
    if err is not None:
        yield err.slice(done)
