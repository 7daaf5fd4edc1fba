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


def augment(x: torch.Tensor, quarter_turns: int, rng: np.random.Generator, colour: bool = True) -> torch.Tensor:
    """``x`` (3, S, S) in [0, 1] turned clockwise by ``quarter_turns`` x 90 degrees, then (``colour``) its brightness,
    contrast and saturation each scaled by a factor drawn in [0.7, 1.3]."""
    x = torch.rot90(x, k=-int(quarter_turns) % 4, dims=(1, 2))
    if colour:
        b, c, s = rng.uniform(0.7, 1.3, size=3)
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
    augment: bool = True
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
        s = self.side
        photos, windows, quads = [], [], []
        for (path, tile_id, turn), slot in zip(plan.pairs, plan.pair_slots):
            rng = self._rng(plan.step, slot, 0)
            k = int(rng.integers(4)) if self.augment else 0  # the pair turned together...
            photos.append(augment(self.photo(path).float(), k, rng, self.augment))
            windows.append(augment(self.window(tile_id).float(), k + turn // 90, rng, self.augment))  # ...aligned
        for tile_id, slot in zip(plan.quads, plan.quad_slots):
            rng = self._rng(plan.step, slot, 1)
            k = int(rng.integers(4)) if self.augment else 0  # one turn for the quadruplet, colours per view
            quads.append(
                torch.stack([augment(self.window(tile_id, v).float(), k, rng, self.augment) for v in range(4)])
            )
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
    "StepPlan",
    "TrainImages",
    "augment",
    "default_render_px",
    "photo_rotation",
    "resize_square",
    "split_slots",
    "window_sources",
]
