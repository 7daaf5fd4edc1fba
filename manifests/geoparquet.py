"""GeoParquet 1.1 encoding: WKB geometry in OGC:CRS84, a bbox covering column, `geo` metadata.

We write the metadata ourselves (a few keys, below) rather than through geopandas because
the database manifest is streamed in batches through ``pyarrow.parquet.ParquetWriter`` and
geopandas writes whole frames only; tests read every file back with geopandas.
"""

from __future__ import annotations

import json
from functools import lru_cache

import numpy as np
import pyarrow as pa
import shapely

from .schemas import BBOX_TYPE

GEOPARQUET_VERSION = "1.1.0"


@lru_cache(maxsize=1)
def crs84_projjson() -> dict:
    """PROJJSON of OGC:CRS84 (WGS84 with (lon, lat) axis order)."""
    from pyproj import CRS

    return CRS.from_string("OGC:CRS84").to_json_dict()


def encode_geometries(geoms) -> tuple[pa.Array, pa.Array]:
    """Shapely geometries (N,) (None allowed) -> (WKB binary array, bbox struct array).

    Exterior rings are oriented counter-clockwise (interiors clockwise), as GeoParquet's
    ``orientation: counterclockwise`` promises.
    """
    geoms = np.asarray(geoms, dtype=object)
    missing = shapely.is_missing(geoms)
    oriented = geoms.copy()
    if (~missing).any():
        oriented[~missing] = shapely.orient_polygons(geoms[~missing], exterior_cw=False)
    wkb = shapely.to_wkb(oriented, output_dimension=2, byte_order=1, flavor="iso")
    bounds = shapely.bounds(oriented)  # (N, 4), NaN for missing
    mask = pa.array(missing)
    bbox = pa.StructArray.from_arrays(
        [pa.array(bounds[:, i], type=pa.float64()) for i in range(4)],
        fields=list(BBOX_TYPE),
        mask=mask,
    )
    return pa.array(list(wkb), type=pa.binary()), bbox


def decode_geometries(wkb) -> np.ndarray:
    """WKB values (N,) (None allowed) -> shapely geometries (N,) of dtype object."""
    return shapely.from_wkb(np.asarray(wkb, dtype=object))


def geo_metadata(geometry_types: list[str], column: str = "geometry") -> bytes:
    """The GeoParquet 1.1 ``geo`` file metadata (JSON bytes) for one WKB column with covering.

    It goes into the Arrow schema before the first batch is written, so the optional
    column-level ``bbox`` is left out (readers use the per-row ``bbox`` covering column).
    """
    col = {
        "encoding": "WKB",
        "geometry_types": list(geometry_types),
        "crs": crs84_projjson(),
        "edges": "planar",
        "orientation": "counterclockwise",
        "covering": {
            "bbox": {
                "xmin": ["bbox", "xmin"],
                "ymin": ["bbox", "ymin"],
                "xmax": ["bbox", "xmax"],
                "ymax": ["bbox", "ymax"],
            }
        },
    }
    meta = {"version": GEOPARQUET_VERSION, "primary_column": column, "columns": {column: col}}
    return json.dumps(meta).encode()
