"""The appearance gap between a clean render and an astronaut photo.

Everything here turns a :class:`~pipeline.simulate.render.View` (clean colours plus where each
pixel lands on the ground) into what a hand-held camera behind the ISS window records:
clouds fixed on the ground with their shadows, haze growing with the airmass, the Earth's limb
and black space, night, colour cast and white balance, exposure, vignetting, ISS structure in
the frame, sensor noise and JPEG compression. All randomness comes from the ``Appearance``
parameters and a seed, so a photo is reproducible.

Images are float32 (H, W, 3) in [0, 1] (display-referred RGB) until :func:`encode_jpeg`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from ..world.noise import Grid, fbm
from .camera import WGS84_A, Camera
from .render import View

F = np.float32
SPACE = (0.008, 0.009, 0.014)
HAZE = (0.62, 0.72, 0.86)
LIMB_GLOW = (0.35, 0.60, 1.00)


@dataclass(frozen=True)
class Appearance:
    """Parameters of one photo's look (all drawn by the sample generator).

    cloud_cover: fraction of the ground under cloud, 0..1; cloud_km: size of cloud cells;
    haze_tau: optical depth of the haze at the zenith; gains: white balance (3,);
    exposure: linear gain; gamma: tone curve; vignetting: darkening at the corners, 0..1;
    structure: draw ISS structure entering the frame; night: a night photo;
    noise: sensor noise (sigma, fraction of full scale); jpeg_quality: 1..100; seed.
    """

    cloud_cover: float = 0.0
    cloud_km: float = 25.0
    haze_tau: float = 0.08
    gains: tuple[float, float, float] = (1.0, 1.0, 1.0)
    exposure: float = 1.0
    gamma: float = 1.0
    vignetting: float = 0.2
    structure: bool = False
    night: bool = False
    noise: float = 0.008
    jpeg_quality: int = 90
    seed: int = 0


def _smooth(e0, e1, x):
    t = np.clip((x - F(e0)) / F(e1 - e0), F(0), F(1))
    return t * t * (F(3) - F(2) * t)


def _sample_field(field: np.ndarray, bounds, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear samples of a north-up field (h, w) over ``bounds`` at Mercator points (x, y)."""
    xmin, ymin, xmax, ymax = bounds
    h, w = field.shape
    mx = ((x - xmin) / (xmax - xmin) * w - 0.5).astype(np.float32)
    my = ((ymax - y) / (ymax - ymin) * h - 0.5).astype(np.float32)
    return cv2.remap(field, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def cloud_layers(v: View, app: Appearance, shadow_shift_m: tuple[float, float]):
    """Cloud opacity, cloud-shadow opacity and cloud brightness per pixel, (H, W) float32 in [0, 1].

    The cloud field is value noise fixed on the ground (Mercator metres), thresholded so that
    ``app.cloud_cover`` of the ground is under cloud; shadows are the same field displaced
    away from the sun by ``shadow_shift_m`` (dx, dy) metres.
    """
    h, w = v.valid.shape
    ok = v.hits.hit
    if app.cloud_cover <= 0.0 or not ok.any():
        z = np.zeros((h, w), np.float32)
        return z, z, z
    x = np.where(ok, v.x, np.nanmean(v.x))
    y = np.where(ok, v.y, np.nanmean(v.y))
    pad = 2.0 * max(abs(shadow_shift_m[0]), abs(shadow_shift_m[1])) + 1.0
    bounds = (float(x.min()) - pad, float(y.min()) - pad, float(x.max()) + pad, float(y.max()) + pad)
    side = max(bounds[2] - bounds[0], bounds[3] - bounds[1])
    n = 384
    pixel = side / n
    nx = max(2, int(math.ceil((bounds[2] - bounds[0]) / pixel)))
    ny = max(2, int(math.ceil((bounds[3] - bounds[1]) / pixel)))
    bounds = (bounds[0], bounds[3] - ny * pixel, bounds[0] + nx * pixel, bounds[3])
    g = Grid.from_box(bounds, nx, ny)
    cell = app.cloud_km * 1e3
    field = fbm(g, app.seed + 7001, cell * 4.0, smallest=pixel * 2.0, persistence=0.62)
    field += F(0.35) * fbm(g, app.seed + 7002, cell * 0.5, smallest=pixel * 2.0, persistence=0.7)
    f_here = _sample_field(field, bounds, x, y)
    full = app.cloud_cover >= 0.999
    thr = float(np.quantile(f_here[ok], 0.0 if full else 1.0 - app.cloud_cover))
    soft = 0.05
    alpha = np.ones_like(f_here) if full else _smooth(thr - soft, thr + soft, f_here)
    f_sh = _sample_field(field, bounds, x + shadow_shift_m[0], y + shadow_shift_m[1])
    shadow = _smooth(thr - soft, thr + soft, f_sh)
    # thicker cloud is brighter; the finest octaves give the tops their texture
    bright = F(0.72) + F(0.26) * _smooth(thr, thr + 0.35, f_here)
    return (
        np.where(ok, alpha, 0).astype(np.float32),
        np.where(ok, shadow, 0).astype(np.float32),
        bright.astype(np.float32),
    )


def limb_glow(camera: Camera, hit: np.ndarray) -> np.ndarray:
    """Brightness (H, W) of the atmosphere seen edge-on above the limb, for rays missing the Earth.

    The ray's closest approach to the Earth's centre gives its tangent height; the glow falls
    off with a ~25 km scale height, as the bright blue band at the edge of limb photos.
    """
    from .render import pixel_grid

    u, v = pixel_grid(camera)
    d = camera.rays(u, v)
    p = camera.position
    t = -np.einsum("...k,k->...", d, p)
    closest = p + d * np.maximum(t, 0.0)[..., None]
    tangent_km = (np.linalg.norm(closest, axis=-1) - WGS84_A) / 1e3
    glow = np.exp(-np.clip(tangent_km, 0.0, None) / 25.0)
    return np.where(hit, 0.0, glow).astype(np.float32)


def _structure_mask(h: int, w: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Coverage (H, W) and colour (H, W, 3) of ISS structure (a truss or a solar array edge)
    entering the frame from one side, out of focus."""
    cov = np.zeros((h, w), np.float32)
    side = int(rng.integers(4))
    depth = float(rng.uniform(0.08, 0.3))
    a, b = rng.uniform(0.0, 1.0, 2)
    if side == 0:
        pts = [(0, 0), (w, 0), (w, int(h * depth * b * 1.5)), (0, int(h * depth * (a + 0.3)))]
    elif side == 1:
        pts = [(0, h), (w, h), (w, h - int(h * depth * b * 1.5)), (0, h - int(h * depth * (a + 0.3)))]
    elif side == 2:
        pts = [(0, 0), (0, h), (int(w * depth * a), h), (int(w * depth * (b + 0.3)), 0)]
    else:
        pts = [(w, 0), (w, h), (w - int(w * depth * a), h), (w - int(w * depth * (b + 0.3)), 0)]
    cv2.fillPoly(cov, [np.array(pts, np.int32)], 1.0)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    period = float(rng.uniform(12, 40))
    ang = float(rng.uniform(0, math.pi))
    ribs = 0.5 + 0.5 * np.sign(np.sin((xx * math.cos(ang) + yy * math.sin(ang)) / period * 2 * math.pi))
    gold = np.array([0.45, 0.36, 0.18], np.float32) if rng.uniform() < 0.5 else np.array([0.12, 0.13, 0.18], np.float32)
    colour = gold[None, None, :] * (0.6 + 0.4 * ribs)[..., None]
    blur = max(3, int(min(h, w) * 0.02) | 1)
    cov = cv2.GaussianBlur(cov, (blur, blur), 0)
    colour = cv2.GaussianBlur(colour, (blur, blur), 0)
    return cov, colour


def apply_appearance(view: View, camera: Camera, app: Appearance, sun_azimuth_deg: float = 135.0) -> np.ndarray:
    """The photo as the camera records it, float32 (H, W, 3) in [0, 1] (see the module doc)."""
    rng = np.random.default_rng(app.seed)
    h, w = view.valid.shape
    img = view.rgb.astype(np.float32) / F(255)
    hit = view.hits.hit
    # ground outside the imagery (far beyond the region, near the limb): overcast
    ground_missing = hit & ~view.valid
    # clouds 2-3 km up cast shadows 2-5 km away from the sun
    sun = math.radians(sun_azimuth_deg)
    shift = float(rng.uniform(2e3, 5e3))
    alpha, shadow, bright = cloud_layers(view, app, (shift * math.sin(sun), shift * math.cos(sun)))
    img *= (F(1) - F(0.55) * shadow * (F(1) - alpha))[..., None]
    bright = np.where(ground_missing, F(0.85), bright)
    cloud_col = bright[..., None] * np.array([1.0, 1.0, 1.02], np.float32)
    alpha = np.maximum(alpha, ground_missing.astype(np.float32))
    img = img * (F(1) - alpha[..., None]) + cloud_col * alpha[..., None]
    # haze: transmittance exp(-tau * airmass), airmass 1 / cos(view zenith)
    airmass = np.where(hit, 1.0 / np.clip(view.hits.cos_vza, 0.05, 1.0), 20.0).astype(np.float32)
    trans = np.exp(-F(app.haze_tau) * airmass)[..., None]
    img = img * trans + np.array(HAZE, np.float32) * F(0.8) * (F(1) - trans)
    # space and the limb's glow where rays miss the Earth
    if not hit.all():
        glow = limb_glow(camera, hit)
        sky = np.array(SPACE, np.float32) + glow[..., None] * np.array(LIMB_GLOW, np.float32)
        img = np.where(hit[..., None], img, sky)
    if app.night:
        sat = img.max(axis=2) - img.min(axis=2)
        town = _smooth(0.06, 0.02, sat) * _smooth(0.40, 0.55, view.rgb.mean(axis=2) / F(255)) * hit
        lights = town * (rng.uniform(size=(h, w)) < 0.35)
        lights = cv2.GaussianBlur(lights.astype(np.float32), (0, 0), 1.2) * F(3)
        img = img * F(0.025) + np.clip(lights, 0, 1)[..., None] * np.array([1.0, 0.72, 0.35], np.float32)
    # camera: white balance, exposure, tone curve, vignetting
    img = img * np.asarray(app.gains, np.float32) * F(app.exposure)
    img = np.clip(img, F(0), F(1)) ** F(app.gamma)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r2 = ((xx - w / 2) ** 2 + (yy - h / 2) ** 2) / F((w / 2) ** 2 + (h / 2) ** 2)
    img *= (F(1) - F(app.vignetting) * r2)[..., None]
    if app.structure:
        cov, colour = _structure_mask(h, w, rng)
        img = img * (F(1) - cov[..., None]) + colour * cov[..., None]
    noise = app.noise * (4.0 if app.night else 1.0)
    img += rng.standard_normal((h, w, 3)).astype(np.float32) * F(noise)
    return np.clip(img, F(0), F(1))


def encode_jpeg(img: np.ndarray, quality: int) -> bytes:
    """float RGB (H, W, 3) in [0, 1] -> JPEG bytes (baseline, 4:2:0, deterministic)."""
    u8 = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", u8[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("OpenCV could not encode the JPEG")
    return buf.tobytes()


__all__ = ["Appearance", "apply_appearance", "cloud_layers", "encode_jpeg", "limb_glow"]
