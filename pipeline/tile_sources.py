"""Open any tile source from a path: rasters, an XYZ folder, or a procedural world (``world.toml``).

Above both :mod:`pipeline.imagery` (real imagery) and :mod:`pipeline.world` (the procedural world, a tile
source built on imagery's base class), so neither reaches up into the other.
"""

from __future__ import annotations

import glob
import os

from .imagery import RASTER_EXTENSIONS, RasterTileSource, TileSource, XYZTileSource
from .imagery.xyz import looks_like_xyz
from .world.spec import open_world, world_spec_path


def _not_found(spec) -> FileNotFoundError:
    return FileNotFoundError(
        f"no rasters or XYZ tiles found at {spec}; pass a GeoTIFF/COG/VRT file, a folder of them, "
        "a glob, or an XYZ folder {z}/{x}/{y}.png"
    )


def _is_raster_name(name: str) -> bool:
    return name.lower().endswith(RASTER_EXTENSIONS)


def open_tile_source(spec, **kwargs) -> TileSource:
    """A tile source from ``spec``.

    ``spec`` is a :class:`TileSource` (returned as is), a raster file, a GDAL dataset name
    (``/vsi...``, ``https://...``), a folder of rasters (``*.tif, *.tiff, *.vrt, *.jp2,
    *.img``, sorted by name, not recursive), a glob pattern (matches sorted), or an XYZ folder
    (a numeric zoom folder holding numeric x folders), or a procedural world's spec (a
    ``.toml`` file or a folder holding ``world.toml``). ``kwargs`` go to the source's
    constructor (``cache_bytes``, ``year``, ...).
    """
    if isinstance(spec, TileSource):
        return spec
    spec_s = os.fspath(spec)
    if world_spec_path(spec_s) is not None:
        return open_world(spec_s, **kwargs)
    if os.path.isfile(spec_s):
        return RasterTileSource([spec_s], **kwargs)
    if os.path.isdir(spec_s):
        if looks_like_xyz(spec_s):
            return XYZTileSource(spec_s, **kwargs)
        with os.scandir(spec_s) as it:
            files = sorted(e.path for e in it if e.is_file() and _is_raster_name(e.name))
        if files:
            return RasterTileSource(files, **kwargs)
        raise _not_found(spec_s)
    if spec_s.startswith("/vsi") or "://" in spec_s:
        return RasterTileSource([spec_s], **kwargs)
    if glob.has_magic(spec_s):
        files = sorted(p for p in glob.glob(spec_s) if os.path.isfile(p))
        rasters = [p for p in files if _is_raster_name(p)]
        if rasters or files:  # sidecars (.aux.xml, .ovr) skipped unless nothing else matched
            return RasterTileSource(rasters or files, **kwargs)
        dirs = sorted(p for p in glob.glob(spec_s) if os.path.isdir(p) and looks_like_xyz(p))
        if len(dirs) == 1:
            return XYZTileSource(dirs[0], **kwargs)
    raise _not_found(spec_s)


__all__ = ["open_tile_source"]
