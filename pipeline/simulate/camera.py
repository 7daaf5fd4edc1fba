"""A hand-held camera on the ISS, and its pixels ray-cast onto the WGS84 ellipsoid.

Frames and units: ECEF metres (WGS84), geodetic degrees, the local east/north/up frame of a
point. Image pixel coordinates are continuous, (u, v) = (column, row) with the image's
top-left corner at (0, 0) and pixel centres at half-integers, so the image's four outer
corners are (0, 0), (W, 0), (W, H), (0, H): the corner convention of the footprints
manifest ("ground points of the photo's top-left ... corners").

The camera is a pinhole: a sensor ``sensor_mm`` (36 x 24 mm, full frame) behind a lens of
focal length ``focal_mm``, looking along ``forward`` with image axes ``right`` (u grows) and
``down`` (v grows). Square pixels: the image's aspect ratio is the sensor's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from pyproj import Geod

WGS84_A = 6378137.0
WGS84_F = 1.0 / 298.257223563
WGS84_B = WGS84_A * (1.0 - WGS84_F)
WGS84_E2 = WGS84_F * (2.0 - WGS84_F)
EARTH_RADIUS_M = 6371008.8
"""Mean radius, used only to aim the camera (the ray casting itself is on the ellipsoid)."""
_GEOD = Geod(ellps="WGS84")


def geodetic_to_ecef(lon, lat, h=0.0) -> np.ndarray:
    """(lon, lat) degrees, height metres -> ECEF metres, shape (..., 3)."""
    lam, phi = np.radians(lon), np.radians(lat)
    sp, cp = np.sin(phi), np.cos(phi)
    n = WGS84_A / np.sqrt(1.0 - WGS84_E2 * sp * sp)
    return np.stack([(n + h) * cp * np.cos(lam), (n + h) * cp * np.sin(lam), (n * (1.0 - WGS84_E2) + h) * sp], axis=-1)


def ecef_to_lonlat(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ECEF points (..., 3) near the surface -> (lon, lat) degrees (Bowring, sub-mm at h ~ 0)."""
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    lon = np.degrees(np.arctan2(y, x))
    r = np.hypot(x, y)
    ep2 = WGS84_E2 / (1.0 - WGS84_E2)
    th = np.arctan2(z * WGS84_A, r * WGS84_B)
    lat = np.arctan2(z + ep2 * WGS84_B * np.sin(th) ** 3, r - WGS84_E2 * WGS84_A * np.cos(th) ** 3)
    return lon, np.degrees(lat)


def enu_axes(lon: float, lat: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit east, north and up (geodetic normal) vectors in ECEF at (lon, lat) degrees."""
    lam, phi = math.radians(lon), math.radians(lat)
    e = np.array([-math.sin(lam), math.cos(lam), 0.0])
    n = np.array([-math.sin(phi) * math.cos(lam), -math.sin(phi) * math.sin(lam), math.cos(phi)])
    u = np.array([math.cos(phi) * math.cos(lam), math.cos(phi) * math.sin(lam), math.sin(phi)])
    return e, n, u


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


@dataclass(frozen=True)
class Camera:
    """A pinhole camera in ECEF: ``position`` (3,) m, orthonormal ``forward``, ``right``, ``down``.

    ``width`` x ``height`` pixels over a ``sensor_mm`` sensor, lens ``focal_mm``.
    """

    position: np.ndarray
    forward: np.ndarray
    right: np.ndarray
    down: np.ndarray
    focal_mm: float
    width: int
    height: int
    sensor_mm: tuple[float, float] = (36.0, 24.0)

    @property
    def pixel_mm(self) -> float:
        return self.sensor_mm[0] / self.width

    def rays(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Unit ray directions (..., 3) in ECEF through image points (u, v) pixels."""
        xm = (np.asarray(u, np.float64) - self.width / 2.0) * self.pixel_mm
        ym = (np.asarray(v, np.float64) - self.height / 2.0) * self.pixel_mm
        d = self.forward * self.focal_mm + self.right * xm[..., None] + self.down * ym[..., None]
        return _unit(d)

    def cast(self, u, v) -> GroundHits:
        """Ray-cast image points (u, v) (any shape) onto the WGS84 ellipsoid (height 0)."""
        d = self.rays(u, v)
        scale = np.array([1.0 / WGS84_A, 1.0 / WGS84_A, 1.0 / WGS84_B])
        o = self.position * scale
        ds = d * scale
        a = np.einsum("...k,...k->...", ds, ds)
        b = np.einsum("...k,k->...", ds, o)
        c = float(o @ o) - 1.0
        disc = b * b - a * c
        hit = disc >= 0.0
        t = (-b - np.sqrt(np.where(hit, disc, 0.0))) / a
        hit &= t > 0.0
        p = self.position + d * t[..., None]
        lon, lat = ecef_to_lonlat(p)
        # cosine of the view zenith angle at the ground: the ray against the ellipsoid normal
        nrm = _unit(p * np.array([1.0 / WGS84_A**2, 1.0 / WGS84_A**2, 1.0 / WGS84_B**2]))
        cos_vza = -np.einsum("...k,...k->...", d, nrm)
        lon = np.where(hit, lon, np.nan)
        lat = np.where(hit, lat, np.nan)
        return GroundHits(lon, lat, hit, np.where(hit, cos_vza, 0.0), np.where(hit, t, np.nan))

    def corners(self) -> np.ndarray:
        """Image corners (4, 2) pixels: top-left, top-right, bottom-right, bottom-left."""
        w, h = float(self.width), float(self.height)
        return np.array([[0.0, 0.0], [w, 0.0], [w, h], [0.0, h]])


@dataclass(frozen=True)
class GroundHits:
    """Ground points of rays: ``lon``, ``lat`` degrees (NaN where the ray misses the Earth),
    ``hit`` bool, ``cos_vza`` cosine of the view zenith angle at the ground, ``range_m``."""

    lon: np.ndarray
    lat: np.ndarray
    hit: np.ndarray
    cos_vza: np.ndarray
    range_m: np.ndarray


def central_angle_for_tilt(tilt_deg: float, altitude_m: float) -> float:
    """Earth central angle (radians) between the nadir and the ground point seen at off-nadir
    angle ``tilt_deg`` from ``altitude_m`` (spherical Earth). Raises past the horizon."""
    r = EARTH_RADIUS_M
    s = (r + altitude_m) / r * math.sin(math.radians(tilt_deg))
    if s >= 1.0:
        horizon = math.degrees(math.asin(r / (r + altitude_m)))
        raise ValueError(f"tilt {tilt_deg} deg looks past the horizon ({horizon:.1f} deg at {altitude_m / 1e3:.0f} km)")
    zenith = math.asin(s)
    return zenith - math.radians(tilt_deg)


def camera_looking_at(
    target_lon: float,
    target_lat: float,
    tilt_deg: float,
    azimuth_deg: float,
    roll_deg: float,
    altitude_m: float,
    focal_mm: float,
    width: int,
    height: int,
    sensor_mm: tuple[float, float] = (36.0, 24.0),
) -> tuple[Camera, tuple[float, float]]:
    """A camera at ``altitude_m`` whose optical axis hits (target_lon, target_lat), tilted
    ``tilt_deg`` off nadir; ``azimuth_deg`` is the direction (clockwise from north) from the
    nadir point towards the target. With roll 0 the image's top is the far side (for a nadir
    view: north); ``roll_deg`` turns the camera about its axis (image content turns
    counter-clockwise for positive roll). Returns the camera and the nadir (lon, lat)."""
    gamma = central_angle_for_tilt(tilt_deg, altitude_m)
    # the nadir lies gamma away from the target; aim so that the azimuth *at the nadir* towards
    # the target is azimuth_deg (meridians converge: it differs from the back azimuth)
    back = (azimuth_deg + 180.0) % 360.0
    for _ in range(4):
        nlon, nlat, _ = _GEOD.fwd(target_lon, target_lat, back, gamma * EARTH_RADIUS_M)
        if gamma == 0.0:
            break
        seen = _GEOD.inv(nlon, nlat, target_lon, target_lat)[0]
        back += (azimuth_deg - seen + 180.0) % 360.0 - 180.0
    e, n, up = enu_axes(nlon, nlat)
    pos = geodetic_to_ecef(nlon, nlat, altitude_m)
    target = geodetic_to_ecef(target_lon, target_lat, 0.0)
    fwd = _unit(target - pos)
    horiz = target - pos
    horiz = horiz - (horiz @ up) * up
    if np.linalg.norm(horiz) < 1.0:  # straight down: north is up
        horiz = n
    up_img = horiz - (horiz @ fwd) * fwd
    up_img = _unit(up_img)
    down0 = -up_img
    right0 = np.cross(down0, fwd)
    r = math.radians(roll_deg)
    right = math.cos(r) * right0 + math.sin(r) * down0
    down = -math.sin(r) * right0 + math.cos(r) * down0
    cam = Camera(pos, fwd, _unit(right), _unit(down), float(focal_mm), int(width), int(height), tuple(sensor_mm))
    return cam, (float(nlon), float(nlat))


def off_nadir_deg(camera: Camera, nadir_lonlat: tuple[float, float]) -> float:
    """The angle (degrees) between the optical axis and the geodetic nadir of the camera."""
    _, _, up = enu_axes(*nadir_lonlat)
    return math.degrees(math.acos(float(np.clip(-(camera.forward @ up), -1.0, 1.0))))
