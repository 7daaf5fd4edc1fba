"""Plan and render the sample workspace's astronaut photos, with their ground truth.

A photo is planned in the main process (cheap: a few rays cast), then rendered anywhere (a
pure function of the plan and the world seed). Plans come from ``numpy.random.default_rng``
seeded with (seed, photo index), so the same seed gives the same photos whatever the number
of workers.

What is simulated (units: degrees, metres, millimetres, pixels):

- the ISS 400-420 km up; a hand-held camera, 36 x 24 mm sensor, focal length 50-1600 mm
  (log-uniform), off-nadir tilt 0-60 deg (more near nadir), any azimuth and roll;
- footprints between :attr:`SampleSize.min_area_km2` and ``max_area_km2``, mostly over land,
  entirely inside their split's part of the region (train: the west, eval: the east);
- the weak label: the ground point of a pixel near the centre (Gaussian, 4 % of the frame);
- negatives: ``limb`` (tilted past the horizon: part of the frame is space), ``night``,
  ``wrong_label`` (the label moved well outside the footprint), ``clouds`` (overcast).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np
import pandas as pd

from ..geometry.geodesy import area_km2, corners_columns, footprint_polygon
from ..geometry.mercator import lonlat_to_mercator
from ..world import ProceduralWorld
from .appearance import Appearance, apply_appearance, encode_jpeg
from .camera import EARTH_RADIUS_M, Camera, camera_looking_at
from .render import View, render_view

GLOBE = (-180.0, -80.0, 180.0, 80.0)
"""Region of the world the photos are rendered from: the same geography as the sample's
world (same seed) but without its edge, so that a limb photo sees land to the horizon."""
SENSOR_MM = (36.0, 24.0)


@dataclass(frozen=True)
class SampleSize:
    """One size of sample workspace: region (west, south, east, north) degrees, number of
    photos, photo width in pixels (height = 2/3 of it), the eastern share of the region held
    out for evaluation, the footprint area range (km2) and the share of each negative kind."""

    region: tuple[float, float, float, float]
    photos: int
    width: int
    eval_fraction: float = 0.25
    min_area_km2: float = 150.0
    max_area_km2: float = 40_000.0
    negatives: dict = field(default_factory=lambda: {"limb": 0.05, "night": 0.05, "wrong_label": 0.06, "clouds": 0.05})


SIZES = {
    "tiny": SampleSize((3.0, 45.0, 5.0, 47.0), photos=10, width=512, eval_fraction=0.3, max_area_km2=6_000.0),
    "small": SampleSize((2.0, 44.0, 8.0, 48.0), photos=200, width=640),
    "large": SampleSize((-10.0, 35.0, 20.0, 55.0), photos=3000, width=768, max_area_km2=60_000.0),
}


@dataclass(frozen=True)
class PhotoPlan:
    """Everything needed to render one photo (see the module doc for the ranges)."""

    index: int
    photo_id: str
    split: str
    reason: str
    target_lon: float
    target_lat: float
    tilt_deg: float
    azimuth_deg: float
    roll_deg: float
    altitude_m: float
    focal_mm: float
    width: int
    height: int
    label_lon: float
    label_lat: float
    world_year: int
    acquired_at: str
    appearance: Appearance

    @property
    def localizable(self) -> bool:
        return self.reason == "ok"

    def camera(self) -> tuple[Camera, tuple[float, float]]:
        """The camera and its nadir (lon, lat)."""
        return camera_looking_at(
            self.target_lon,
            self.target_lat,
            self.tilt_deg,
            self.azimuth_deg,
            self.roll_deg,
            self.altitude_m,
            self.focal_mm,
            self.width,
            self.height,
            SENSOR_MM,
        )


def split_boxes(region, eval_fraction: float) -> dict[str, tuple[float, float, float, float]]:
    """The train (west) and eval (east) parts of ``region``, split along a meridian."""
    west, south, east, north = region
    cut = east - (east - west) * eval_fraction
    return {"train": (west, south, cut, north), "eval": (cut, south, east, north)}


def photo_id(index: int) -> str:
    """Simulated photos are named like NASA's (mission-roll-frame): SIM-E-00042."""
    return f"SIM-E-{index:05d}"


class LandMap:
    """Fraction of land (not water) over a region, from a coarse render of the world."""

    def __init__(self, world: ProceduralWorld, region, pixel_m: float = 2000.0):
        west, south, east, north = region
        x0, y0 = lonlat_to_mercator(west, south)
        x1, y1 = lonlat_to_mercator(east, north)
        self.bounds = (float(x0), float(y0), float(x1), float(y1))
        self.nx = max(8, int((x1 - x0) / pixel_m))
        self.ny = max(8, int((y1 - y0) / pixel_m))
        rgb = world.render(self.bounds, self.nx, self.ny).rgb.astype(np.float32) / 255.0
        water = (rgb[..., 2] > rgb[..., 0] + 0.02) & (rgb.mean(axis=2) < 0.3)
        self.land = (~water).astype(np.float32)

    def fraction(self, corners_lonlat: np.ndarray) -> float:
        x, y = lonlat_to_mercator(corners_lonlat[:, 0], corners_lonlat[:, 1])
        xmin, ymin, xmax, ymax = self.bounds
        px = (np.asarray(x) - xmin) / (xmax - xmin) * self.nx
        py = (ymax - np.asarray(y)) / (ymax - ymin) * self.ny
        mask = np.zeros((self.ny, self.nx), np.uint8)
        cv2.fillPoly(mask, [np.round(np.column_stack([px, py]) * 16).astype(np.int32)], 1, shift=4)
        n = mask.sum()
        return float((self.land * mask).sum() / n) if n else 0.0


def _inside(lon, lat, box, margin_deg: float = 0.0) -> bool:
    w, s, e, n = box
    lon, lat = np.asarray(lon), np.asarray(lat)
    return bool(
        np.all((lon > w + margin_deg) & (lon < e - margin_deg) & (lat > s + margin_deg) & (lat < n - margin_deg))
    )


def _appearance(rng: np.random.Generator, reason: str) -> Appearance:
    gains = np.exp(rng.normal(0.0, 0.06, 3))
    gains = gains / gains[1]
    cloudy = rng.uniform() < 0.5
    return Appearance(
        cloud_cover=1.0
        if reason == "clouds"
        else (float(rng.uniform(0.02, 0.4)) if cloudy and reason != "night" else 0.0),
        cloud_km=float(rng.uniform(6.0, 35.0)),
        haze_tau=float(rng.uniform(0.03, 0.2)),
        gains=tuple(float(g) for g in gains),
        exposure=float(2.0 ** rng.normal(0.0, 0.25)),
        gamma=float(rng.uniform(0.85, 1.15)),
        vignetting=float(rng.uniform(0.05, 0.35)),
        structure=bool(rng.uniform() < 0.1),
        night=reason == "night",
        noise=float(rng.uniform(0.004, 0.015)),
        jpeg_quality=int(rng.integers(70, 96)),
        seed=int(rng.integers(2**31)),
    )


def _label(rng: np.random.Generator, cam: Camera) -> tuple[float, float] | None:
    """The weak label: the ground point of a pixel a person would click near the centre."""
    du, dv = np.clip(rng.normal(0.0, 0.04, 2), -0.15, 0.15)
    hit = cam.cast(np.array([cam.width * (0.5 + du)]), np.array([cam.height * (0.5 + dv)]))
    if not hit.hit[0]:
        return None
    return float(hit.lon[0]), float(hit.lat[0])


def _corners(cam: Camera) -> np.ndarray | None:
    """Ground (lon, lat) of the image's corners and edge midpoints (8, 2); None if any misses."""
    w, h = cam.width, cam.height
    u = np.array([0, w, w, 0, w / 2, w, w / 2, 0], float)
    v = np.array([0, 0, h, h, 0, h / 2, h, h / 2], float)
    g = cam.cast(u, v)
    if not g.hit.all():
        return None
    return np.column_stack([g.lon, g.lat])


def _plan_one(index: int, seed: int, reason: str, split: str, box, size: SampleSize, land: LandMap) -> PhotoPlan:
    rng = np.random.default_rng([seed, index])
    w, h = size.width, int(round(size.width * SENSOR_MM[1] / SENSOR_MM[0]))
    year = int(rng.integers(4))
    doy, sec = int(rng.integers(0, 365)), int(rng.integers(0, 86400))
    acquired = (pd.Timestamp(f"{2019 + year}-01-01", tz="UTC") + pd.Timedelta(days=doy, seconds=sec)).isoformat()
    app = _appearance(rng, reason)
    west, south, east, north = box
    for _attempt in range(2000):
        tlon = float(rng.uniform(west, east))
        tlat = float(rng.uniform(south, north))
        alt = float(rng.uniform(400e3, 420e3))
        az = float(rng.uniform(0.0, 360.0))
        if reason == "limb":
            focal = float(math.exp(rng.uniform(math.log(50.0), math.log(90.0))))
            horizon = math.degrees(math.asin(EARTH_RADIUS_M / (EARTH_RADIUS_M + alt)))
            half_v = math.degrees(math.atan(SENSOR_MM[1] / 2 / focal))
            tilt = horizon - half_v * float(rng.uniform(0.25, 0.7))
            roll = float(rng.uniform(-12.0, 12.0))
        else:
            focal = float(math.exp(rng.uniform(math.log(50.0), math.log(1600.0))))
            tilt = 60.0 * float(rng.uniform()) ** 1.5
            roll = float(rng.uniform(0.0, 360.0))
        cam, _ = camera_looking_at(tlon, tlat, tilt, az, roll, alt, focal, w, h, SENSOR_MM)
        label = _label(rng, cam)
        if label is None:
            continue
        if reason == "limb":
            if not _inside(*label, box):
                continue
        else:
            ground = _corners(cam)
            if ground is None or not _inside(ground[:, 0], ground[:, 1], box, 0.02):
                continue
            poly = footprint_polygon(ground[:4])
            area = area_km2(poly)
            if not size.min_area_km2 <= area <= size.max_area_km2:
                continue
            if land.fraction(ground[:4]) < 0.6:
                continue
            if reason == "wrong_label":
                label = _wrong_label(rng, label, poly, area, box)
                if label is None:
                    continue
        return PhotoPlan(
            index,
            photo_id(index),
            split,
            reason,
            tlon,
            tlat,
            tilt,
            az,
            roll,
            alt,
            focal,
            w,
            h,
            label[0],
            label[1],
            year,
            acquired,
            app,
        )
    raise RuntimeError(
        f"could not place photo {index} ({reason}) in {box} after 2000 tries; use a larger region or a smaller --size"
    )


def _wrong_label(rng, label, poly, area: float, box) -> tuple[float, float] | None:
    """A label well outside the footprint (0.8 to 2.5 footprint widths plus 40 km away)."""
    from pyproj import Geod
    from shapely.geometry import Point

    geod = Geod(ellps="WGS84")
    width_km = math.sqrt(area)
    for _ in range(50):
        dist_km = width_km * float(rng.uniform(0.8, 2.5)) + 40.0
        lon, lat, _ = geod.fwd(label[0], label[1], float(rng.uniform(0, 360)), dist_km * 1e3)
        if _inside(lon, lat, box, 0.02) and not poly.buffer(0.05).contains(Point(lon, lat)):
            return float(lon), float(lat)
    return None


def plan_photos(size: SampleSize, seed: int, world: ProceduralWorld, n: int | None = None) -> list[PhotoPlan]:
    """Plans of the sample's photos: kinds, splits and cameras (deterministic in ``seed``)."""
    n = size.photos if n is None else int(n)
    rng = np.random.default_rng([seed, 2**20])
    kinds: list[str] = []
    for reason, share in size.negatives.items():
        kinds += [reason] * max(1 if n >= 8 else 0, int(round(share * n)))
    kinds = (kinds + ["ok"] * n)[:n]
    kinds = [kinds[i] for i in rng.permutation(n)]
    n_eval = int(round(size.eval_fraction * n))
    splits = ["eval"] * n_eval + ["train"] * (n - n_eval)
    splits = [splits[i] for i in rng.permutation(n)]
    boxes = split_boxes(size.region, size.eval_fraction)
    land = LandMap(world, size.region)
    return [_plan_one(i, seed, kinds[i], splits[i], boxes[splits[i]], size, land) for i in range(n)]


def render_photo(plan: PhotoPlan, seed: int) -> tuple[bytes, dict, View]:
    """Render a planned photo: (JPEG bytes, truth row, the clean view before appearance)."""
    world = ProceduralWorld(GLOBE, seed=seed, year=plan.world_year, cache_bytes=0)
    cam, nadir = plan.camera()
    view = render_view(cam, world, max_render_side=1024 if plan.reason == "limb" else 4096)
    img = apply_appearance(view, cam, plan.appearance)
    jpeg = encode_jpeg(img, plan.appearance.jpeg_quality)
    row = truth_row(plan, cam, nadir)
    return jpeg, row, view


def truth_row(plan: PhotoPlan, cam: Camera, nadir: tuple[float, float]) -> dict:
    """The truth manifest's row of a planned photo (footprint None for limb photos)."""
    row = {
        "photo_id": plan.photo_id,
        "split": plan.split,
        "localizable": plan.localizable,
        "reason": plan.reason,
        "geometry": None,
        "area_km2": None,
        "center_lat": plan.label_lat,
        "center_lon": plan.label_lon,
        "target_lat": plan.target_lat,
        "target_lon": plan.target_lon,
        "nadir_lat": nadir[1],
        "nadir_lon": nadir[0],
        "altitude_km": plan.altitude_m / 1e3,
        "focal_length_mm": plan.focal_mm,
        "tilt_deg": plan.tilt_deg,
        "azimuth_deg": plan.azimuth_deg,
        "roll_deg": plan.roll_deg,
        "width": plan.width,
        "height": plan.height,
        "world_year": plan.world_year,
        "cloud_pct": 100.0 * plan.appearance.cloud_cover,
        "iss_structure": plan.appearance.structure,
        "jpeg_quality": plan.appearance.jpeg_quality,
    }
    c = cam.corners()
    g = cam.cast(c[:, 0], c[:, 1])
    if g.hit.all():
        corners = np.column_stack([g.lon, g.lat])
        poly = footprint_polygon(corners)
        row.update(corners_columns(corners), geometry=poly, area_km2=area_km2(poly))
    return row


def query_row(plan: PhotoPlan, nadir: tuple[float, float], image_path: str) -> dict:
    """The queries manifest's row: what a cataloguer knows (metadata rounded as NASA's is)."""
    return {
        "photo_id": plan.photo_id,
        "image_path": image_path,
        "center_lat": round(plan.label_lat, 4),
        "center_lon": round(plan.label_lon, 4),
        "nadir_lat": round(nadir[1], 1),
        "nadir_lon": round(nadir[0], 1),
        "acquired_at": pd.Timestamp(plan.acquired_at),
        "focal_length_mm": float(round(plan.focal_mm)),
        "tilt_deg": float(round(plan.tilt_deg)),
        "cloud_pct": float(5 * round(20 * plan.appearance.cloud_cover)),
        "split": plan.split,
    }
