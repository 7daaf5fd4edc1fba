"""The evidence behind one refined candidate: what the decision (:mod:`pipeline.footprint.decision`) weighs.

A photo interpreter believes a match when the evidence is strong and the geometry agrees with what the
catalogue says about the photo. Each refined candidate gets these numbers (``FEATURES``, in this order):

* ``inliers``: homography inliers of the last refinement match (photo at ``refine_px``);
* ``inlier_ratio``: those inliers over LightGlue's matches in that match (0-1);
* ``coverage``: the convex hull of the inliers over the photo's area (0-1): a match on one corner of the
  photo is weaker evidence than one spread over all of it;
* ``candidate_inliers``: the inliers of the candidate pair before refinement (photo at ``photo_px``
  against a north-up database window);
* ``shift``: how far refinement moved the footprint from the candidate's, the largest corner displacement
  over the footprint's diagonal: a true match is refined in place, a chance one wanders;
* ``area_ratio``: ``log(area / predicted area)``, the footprint's area on the ellipsoid against the one
  the catalogue predicts (focal length, the ISS at ``ALTITUDE_M``, the off-nadir angle); NaN without a
  focal length;
* ``keystone``: ``log(measured / predicted)`` of the footprint's perspective, the ratio of its longer
  to its shorter opposite edge (whichever pair is the more unequal), against the same ratio of the
  footprint the catalogue's off-nadir angle predicts; NaN without a tilt or a nadir;
* ``aspect``: ``log`` of the footprint's ground aspect (mean length of its top and bottom edges over
  that of its left and right edges) over the photo's pixel aspect.

Units: pixels, degrees, km2; ratios are natural logarithms so that 0 means "as predicted".
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import cv2
import numpy as np
from pyproj import Geod

from ..geometry.geodesy import area_km2, footprint_polygon

FEATURES = ("inliers", "inlier_ratio", "coverage", "candidate_inliers", "shift", "area_ratio", "keystone", "aspect")
"""The evidence's numbers, in the order of :meth:`Evidence.vector`."""

ALTITUDE_M = 410e3
"""The ISS's altitude for the catalogue's predictions (it flies at 400-420 km; the catalogue does not say)."""
SENSOR_MM = (36.0, 24.0)
"""A full-frame sensor, as the sample's cameras and most recent ISS cameras have (a DX body's is 1.5x smaller
across, 2.3x in area: ``area_ratio`` of a right footprint spreads that much)."""
_GEOD = Geod(ellps="WGS84")


@dataclass(frozen=True)
class Catalogue:
    """What the catalogue says about a photo besides its weak label; any of it may be missing (None)."""

    focal_mm: float | None = None
    tilt_deg: float | None = None
    nadir_lon: float | None = None
    nadir_lat: float | None = None

    @classmethod
    def from_row(cls, row) -> Catalogue:
        """From a queries row (a dict or a namedtuple); NaN and absent columns are None."""
        get = row.get if isinstance(row, dict) else (lambda k, d=None: getattr(row, k, d))

        def num(key: str) -> float | None:
            v = get(key, None)
            try:
                v = float(v)
            except (TypeError, ValueError):
                return None
            return v if math.isfinite(v) else None

        return cls(num("focal_length_mm"), num("tilt_deg"), num("nadir_lon"), num("nadir_lat"))


@dataclass(frozen=True)
class Evidence:
    """The numbers of :data:`FEATURES` for one refined candidate (NaN where they cannot be had)."""

    inliers: int
    inlier_ratio: float
    coverage: float
    candidate_inliers: int
    shift: float
    area_ratio: float = float("nan")
    keystone: float = float("nan")
    aspect: float = float("nan")

    def vector(self) -> np.ndarray:
        """(len(FEATURES),) float64 in the order of :data:`FEATURES`."""
        return np.array([float(getattr(self, k)) for k in FEATURES], np.float64)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def hull_coverage(points: np.ndarray, width: float, height: float) -> float:
    """The area of the convex hull of ``points`` (N, 2) pixels over ``width * height`` (0 for fewer than 3)."""
    pts = np.asarray(points, np.float32).reshape(-1, 2)
    if len(pts) < 3:
        return 0.0
    return float(min(1.0, cv2.contourArea(cv2.convexHull(pts)) / max(width * height, 1e-9)))


def _edge_km(corners_lonlat: np.ndarray) -> np.ndarray:
    """Geodesic lengths (4,) km of the edges tl-tr, tr-br, br-bl, bl-tl of (4, 2) lon/lat corners."""
    lon, lat = corners_lonlat[:, 0], corners_lonlat[:, 1]
    _, _, d = _GEOD.inv(lon, lat, np.roll(lon, -1), np.roll(lat, -1))
    return np.asarray(d, np.float64) / 1e3


def keystone_ratio(corners_lonlat: np.ndarray) -> float:
    """The footprint's perspective: longer over shorter edge of its more unequal pair of opposite edges (>= 1)."""
    e = _edge_km(corners_lonlat)
    pairs = [(e[0], e[2]), (e[1], e[3])]
    return float(max(max(a, b) / max(min(a, b), 1e-9) for a, b in pairs))


def ground_aspect(corners_lonlat: np.ndarray) -> float:
    """Mean length of the footprint's top and bottom edges over that of its left and right edges."""
    e = _edge_km(corners_lonlat)
    return float((e[0] + e[2]) / max(e[1] + e[3], 1e-9))


def off_nadir_deg(
    label_lon: float, label_lat: float, nadir_lon: float, nadir_lat: float, altitude_m: float = ALTITUDE_M
) -> float:
    """The off-nadir angle (degrees) of the view from above the nadir point to the label (spherical Earth)."""
    from ..simulate.camera import EARTH_RADIUS_M

    _, _, d = _GEOD.inv(nadir_lon, nadir_lat, label_lon, label_lat)
    g = d / EARTH_RADIUS_M
    r = EARTH_RADIUS_M
    return math.degrees(math.atan2(r * math.sin(g), r + altitude_m - r * math.cos(g)))


def predicted_footprint(
    label_lon: float, label_lat: float, cat: Catalogue, landscape: bool = True
) -> np.ndarray | None:
    """The footprint (4, 2) lon/lat the catalogue predicts: a full-frame camera with the catalogue's lens at
    :data:`ALTITUDE_M`, looking at the weak label from the catalogue's nadir (or with its tilt towards the
    north when the nadir is missing), roll 0. None without a focal length, or when the view misses the Earth."""
    from ..simulate.camera import camera_looking_at

    if not cat.focal_mm or cat.focal_mm <= 0:
        return None
    tilt = cat.tilt_deg
    az = 0.0
    if cat.nadir_lon is not None and cat.nadir_lat is not None:
        az = float(_GEOD.inv(cat.nadir_lon, cat.nadir_lat, label_lon, label_lat)[0])
        if tilt is None:
            tilt = off_nadir_deg(label_lon, label_lat, cat.nadir_lon, cat.nadir_lat)
    tilt = float(np.clip(tilt or 0.0, 0.0, 65.0))
    w, h = (3000, 2000) if landscape else (2000, 3000)
    sensor = SENSOR_MM if landscape else SENSOR_MM[::-1]
    try:
        cam, _ = camera_looking_at(label_lon, label_lat, tilt, az, 0.0, ALTITUDE_M, cat.focal_mm, w, h, sensor)
    except ValueError:  # past the horizon
        return None
    hits = cam.cast(cam.corners()[:, 0], cam.corners()[:, 1])
    if not hits.hit.all():
        return None
    return np.column_stack([hits.lon, hits.lat])


def catalogue_terms(
    corners_lonlat: np.ndarray, label_lon: float, label_lat: float, cat: Catalogue, width: int, height: int
) -> tuple[float, float, float]:
    """(area_ratio, keystone, aspect) of a footprint (4, 2) lon/lat of a ``width`` x ``height`` photo; see the
    module's docstring. NaN where the catalogue lacks what a prediction needs."""
    aspect = math.log(ground_aspect(corners_lonlat) / (width / height))
    pred = predicted_footprint(label_lon, label_lat, cat, landscape=width >= height)
    if pred is None:
        return float("nan"), float("nan"), aspect
    area = area_km2(footprint_polygon(corners_lonlat))
    area_ratio = math.log(max(area, 1e-9) / max(area_km2(footprint_polygon(pred)), 1e-9))
    has_tilt = cat.tilt_deg is not None or (cat.nadir_lon is not None and cat.nadir_lat is not None)
    keystone = math.log(keystone_ratio(corners_lonlat) / keystone_ratio(pred)) if has_tilt else float("nan")
    return area_ratio, keystone, aspect
