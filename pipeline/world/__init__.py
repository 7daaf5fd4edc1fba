"""Procedural worlds: deterministic synthetic satellite imagery served as tile sources."""

from .procedural import YEARS, ProceduralWorld

__all__ = ["ProceduralWorld", "YEARS"]
