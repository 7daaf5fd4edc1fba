"""The trainer's images: photos and windows at the model's side, their augmentation, and the per-step dataset.

Every image of a step is a pure function of (the step's plan, the seed): the plan (:class:`StepPlan`, made in the
training process) names the photos, windows and rotations; the pixels and their augmentation are made in the
DataLoader's workers with a generator seeded by (seed, step, slot), so a resumed run, any number of workers and
each process of a data-parallel run produce the same images for the same slot.

Windows are rendered from the tile source at ``render_px`` (twice the model's side by default) and resized with the
model's own resize (bilinear with antialiasing): within a few grey levels of the full-resolution window the
describe stage reads, at a fifth of the rendering time (bench/RESULTS.md). Photos are read whole and resized the
same way (squashed to a square, as the model reads them at evaluation).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..geometry.windows import Window

CORNERS = ("tl", "tr", "br", "bl")


def resize_square(rgb: np.ndarray, side: int) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> (3, side, side) float in [0, 1], resized as the model resizes (bilinear, antialiased)."""
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float().div_(255.0)
    if x.shape[-2:] != (side, side):
        x = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
    return x[0].clamp_(0.0, 1.0)


def photo_rotation(corners_lon: np.ndarray, corners_lat: np.ndarray) -> np.ndarray:
    """The clockwise turn (0, 90, 180 or 270 degrees) that brings a north-up window closest to each photo's
    orientation, from its footprint (corners (N, 4) degrees, tl tr br bl): the bearing of the photo's up direction
    (bottom edge's middle to top edge's middle, on the local tangent plane) rounded to a quarter turn. The evaluation
    finds each photo among the database's four rotations; a training pair shows them turned the same way."""
    lon, lat = np.asarray(corners_lon, np.float64), np.asarray(corners_lat, np.float64)
    top_lon, top_lat = (lon[:, 0] + lon[:, 1]) / 2, (lat[:, 0] + lat[:, 1]) / 2
    bot_lon, bot_lat = (lon[:, 3] + lon[:, 2]) / 2, (lat[:, 3] + lat[:, 2]) / 2
    dlon = (top_lon - bot_lon + 180.0) % 360.0 - 180.0
    east = dlon * np.cos(np.radians((top_lat + bot_lat) / 2))
    north = top_lat - bot_lat
    bearing = np.degrees(np.arctan2(east, north))  # of the photo's up, clockwise from north
    # the ground appears turned by -bearing in the photo: the window is turned clockwise by that much
    return (np.round(((-bearing) % 360.0) / 90.0).astype(np.int64) % 4) * 90


@dataclass(frozen=True)
class Augmentation:
    """How much each training image is changed (on top of the pair's or quadruplet's quarter turn).

    ``rotate``: a turn drawn in [-rotate, rotate] degrees (the residual of a photo's orientation after the quarter
    turn closest to it lies within 45 degrees); ``perspective``: each corner of the view moved inward by up to
    ``perspective`` x half the side (an oblique look); ``zoom``: the view's side drawn in [1 - zoom, 1] of the
    image's (a tighter or looser framing); ``colour``: brightness, contrast and saturation each scaled by a factor
    drawn in [1 - colour, 1 + colour]. Outside the image the view is mirrored. All zero: the image unchanged."""

    rotate: float = 0.0
    perspective: float = 0.0
    zoom: float = 0.0
    colour: float = 0.3

    @property
    def geometric(self) -> bool:
        return bool(self.rotate or self.perspective or self.zoom)


def view_corners(side: int, angle_deg: float, inward: np.ndarray, scale: float) -> np.ndarray:
    """The corners (4, 2) of the view in the source image's pixels (x right, y down; tl tr br bl), for a square of
    ``side`` pixels: the centred square of ``scale`` x side, its corners moved inward by ``inward`` (4, 2) fractions
    of the half side, turned clockwise on screen by ``angle_deg`` around the centre."""
    half = side / 2.0
    unit = np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    pts = unit * (1.0 - np.asarray(inward, np.float64)) * scale * half
    a = np.radians(angle_deg)
    # a view turned clockwise shows the ground turned anticlockwise: its corners are the source's turned back
    rot = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
    return pts @ rot.T + half


def warp_view(x: torch.Tensor, corners: np.ndarray) -> torch.Tensor:
    """(3, S, S) -> (3, S, S): the quadrilateral ``corners`` (4, 2) pixels of ``x`` (tl tr br bl) mapped onto the
    whole square by a homography, bilinear, mirrored outside the image."""
    import cv2

    side = x.shape[-1]
    out = np.array([[0, 0], [side, 0], [side, side], [0, side]], np.float32)
    # corners are on the pixels' edges (0..S); OpenCV's coordinates are the pixels' centres: half a pixel less
    h = cv2.getPerspectiveTransform(np.asarray(corners, np.float32) - 0.5, out - 0.5)
    img = np.ascontiguousarray(x.permute(1, 2, 0).numpy(), dtype=np.float32)
    warped = cv2.warpPerspective(img, h, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    return torch.from_numpy(warped).permute(2, 0, 1).contiguous()


def augment(
    x: torch.Tensor, quarter_turns: int, rng: np.random.Generator, how: Augmentation | None = Augmentation()
) -> torch.Tensor:
    """``x`` (3, S, S) in [0, 1] turned clockwise by ``quarter_turns`` x 90 degrees, then changed as ``how`` says
    (None: the turn only): a view drawn by its rotation, perspective and zoom, then its colours."""
    x = torch.rot90(x, k=-int(quarter_turns) % 4, dims=(1, 2))
    if how is None:
        return x.clamp(0.0, 1.0)
    if how.geometric:
        angle = rng.uniform(-how.rotate, how.rotate)
        inward = rng.uniform(0.0, how.perspective, size=(4, 2))
        scale = rng.uniform(1.0 - how.zoom, 1.0)
        x = warp_view(x, view_corners(x.shape[-1], angle, inward, scale))
    if how.colour:
        b, c, s = rng.uniform(1.0 - how.colour, 1.0 + how.colour, size=3)
        x = x * float(b)
        grey = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]
        x = (x - grey.mean()) * float(c) + grey.mean()
        grey = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]
        x = (x - grey) * float(s) + grey
    return x.clamp(0.0, 1.0)


def window_sources(tiles: str) -> list:
    """The tile sources of a window's views: a procedural world's four years (same ground, another season), or the
    one source of real imagery."""
    from ..tile_sources import open_tile_source
    from ..world.procedural import YEARS
    from ..world.spec import world_spec_path

    if world_spec_path(tiles) is not None:
        return [open_tile_source(tiles, year=y) for y in range(len(YEARS))]
    return [open_tile_source(tiles)]


@dataclass(frozen=True)
class StepPlan:
    """What one process reads for one step: ``pairs`` (photo path, window tile_id, the window's turn in degrees)
    and ``quads`` (tile_ids: four views each), with ``slots``, each image's place in the whole (all processes')
    batch, which seeds its augmentation."""

    step: int
    pairs: tuple[tuple[str, str, int], ...] = ()
    pair_slots: tuple[int, ...] = ()
    quads: tuple[str, ...] = ()
    quad_slots: tuple[int, ...] = ()


class _Cache:
    """A least-recently-used map from keys to tensors, bounded in bytes (one per worker process)."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.bytes, self.items = int(max_bytes), 0, OrderedDict()

    def get(self, key, make):
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        value = make()
        size = value.element_size() * value.nelement()
        if size <= self.max_bytes:
            self.items[key] = value
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, old = self.items.popitem(last=False)
                self.bytes -= old.element_size() * old.nelement()
        return value


@dataclass
class TrainImages(torch.utils.data.Dataset):
    """``dataset[plan]`` -> {"photos": (b, 3, S, S), "windows": (b, 3, S, S), "quads": (h, 4, 3, S, S)} float32 in
    [0, 1] for a :class:`StepPlan`. Rendered images are kept per worker (``cache_mb``), at the model's side, before
    augmentation."""

    tiles: str
    size_tiles: int
    side: int
    render_px: int
    seed: int = 0
    augmentation: Augmentation | None = Augmentation()
    """None: no augmentation at all (not even the random quarter turn)."""
    cache_mb: int = 1024
    cache_dir: str | None = None
    """A folder where rendered windows are kept between steps, workers and runs (uint8 ``.npy`` at the model's
    side, under a name made of the tile source, ``render_px`` and the side): None keeps them in memory only."""
    _sources: list | None = field(default=None, init=False, repr=False)
    _cache: _Cache | None = field(default=None, init=False, repr=False)

    def __len__(self) -> int:  # indexed by plans, not by position
        return 0

    def _open(self) -> None:
        if self._sources is None:
            self._sources = window_sources(self.tiles)
            self._cache = _Cache(self.cache_mb * 2**20)

    def window(self, tile_id: str, view: int = 0) -> torch.Tensor:
        """The window ``tile_id`` in view (year) ``view`` modulo the source's views, (3, S, S) before augmentation."""
        self._open()
        source = self._sources[view % len(self._sources)]

        view %= len(self._sources)

        def make() -> torch.Tensor:
            path = self._disk_path(tile_id, view)
            if path is not None and path.is_file():
                try:
                    return torch.from_numpy(np.load(path)).permute(2, 0, 1).float().div_(255.0).half()
                except (OSError, ValueError):  # a damaged file: rendered again below
                    pass
            box = Window.from_tile_id(tile_id, self.size_tiles).bounds_mercator()
            x = resize_square(source.render(box, self.render_px, self.render_px).rgb, self.side)
            if path is None:
                return x.half()
            rgb = x.mul(255.0).round_().to(torch.uint8).permute(1, 2, 0).numpy()
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                np.save(f, rgb)
            os.replace(tmp, path)
            return torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255.0).half()

        return self._cache.get(("w", tile_id, view), make)

    def _disk_path(self, tile_id: str, view: int):
        if not self.cache_dir:
            return None
        import hashlib
        from pathlib import Path

        source = hashlib.sha1(str(self.tiles).encode()).hexdigest()[:10]
        return Path(self.cache_dir) / f"{source}-{self.render_px}to{self.side}" / f"view{view}" / f"{tile_id}.npy"

    def photo(self, path: str) -> torch.Tensor:
        from ..imagery.photos import read_photo

        self._open()
        return self._cache.get(("p", path), lambda: resize_square(read_photo(path), self.side).half())

    def _rng(self, step: int, slot: int, part: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, step, slot, part])

    def __getitem__(self, plan: StepPlan) -> dict[str, torch.Tensor]:
        s, how = self.side, self.augmentation
        photos, windows, quads = [], [], []
        for (path, tile_id, turn), slot in zip(plan.pairs, plan.pair_slots):
            rng = self._rng(plan.step, slot, 0)
            k = int(rng.integers(4)) if how is not None else 0  # the pair turned together...
            photos.append(augment(self.photo(path).float(), k, rng, how))
            windows.append(augment(self.window(tile_id).float(), k + turn // 90, rng, how))  # ...aligned
        for tile_id, slot in zip(plan.quads, plan.quad_slots):
            rng = self._rng(plan.step, slot, 1)
            k = int(rng.integers(4)) if how is not None else 0  # one turn for the quadruplet, the rest per view
            quads.append(torch.stack([augment(self.window(tile_id, v).float(), k, rng, how) for v in range(4)]))
        empty = torch.zeros(0, 3, s, s)
        return {
            "photos": torch.stack(photos) if photos else empty,
            "windows": torch.stack(windows) if windows else empty,
            "quads": torch.stack(quads) if quads else empty.reshape(0, 4, 3, s, s),
        }


def split_slots(n: int, rank: int, world: int) -> range:
    """The slots of ``n`` (divisible by ``world``) that process ``rank`` reads: a contiguous share, so gathering the
    processes' descriptors in rank order gives the one-process batch's order."""
    per = n // world
    return range(rank * per, (rank + 1) * per)


def default_render_px(side: int) -> int:
    return 2 * side


__all__ = [
    "Augmentation",
    "StepPlan",
    "TrainImages",
    "augment",
    "default_render_px",
    "photo_rotation",
    "resize_square",
    "split_slots",
    "view_corners",
    "warp_view",
    "window_sources",
]
