"""A procedural world saved as a small TOML file, so that any stage can open it as a tile source.

    # tiles/world.toml
    [world]
    kind = "procedural"
    region = [2.0, 44.0, 8.0, 48.0]   # west, south, east, north (degrees)
    seed = 0
    year = 0
    cache = "cache"                   # optional: keep rendered tiles in tiles/cache/year0/{z}/{x}/{y}.png

:func:`pipeline.imagery.open_tile_source` opens such a file, or a folder holding one as
``world.toml``: a :class:`~pipeline.world.ProceduralWorld`, behind a
:class:`~pipeline.imagery.cache.CachedTileSource` when ``cache`` is set (database windows are
then rendered once and read back as PNG tiles by every later run and worker).
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

from manifests.files import atomic_output

from .procedural import YEARS, ProceduralWorld

SPEC_NAME = "world.toml"


def world_spec_path(path: str | os.PathLike) -> Path | None:
    """The world spec at ``path`` (a ``.toml`` file, or a folder holding ``world.toml``), or None."""
    p = Path(path)
    if p.is_file() and p.suffix.lower() == ".toml":
        return p
    if p.is_dir() and (p / SPEC_NAME).is_file():
        return p / SPEC_NAME
    return None


def save_world(world: ProceduralWorld, path: str | os.PathLike, cache: str | None = "cache") -> Path:
    """Write ``world``'s spec to ``path`` (atomically); ``cache``: tile cache folder, relative
    to the spec's folder (None: no cache)."""
    w, s, e, n = world.region_lonlat
    text = (
        "# A procedural world: open it with pipeline.imagery.open_tile_source(this file or its folder)\n"
        "[world]\n"
        'kind = "procedural"\n'
        f"region = [{w!r}, {s!r}, {e!r}, {n!r}]  # west, south, east, north (degrees)\n"
        f"seed = {world.seed}\n"
        f"year = {world.year}  # 0..{len(YEARS) - 1}: same geography, another season\n"
    )
    if cache:
        text += f"cache = {json.dumps(str(cache))}  # rendered tiles are kept in this folder, per year\n"
    with atomic_output(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def open_world(path: str | os.PathLike, year: int | None = None, **kwargs):
    """The tile source a spec describes: the world, behind its tile cache when it has one."""
    world = load_world(path, year, **kwargs)
    spec = world_spec_path(path)
    with open(spec, "rb") as f:
        cache = tomllib.load(f).get("world", {}).get("cache")
    if not cache:
        return world
    from ..imagery.cache import CachedTileSource

    return CachedTileSource(
        world,
        spec.parent / str(cache) / f"year{world.year}",
        **({"cache_bytes": kwargs["cache_bytes"]} if "cache_bytes" in kwargs else {}),
    )


def load_world(path: str | os.PathLike, year: int | None = None, **kwargs) -> ProceduralWorld:
    """The world described by the spec at ``path``; ``year`` overrides the file's."""
    spec = world_spec_path(path)
    if spec is None:
        raise FileNotFoundError(f"no world spec at {path}: expected a .toml file or a folder with {SPEC_NAME}")
    try:
        with open(spec, "rb") as f:
            conf = tomllib.load(f).get("world", {})
        if conf.get("kind", "procedural") != "procedural":
            raise ValueError(f"unknown world kind {conf.get('kind')!r} (only 'procedural')")
        region = tuple(float(v) for v in conf["region"])
        seed = int(conf.get("seed", 0))
        yr = int(conf.get("year", 0) if year is None else year)
    except (KeyError, TypeError, ValueError, tomllib.TOMLDecodeError) as e:
        raise ValueError(
            f"{spec}: not a valid world spec ({e}); it needs [world] region = [west, south, east, "
            "north], seed and year; regenerate it with `python -m pipeline run sample`"
        ) from None
    return ProceduralWorld(region, seed=seed, year=yr, **kwargs)
