"""Homography bookkeeping for the footprint search: rotations, scales, pixel conventions, Mercator.

Every matrix here maps *continuous* pixel coordinates (the image's top-left corner at (0, 0),
pixel centres at half-integers, corners at (0, 0), (W, 0), (W, H), (0, H)) unless it says
otherwise; keypoints from the extractors and OpenCV's warps put pixel centres at integers,
and :func:`from_centres` / :func:`to_centres` convert.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..geometry.mercator import lonlat_to_mercator, mercator_to_lonlat

_HALF = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
_HALF_INV = np.linalg.inv(_HALF)


def from_centres(h: np.ndarray) -> np.ndarray:
    """A homography between integer-centre pixel coordinates -> the same in continuous ones."""
    return _HALF @ h @ _HALF_INV


def to_centres(h: np.ndarray) -> np.ndarray:
    """A homography between continuous pixel coordinates -> the same in integer-centre ones."""
    return _HALF_INV @ h @ _HALF


def rotation(k: int, width: float, height: float) -> np.ndarray:
    """Photo pixels -> pixels of ``np.rot90(photo, k)`` (k quarter turns counter-clockwise)."""
    k %= 4
    w, h = float(width), float(height)
    return {
        0: np.eye(3),
        1: np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, w], [0.0, 0.0, 1.0]]),
        2: np.array([[-1.0, 0.0, w], [0.0, -1.0, h], [0.0, 0.0, 1.0]]),
        3: np.array([[0.0, -1.0, h], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]),
    }[k]


def rotation_deg(degrees: float, width: float, height: float) -> tuple[np.ndarray, tuple[int, int]]:
    """Photo pixels -> pixels of the photo turned ``degrees`` counter-clockwise about its centre onto
    the smallest canvas that holds it; returns the matrix and the canvas (width, height).

    Equals :func:`rotation` for multiples of 90 degrees."""
    t = np.radians(float(degrees))
    c, s = np.cos(t), np.sin(t)
    c, s = (round(c), round(s)) if abs(c) < 1e-12 or abs(s) < 1e-12 else (c, s)
    w, h = float(width), float(height)
    cw, ch = abs(w * c) + abs(h * s), abs(w * s) + abs(h * c)
    rot = np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])
    m = (
        np.array([[1.0, 0, cw / 2], [0, 1.0, ch / 2], [0, 0, 1.0]])
        @ rot
        @ np.array([[1.0, 0, -w / 2], [0, 1.0, -h / 2], [0, 0, 1.0]])
    )
    return m, (int(np.ceil(cw - 1e-9)), int(np.ceil(ch - 1e-9)))


def scale(sx: float, sy: float | None = None) -> np.ndarray:
    return np.diag([float(sx), float(sx if sy is None else sy), 1.0])


def pixels_to_mercator(bounds, width: int, height: int) -> np.ndarray:
    """Pixels of a north-up image of the EPSG:3857 box ``bounds`` -> Mercator metres."""
    xmin, ymin, xmax, ymax = bounds
    return np.array([[(xmax - xmin) / width, 0.0, xmin], [0.0, -(ymax - ymin) / height, ymax], [0.0, 0.0, 1.0]])


def apply(h: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply a homography to points (N, 2); NaN where a point maps to infinity."""
    p = np.column_stack([pts, np.ones(len(pts))]) @ h.T
    with np.errstate(divide="ignore", invalid="ignore"):
        out = p[:, :2] / p[:, 2:3]
    out[np.abs(p[:, 2]) < 1e-12] = np.nan
    return out


def photo_corners(width: int, height: int) -> np.ndarray:
    """The photo's outer corners (4, 2): top-left, top-right, bottom-right, bottom-left."""
    w, h = float(width), float(height)
    return np.array([[0.0, 0.0], [w, 0.0], [w, h], [0.0, h]])


def corners_lonlat(photo_to_mercator: np.ndarray, width: int, height: int) -> np.ndarray:
    """Ground (lon, lat) degrees (4, 2) of the photo's corners: exact inverse Web Mercator."""
    xy = apply(photo_to_mercator, photo_corners(width, height))
    lon, lat = mercator_to_lonlat(xy[:, 0], xy[:, 1])
    return np.column_stack([lon, lat])


def photo_to_mercator(corners_lonlat: np.ndarray, width: int, height: int) -> np.ndarray:
    """The homography, photo pixels -> Mercator metres, that puts the photo's corners on ``corners_lonlat``
    ((4, 2) lon/lat degrees, top-left, top-right, bottom-right, bottom-left): :func:`corners_lonlat` undone."""
    lon, lat = np.asarray(corners_lonlat, np.float64).reshape(4, 2).T
    xy = np.column_stack(lonlat_to_mercator(lon, lat))
    return cv2.getPerspectiveTransform(photo_corners(width, height).astype(np.float32), xy.astype(np.float32)).astype(
        np.float64
    )


def positive_depth(h: np.ndarray, width: int, height: int) -> bool:
    """True when the whole photo maps to finite points (no line at infinity crosses it)."""
    p = np.column_stack([photo_corners(width, height), np.ones(4)]) @ h.T
    return bool(np.all(p[:, 2] > 0) or np.all(p[:, 2] < 0))
