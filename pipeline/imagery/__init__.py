"""Satellite imagery as tile sources: render any EPSG:3857 box to RGB plus a validity mask.

- :class:`RasterTileSource`: GDAL-readable rasters (GeoTIFF, COG, VRT, ...) in any CRS.
- :class:`XYZTileSource`: a folder ``{z}/{x}/{y}.jpg|png|webp`` (GoogleMapsCompatible).
- :func:`write_xyz`: any tile source to an XYZ folder.

Opening any of them from a path (a procedural world's ``world.toml`` too) is
:func:`pipeline.tile_sources.open_tile_source`.
"""

from __future__ import annotations

from .base import BoundsMercator, Rendered, TileSource
from .cache import CachedTileSource
from .raster import RasterOpenError, RasterReadError, RasterTileSource, choose_overview_level
from .xyz import XYZTileSource, write_xyz

RASTER_EXTENSIONS = (".tif", ".tiff", ".vrt", ".jp2", ".img")
"""File endings picked up from a folder of rasters (case-insensitive)."""

__all__ = [
    "BoundsMercator",
    "Rendered",
    "TileSource",
    "CachedTileSource",
    "RasterTileSource",
    "XYZTileSource",
    "RasterOpenError",
    "RasterReadError",
    "choose_overview_level",
    "write_xyz",
    "RASTER_EXTENSIONS",
]
