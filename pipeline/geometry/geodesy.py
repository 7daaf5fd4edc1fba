"""Footprint polygons, ellipsoidal areas and IoU in lon/lat (OGC:CRS84).

Conventions:

- Coordinates are WGS84 degrees in (lon, lat) order (OGC:CRS84), as in the GeoParquet
  manifests. Stored geometries have their longitudes within [-180, 180] and counter-clockwise
  exterior rings; a polygon that crosses the antimeridian is stored as a MultiPolygon of parts
  split along lon = +-180.
- Edges are straight lines in lon/lat (GeoParquet ``edges: planar``): a parallel is a straight
  edge, a meridian too. Every area computation densifies edges first (``MAX_SEGMENT_DEG``,
  ``DENSIFY_STEPS``) so that the ellipsoidal computation follows those lines rather than
  geodesics or chords.
- Areas are on the WGS84 ellipsoid's surface, in km2 (never in square degrees or Mercator
  metres). ``area_km2`` is geodesic (pyproj.Geod); ``intersection_km2`` and ``iou`` work in a
  local Lambert azimuthal equal-area projection centred on the pair.
- "Unwrapped" longitudes are continuous across the antimeridian and may leave [-180, 180]
  (e.g. 179.5 .. 180.5); ``to_crs84`` turns such geometries into stored form and ``unwrap``
  does the reverse.

These functions handle geometries smaller than a hemisphere; a ring that encloses a pole is
rejected (no astronaut photo footprint or database window does).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import pyproj
import shapely
from shapely.geometry import MultiPolygon, Polygon, box
from shapely.geometry.polygon import orient

from manifests.schemas import CORNER_COLUMNS

MAX_SEGMENT_DEG = 0.25
"""Longest edge (degrees in lon/lat) kept before an ellipsoidal area computation."""
DENSIFY_STEPS = 64
"""Edges are also cut into pieces no longer than 1/DENSIFY_STEPS of the geometry's larger
extent (rounded down to a power of two degrees), so that small footprints are followed as
closely as large ones (relative area error ~1e-7 instead of ~1e-4 for a 0.1 deg square)."""
SEAM_TOLERANCE_DEG = 1e-9
"""Pieces narrower than this in longitude (about 0.1 mm) left by splitting at +-180 are dropped."""


_GEOD = pyproj.Geod(ellps="WGS84")
_WGS84_A = 6378137.0
_WGS84_F = 1.0 / 298.257223563
_WGS84_E2 = _WGS84_F * (2.0 - _WGS84_F)
_CORNER_LABELS = ("top-left", "top-right", "bottom-right", "bottom-left")


# --------------------------------------------------------------------------- validation


def wrap_lon(lon):
    """Longitude(s) in degrees wrapped into [-180, 180). Scalars give a float, arrays an array.

    Values already in [-180, 180) are returned unchanged (bit for bit).
    """
    lon = np.asarray(lon, dtype=np.float64)
    inside = (lon >= -180.0) & (lon < 180.0)
    out = np.where(inside, lon, lon - 360.0 * np.floor((lon + 180.0) / 360.0))
    return float(out) if np.ndim(out) == 0 else out


def _check_corners(corners_lonlat) -> np.ndarray:
    """(4, 2) float64 array of (lon, lat) degrees, or ValueError saying what is wrong."""
    try:
        arr = np.asarray(corners_lonlat, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            "corners_lonlat must be a (4, 2) array of (lon, lat) numbers in degrees "
            "(top-left, top-right, bottom-right, bottom-left); it could not be read as numbers"
        ) from None
    if arr.shape != (4, 2):
        raise ValueError(
            f"corners_lonlat must have shape (4, 2): four (lon, lat) corners in degrees "
            f"(top-left, top-right, bottom-right, bottom-left); got shape {arr.shape}"
        )
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        names = ", ".join(_CORNER_LABELS[i] for i in np.flatnonzero(bad))
        raise ValueError(
            f"corners_lonlat has NaN or infinite coordinates at the {names} corner(s); "
            "the footprint is undefined: mark the photo not localized or fix its corners"
        )
    out = np.abs(arr[:, 1]) > 90.0
    if out.any():
        i = int(np.flatnonzero(out)[0])
        raise ValueError(
            f"latitude {arr[i, 1]!r} deg at the {_CORNER_LABELS[i]} corner is outside [-90, 90]; "
            "corners must be (lon, lat) pairs in degrees: check for swapped columns"
        )
    return arr


def _polygons(geom) -> list[Polygon]:
    """The non-empty polygons of a Polygon or MultiPolygon (ValueError for other types)."""
    if isinstance(geom, Polygon):
        return [] if geom.is_empty else [geom]
    if isinstance(geom, MultiPolygon):
        return [p for p in geom.geoms if not p.is_empty]
    raise ValueError(
        f"expected a shapely Polygon or MultiPolygon in (lon, lat) degrees, got "
        f"{type(geom).__name__}; build footprints with footprint_polygon() or window_polygon()"
    )


def _check_geom(geom) -> list[Polygon]:
    parts = _polygons(geom)
    for p in parts:
        xmin, ymin, xmax, ymax = p.bounds
        if not all(math.isfinite(v) for v in (xmin, ymin, xmax, ymax)):
            raise ValueError("geometry has NaN or infinite coordinates; it cannot be measured")
        if ymin < -90.0 or ymax > 90.0:
            raise ValueError(
                f"geometry latitudes span [{ymin!r}, {ymax!r}] deg, outside [-90, 90]; "
                "geometries must be in (lon, lat) order (OGC:CRS84): check for swapped axes"
            )
    return parts


def _assemble(parts: list[Polygon]) -> Polygon | MultiPolygon:
    parts = [orient(p, 1.0) for p in parts]
    if not parts:
        return Polygon()
    return parts[0] if len(parts) == 1 else MultiPolygon(parts)


# --------------------------------------------------------------------------- antimeridian


def _ring_with_seams(coords: np.ndarray) -> np.ndarray:
    """Insert a vertex wherever an edge of the closed ring crosses lon = 180 + 360 m.

    The crossing latitude is interpolated linearly in lon/lat (planar edges), once, so that the
    parts on either side of the seam share exactly the same seam vertices.
    """
    x = coords[:, 0]
    cell = np.floor((x - 180.0) / 360.0)  # which [180 + 360 m, 180 + 360 (m + 1)) strip
    crossing = np.flatnonzero(cell[:-1] != cell[1:])
    if crossing.size == 0:
        return coords
    out = []
    start = 0
    for i in crossing:
        out.append(coords[start : i + 1])
        (x0, y0), (x1, y1) = coords[i, :2], coords[i + 1, :2]
        lo, hi = sorted((cell[i], cell[i + 1]))
        seams = 180.0 + 360.0 * np.arange(lo + 1, hi + 1)
        if x1 < x0:
            seams = seams[::-1]
        for s in seams:
            if s == x0 or s == x1:
                continue
            t = (s - x0) / (x1 - x0)
            out.append(np.array([[s, y0 + (y1 - y0) * t]]))
        start = i + 1
    out.append(coords[start:])
    return np.concatenate(out, axis=0)


def _shift_lon(geom, shift: float, clamp: bool = False):
    """Add ``shift`` degrees to every longitude; ``clamp`` then clips them into [-180, 180]."""
    if shift == 0.0 and not clamp:
        return geom

    def move(xy):
        x = xy[:, 0] + shift
        if clamp:  # rounding noise of a few ulp at the antimeridian, e.g. -180.00000000000003
            x = np.clip(x, -180.0, 180.0)
        return np.column_stack([x, xy[:, 1]])

    return shapely.transform(geom, move)


def to_crs84(geom) -> Polygon | MultiPolygon:
    """Stored form of a lon/lat geometry whose longitudes may be unwrapped beyond +-180.

    Args:
        geom: Polygon or MultiPolygon in (lon, lat) degrees; longitudes continuous along each
            ring (e.g. 179.5 .. 180.5 for a polygon straddling the antimeridian), any range.

    Returns:
        The same area with longitudes within [-180, 180]: a Polygon, or a MultiPolygon whose
        parts are split along lon = +-180 (edges cut where their straight lon/lat line meets the
        meridian). Every exterior ring counter-clockwise, holes clockwise.
    """
    out: list[Polygon] = []
    for p in _check_geom(geom):
        xmin, _, xmax, _ = p.bounds
        k0 = math.floor((xmin + 180.0) / 360.0)
        k1 = math.ceil((xmax - 180.0) / 360.0)
        if k1 <= k0:  # within one [-180, 180] + 360 k strip
            out.append(_shift_lon(p, -360.0 * k0, clamp=True))
            continue
        seamed = Polygon(
            _ring_with_seams(np.asarray(p.exterior.coords)),
            [_ring_with_seams(np.asarray(r.coords)) for r in p.interiors],
        )
        for k in range(k0, k1 + 1):
            piece = seamed.intersection(box(-180.0 + 360.0 * k, -90.0, 180.0 + 360.0 * k, 90.0))
            for q in getattr(piece, "geoms", [piece]):
                if isinstance(q, Polygon) and not q.is_empty and q.area > 0.0:
                    qx0, _, qx1, _ = q.bounds
                    if qx1 - qx0 > SEAM_TOLERANCE_DEG:
                        out.append(_shift_lon(q, -360.0 * k, clamp=True))
    return _assemble(out)


def lon_extent(geom) -> tuple[float, float]:
    """Smallest longitude interval (west, east) in degrees covering ``geom``, wrap-aware.

    ``west`` is in [-180, 180] and ``east >= west``; ``east`` exceeds 180 when the geometry
    crosses the antimeridian (e.g. (179.5, 180.5)). (-180, 180) when it circles the globe.
    """
    spans = []
    for p in _check_geom(geom):
        xmin, _, xmax, _ = p.bounds
        if xmax - xmin >= 360.0:
            return -180.0, 180.0
        w = xmin if -180.0 <= xmin <= 180.0 else wrap_lon(xmin)
        e = w + (xmax - xmin)
        if e > 180.0:
            spans += [(w, 180.0), (-180.0, e - 360.0)]
        else:
            spans.append((w, e))
    if not spans:
        raise ValueError("empty geometry has no longitude extent")
    spans.sort()
    merged = [list(spans[0])]
    for w, e in spans[1:]:
        if w <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([w, e])
    # The covering interval is the complement of the largest gap on the circle; the gap that
    # wraps from the last interval round to the first is preferred on ties (no crossing).
    best_gap = merged[0][0] + 360.0 - merged[-1][1]
    west, east = merged[0][0], merged[-1][1]
    for i in range(1, len(merged)):
        gap = merged[i][0] - merged[i - 1][1]
        if gap > best_gap:
            best_gap, west, east = gap, merged[i][0], merged[i - 1][1] + 360.0
    if best_gap <= 0.0:
        return -180.0, 180.0
    return west, east


def bbox(geom) -> tuple[float, float, float, float]:
    """(west, south, east, north) in degrees, wrap-aware (GeoJSON RFC 7946 section 5.2).

    For a geometry crossing the antimeridian ``west > east`` (e.g. (179.5, 10, -179.5, 11)).
    """
    west, east = lon_extent(geom)
    south = min(p.bounds[1] for p in _polygons(geom))
    north = max(p.bounds[3] for p in _polygons(geom))
    return west, south, (east - 360.0 if east > 180.0 else east), north


def unwrap(geom, center_lon: float | None = None) -> Polygon | MultiPolygon:
    """Move each part of ``geom`` by a multiple of 360 deg to lie near ``center_lon`` and merge.

    The inverse of :func:`to_crs84`: parts split at +-180 are reunited into one polygon with
    continuous longitudes (e.g. 179.5 .. 180.5), the seam vertices left on its edges removed.

    Args:
        geom: Polygon or MultiPolygon in (lon, lat) degrees.
        center_lon: degrees; each part's bounding-box centre is moved into
            [center_lon - 180, center_lon + 180). Default: the middle of :func:`lon_extent`.

    Returns:
        Polygon or MultiPolygon with unwrapped longitudes (not for storage; see to_crs84).
    """
    parts = _check_geom(geom)
    if not parts:
        return Polygon()
    if center_lon is None:
        west, east = lon_extent(geom)
        center_lon = 0.5 * (west + east)
    moved = []
    for p in parts:
        xmin, _, xmax, _ = p.bounds
        mid = 0.5 * (xmin + xmax)
        k = math.floor((mid - (center_lon - 180.0)) / 360.0)
        moved.append(_shift_lon(p, -360.0 * k))
    if len(moved) == 1:
        return moved[0]
    merged = shapely.union_all(moved)
    # Drop the vertices that the split left on the top and bottom edges, so that a reunited
    # footprint is vertex for vertex the polygon that was split (same densification, same area).
    merged = shapely.simplify(merged, 1e-10, preserve_topology=True)
    return _assemble(_polygons(merged)) if not merged.is_empty else Polygon()


def center_lonlat(geom) -> tuple[float, float]:
    """(lon, lat) in degrees of the planar centroid of ``geom`` in unwrapped lon/lat.

    Antimeridian-aware: a footprint around lon 180 has its centre near 180, not 0.
    ``lon`` is wrapped into [-180, 180).
    """
    c = unwrap(geom).centroid
    if c.is_empty:
        raise ValueError("empty geometry has no centre")
    return wrap_lon(c.x), float(c.y)


# --------------------------------------------------------------------------- construction


def footprint_polygon(corners_lonlat) -> Polygon | MultiPolygon:
    """The ground footprint of a photo from its four corners, in stored (OGC:CRS84) form.

    Args:
        corners_lonlat: (4, 2) array-like of (lon, lat) degrees: the ground points of the
            photo's top-left, top-right, bottom-right and bottom-left corners. The photo may be
            rotated or mirrored (ring clockwise or counter-clockwise); longitudes in any range.
            Consecutive corners are joined the short way round: a step of more than 180 deg in
            longitude crosses the antimeridian.

    Returns:
        Polygon with a counter-clockwise exterior ring and longitudes within [-180, 180], or a
        MultiPolygon of counter-clockwise parts split along lon = +-180 when the footprint
        crosses the antimeridian. Edges are straight in lon/lat.

    Raises:
        ValueError: wrong shape, NaN, |lat| > 90, a ring that winds around a pole, or corners
            that do not form a simple quadrilateral of positive area (e.g. a bow-tie).
    """
    arr = _check_corners(corners_lonlat)
    lon, lat = arr[:, 0], arr[:, 1]
    u = np.empty(4)
    u[0] = lon[0] if -180.0 <= lon[0] <= 180.0 else wrap_lon(lon[0])
    for i in range(1, 4):
        # lon[i] + 360 k nearest to the previous corner (exact for the usual magnitudes)
        u[i] = lon[i] + 360.0 * round((u[i - 1] - lon[i]) / 360.0)
    if abs(u[3] - u[0]) > 180.0:
        raise ValueError(
            "the footprint's corners wind around a pole (their longitudes go all the way round); "
            "footprints enclosing a pole are not supported: mark the photo not localized"
        )
    poly = Polygon(np.column_stack([u, lat]))
    if not poly.is_valid or not poly.area > 0.0:
        reason = shapely.is_valid_reason(poly) if not poly.is_valid else "zero area"
        raise ValueError(
            f"the corners do not form a simple quadrilateral ({reason}); they must go round the "
            "photo in the order top-left, top-right, bottom-right, bottom-left as (lon, lat)"
        )
    return to_crs84(poly)


def window_polygon(window) -> Polygon | MultiPolygon:
    """Footprint of a database window (:class:`pipeline.geometry.windows.Window`).

    North-up rectangle in lon/lat from ``window.corners_lonlat()``, counter-clockwise,
    longitudes within [-180, 180]; a MultiPolygon of its two sides for the window across the
    antimeridian.
    """
    return footprint_polygon(window.corners_lonlat())


def corners_columns(corners_lonlat) -> dict[str, float]:
    """The manifest's eight corner columns from (4, 2) (lon, lat) corners in photo order.

    Returns:
        {"tl_lat", "tl_lon", "tr_lat", "tr_lon", "br_lat", "br_lon", "bl_lat", "bl_lon"}: floats
        in degrees, in the photo's own orientation (not re-ordered), longitudes wrapped into
        [-180, 180).
    """
    arr = _check_corners(corners_lonlat)
    values = [v for lon, lat in arr for v in (float(lat), wrap_lon(float(lon)))]
    return dict(zip(CORNER_COLUMNS, values))


# --------------------------------------------------------------------------- areas


def _segment_deg(bounds: tuple[float, float, float, float], max_segment_deg: float) -> float:
    """Densification step in degrees for geometries of the given (unwrapped) lon/lat bounds."""
    if not max_segment_deg > 0.0:
        raise ValueError(f"max_segment_deg must be > 0 degrees, got {max_segment_deg!r}")
    xmin, ymin, xmax, ymax = bounds
    span = max(xmax - xmin, ymax - ymin)
    if not span > 0.0:
        return float(max_segment_deg)
    # A power of two, so that the same shape elsewhere (shifted by 360 or mirrored) is cut into
    # exactly the same pieces.
    return min(float(max_segment_deg), 2.0 ** math.floor(math.log2(span / DENSIFY_STEPS)))


def _ring_area_m2(ring) -> float:
    xy = np.asarray(ring.coords)[:-1]
    area, _ = _GEOD.polygon_area_perimeter(xy[:, 0], xy[:, 1])
    return abs(area)


def area_km2(geom, max_segment_deg: float = MAX_SEGMENT_DEG) -> float:
    """Area of a lon/lat Polygon or MultiPolygon on the WGS84 ellipsoid, in km2.

    Parts split at the antimeridian are reunited first, so a crossing footprint measures the
    same as the same shape elsewhere. Edges are densified (at most ``max_segment_deg`` degrees,
    finer for small geometries: see DENSIFY_STEPS) so that the geodesic computation
    (pyproj.Geod) follows the straight lon/lat edges; holes are subtracted. An empty geometry
    has area 0.
    """
    parts = _check_geom(geom)
    if not parts:
        return 0.0
    u = unwrap(geom)
    dense = shapely.segmentize(u, _segment_deg(u.bounds, max_segment_deg))
    total = 0.0
    for p in _polygons(dense):
        total += _ring_area_m2(p.exterior) - sum(_ring_area_m2(r) for r in p.interiors)
    return total / 1e6


@lru_cache(maxsize=512)
def _laea(lat0: float, lon0: float) -> pyproj.Transformer:
    return pyproj.Transformer.from_pipeline(
        "+proj=pipeline +step +proj=unitconvert +xy_in=deg +xy_out=rad "
        f"+step +proj=laea +lat_0={lat0!r} +lon_0={lon0!r} +ellps=WGS84"
    )


def _to_laea(geom, transformer: pyproj.Transformer, segment_deg: float):
    dense = shapely.segmentize(geom, segment_deg)

    def fwd(xy):
        x, y = transformer.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    return shapely.transform(dense, fwd)


def _lat_range(parts: list[Polygon]) -> tuple[float, float]:
    return min(p.bounds[1] for p in parts), max(p.bounds[3] for p in parts)


def _overlap_m2(a, b, max_segment_deg: float) -> tuple[float, float, float]:
    """(intersection, area a, area b) in m2 in a local equal-area projection; 0s if disjoint."""
    pa, pb = _check_geom(a), _check_geom(b)
    if not pa or not pb:
        return 0.0, 0.0, 0.0
    (sa, na), (sb, nb) = _lat_range(pa), _lat_range(pb)
    if sa > nb or sb > na:
        return 0.0, 0.0, 0.0
    (wa, ea), (wb, eb) = lon_extent(a), lon_extent(b)
    if not any(wa <= eb + s and wb + s <= ea for s in (-360.0, 0.0, 360.0)):
        return 0.0, 0.0, 0.0
    if max(ea - wa, eb - wb) >= 180.0:
        raise ValueError(
            "geometries spanning 180 deg of longitude or more are too large for the local "
            "equal-area projection used by intersection_km2/iou; split them first"
        )
    ua = unwrap(a)
    c = ua.centroid
    ub = unwrap(b, center_lon=c.x)
    # The centre only fixes where the projection is least distorted; rounding it lets
    # neighbouring pairs share a cached transformer without changing any area.
    t = _laea(round(float(c.y), 3), round(wrap_lon(float(c.x)), 3))
    (xa0, ya0, xa1, ya1), (xb0, yb0, xb1, yb1) = ua.bounds, ub.bounds
    pair_bounds = (min(xa0, xb0), min(ya0, yb0), max(xa1, xb1), max(ya1, yb1))
    seg = _segment_deg(pair_bounds, max_segment_deg)
    ga, gb = _to_laea(ua, t, seg), _to_laea(ub, t, seg)
    if not (ga.is_valid and gb.is_valid):
        raise ValueError(
            "a geometry became invalid in the local equal-area projection (self-intersecting "
            "or too large); check it with shapely.is_valid_reason() in lon/lat"
        )
    inter = ga.intersection(gb).area if ga.intersects(gb) else 0.0
    return inter, ga.area, gb.area


def intersection_km2(a, b, max_segment_deg: float = MAX_SEGMENT_DEG) -> float:
    """Area of the intersection of two lon/lat geometries on the WGS84 ellipsoid, in km2.

    Both are unwrapped around ``a``'s centre (parts split at +-180 reunited), densified in
    lon/lat (as in :func:`area_km2`, one step for the pair) and projected into a Lambert azimuthal equal-area projection
    centred on ``a``; the intersection's area there is its area on the ellipsoid. 0 when the
    wrap-aware bounding boxes do not overlap. Each geometry must span less than 180 deg of
    longitude.
    """
    return _overlap_m2(a, b, max_segment_deg)[0] / 1e6


def iou(a, b, max_segment_deg: float = MAX_SEGMENT_DEG) -> float:
    """Intersection over union of two lon/lat geometries, by area on the WGS84 ellipsoid.

    Computed as intersection / (area a + area b - intersection), all in the same local
    equal-area projection as :func:`intersection_km2`. In [0, 1]: 1 for identical geometries,
    0 for disjoint ones (or when either is empty).
    """
    inter, area_a, area_b = _overlap_m2(a, b, max_segment_deg)
    union = area_a + area_b - inter
    if inter <= 0.0 or union <= 0.0:
        return 0.0
    return min(1.0, inter / union)


def zone_area_m2(lat_deg) -> np.ndarray | float:
    """Area (m2) of the WGS84 ellipsoid between the equator and the parallel ``lat_deg``, all
    the way around (negative south of the equator); vectorized. Closed form."""
    e2 = _WGS84_E2
    e = math.sqrt(e2)
    b2 = (_WGS84_A * (1.0 - _WGS84_F)) ** 2
    s = np.sin(np.radians(np.asarray(lat_deg, dtype=np.float64)))
    return 2.0 * np.pi * b2 * (s / (2.0 * (1.0 - e2 * s * s)) + np.log((1.0 + e * s) / (1.0 - e * s)) / (4.0 * e))


def box_area_km2(west, south, east, north) -> np.ndarray | float:
    """Exact WGS84 area (km2) of lon/lat boxes bounded by two meridians and two parallels.

    Closed form (the ellipsoid's zone area between two parallels times the longitude span's
    share of 360 degrees); vectorized over NumPy arrays of degrees, ``east`` > ``west``. Used
    for database windows, whose Mercator squares are exactly such boxes.
    """
    dlon = np.asarray(east, dtype=np.float64) - np.asarray(west, dtype=np.float64)
    out = np.abs(zone_area_m2(north) - zone_area_m2(south)) * dlon / 360.0 / 1e6
    return float(out) if np.ndim(out) == 0 else out
