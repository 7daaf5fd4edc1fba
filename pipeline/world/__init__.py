"""Procedural worlds: deterministic synthetic satellite imagery served as tile sources."""

from .procedural import YEARS, ProceduralWorld
from .spec import load_world, open_world, save_world, world_spec_path

__all__ = ["ProceduralWorld", "YEARS", "load_world", "open_world", "save_world", "world_spec_path"]
