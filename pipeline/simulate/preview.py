"""A contact sheet of a sample workspace: each photo beside the north-up truth around it.

The truth panel is the workspace's own imagery (``tiles/``) rendered north-up around the
footprint, with the footprint drawn in yellow, its top-left corner as a red dot (so the
photo's rotation can be read off) and the weak label as a cyan cross.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from manifests.files import atomic_output

from ..geometry.geodesy import wrap_lon
from ..geometry.mercator import lonlat_to_mercator
from ..tile_sources import open_tile_source

CELL = 300
"""Height of each panel, pixels."""


def _pick(truth: pd.DataFrame, n: int) -> pd.DataFrame:
    """Up to ``n`` photos: one of each negative kind, the rest localizable ones (by id)."""
    truth = truth.sort_values("photo_id")
    neg = truth[~truth["localizable"]].groupby("reason").head(1)
    pos = truth[truth["localizable"]].head(max(0, n - len(neg)))
    return pd.concat([pos, neg]).head(n)


def _truth_panel(source, row, height: int) -> np.ndarray:
    if pd.notna(row.tl_lat):
        lons = np.array([row.tl_lon, row.tr_lon, row.br_lon, row.bl_lon])
        lats = np.array([row.tl_lat, row.tr_lat, row.br_lat, row.bl_lat])
    else:  # limb: no footprint, show 100 km around the label
        lons = np.array([row.center_lon - 0.6, row.center_lon + 0.6])
        lats = np.array([row.center_lat - 0.45, row.center_lat + 0.45])
    lons = row.center_lon + wrap_lon(lons - row.center_lon)  # on the label's side of lon 180
    x, y = lonlat_to_mercator(lons, lats)
    lx, ly = lonlat_to_mercator(row.center_lon, row.center_lat)
    xmin, xmax = min(x.min(), lx), max(x.max(), lx)
    ymin, ymax = min(y.min(), ly), max(y.max(), ly)
    pad = 0.15 * max(xmax - xmin, ymax - ymin)
    xmin, xmax, ymin, ymax = xmin - pad, xmax + pad, ymin - pad, ymax + pad
    width = max(1, int(round(height * (xmax - xmin) / (ymax - ymin))))
    img = np.ascontiguousarray(source.render((xmin, ymin, xmax, ymax), width, height).rgb[..., ::-1])

    def px(xx, yy):
        return (
            np.column_stack(
                [(np.asarray(xx) - xmin) / (xmax - xmin) * width, (ymax - np.asarray(yy)) / (ymax - ymin) * height]
            )
            .round()
            .astype(np.int32)
        )

    if pd.notna(row.tl_lat):
        pts = px(x, y)
        cv2.polylines(img, [pts], True, (0, 230, 255), 2, cv2.LINE_AA)
        cv2.circle(img, tuple(int(v) for v in pts[0]), 5, (0, 0, 255), -1, cv2.LINE_AA)
    c = px([lx], [ly])[0]
    cv2.drawMarker(img, (int(c[0]), int(c[1])), (255, 255, 0), cv2.MARKER_CROSS, 14, 2)
    return img


def _caption(img: np.ndarray, text: str) -> np.ndarray:
    bar = np.full((22, img.shape[1], 3), 30, np.uint8)
    cv2.putText(bar, text, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (235, 235, 235), 1, cv2.LINE_AA)
    return np.concatenate([img, bar], axis=0)


def contact_sheet(workdir: str | os.PathLike, out_png: str | os.PathLike, n: int = 12, columns: int = 2) -> int:
    """Write the contact sheet of up to ``n`` photos of the workspace; returns how many."""
    from manifests import read_manifest

    workdir = Path(workdir)
    truth = read_manifest(workdir / "truth.parquet", "truth", geometry=False)
    source = open_tile_source(workdir / "tiles")
    cells = []
    for row in _pick(truth, n).itertuples(index=False):
        photo = cv2.imread(str(workdir / "photos" / f"{row.photo_id}.jpg"), cv2.IMREAD_COLOR)
        if photo is None:
            continue
        photo = cv2.resize(
            photo, (int(round(CELL * photo.shape[1] / photo.shape[0])), CELL), interpolation=cv2.INTER_AREA
        )
        panel = _truth_panel(source, row, CELL)
        gap = np.full((CELL, 6, 3), 255, np.uint8)
        pair = np.concatenate([photo, gap, panel], axis=1)
        area = f"{row.area_km2:.0f} km2" if pd.notna(row.area_km2) else "no footprint"
        text = (
            f"{row.photo_id} {row.reason} ({row.split})  f {row.focal_length_mm:.0f} mm  tilt {row.tilt_deg:.0f}  "
            f"roll {row.roll_deg:.0f}  cloud {row.cloud_pct:.0f}%  {area}"
        )
        cells.append(_caption(pair, text))
    if not cells:
        raise FileNotFoundError(
            f"no photos to show in {workdir}; create the workspace with `python -m pipeline run sample`"
        )
    width = max(c.shape[1] for c in cells)
    cells = [np.pad(c, ((0, 0), (0, width - c.shape[1]), (0, 0)), constant_values=255) for c in cells]
    rows = []
    for i in range(0, len(cells), columns):
        group = cells[i : i + columns]
        group += [np.full_like(cells[0], 255)] * (columns - len(group))
        rows.append(
            np.concatenate(
                [np.concatenate([g, np.full((g.shape[0], 12, 3), 255, np.uint8)], axis=1) for g in group], axis=1
            )
        )
        rows.append(np.full((12, rows[-1].shape[1], 3), 255, np.uint8))
    sheet = np.concatenate(rows, axis=0)
    ok, buf = cv2.imencode(".png", sheet)
    if not ok:
        raise RuntimeError("OpenCV could not encode the PNG")
    with atomic_output(out_png) as tmp:
        tmp.write_bytes(buf.tobytes())
    return len(cells)
