"""Wrong-label searches: each photo searched under every other photo's catalogue row.

A photo attached to the wrong row of a catalogue is searched around another place's label, with another
lens, nadir and tilt: the hardest negatives there are, real texture against real imagery. Where two rows'
imagery is the same picture placed at two places (the real sample's ISS056-E-153176 holds
ISS062-E-81917's imagery), the photo under the other row is no negative: :func:`moved_corners` gives its
true footprint in the other placement.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

CATALOGUE = (
    "center_lat",
    "center_lon",
    "nadir_lat",
    "nadir_lon",
    "tilt_deg",
    "focal_length_mm",
    "cloud_pct",
    "acquired_at",
)
"""A queries row's columns that describe the row (the catalogue), not the photo's pixels."""


def swapped_queries(queries: pd.DataFrame, separator: str = "@") -> pd.DataFrame:
    """Every photo under every other row: ``len(queries) * (len(queries) - 1)`` rows with the photo's
    ``image_path`` and the other row's catalogue columns; ``photo_id`` is ``PHOTO@ROW``, and the columns
    ``photo`` and ``row`` name both."""
    rows = []
    for _, p in queries.iterrows():
        for _, r in queries.iterrows():
            if p["photo_id"] == r["photo_id"]:
                continue
            new = {k: v for k, v in p.items() if k not in CATALOGUE}
            new.update({k: r[k] for k in CATALOGUE if k in r.index})
            new.update(photo_id=f"{p['photo_id']}{separator}{r['photo_id']}", photo=p["photo_id"], row=r["photo_id"])
            rows.append(new)
    return pd.DataFrame(rows)


def moved_corners(corners_lonlat: np.ndarray, source_raster: str, target_raster: str) -> np.ndarray:
    """Ground corners (4, 2) lon/lat on ``source_raster`` -> the same pixels of ``target_raster`` (the same picture
    placed elsewhere, in any CRS): through the first raster's pixel grid into the second's georeference."""
    import rasterio
    from pyproj import Transformer

    c = np.asarray(corners_lonlat, np.float64).reshape(4, 2)
    with rasterio.open(source_raster) as a, rasterio.open(target_raster) as b:
        if (a.width, a.height) != (b.width, b.height):
            raise ValueError(
                f"{source_raster} ({a.width}x{a.height}) and {target_raster} ({b.width}x{b.height}) are "
                "not the same picture"
            )
        x, y = Transformer.from_crs("EPSG:4326", a.crs, always_xy=True).transform(c[:, 0], c[:, 1])
        cols, rows = (~a.transform) * (np.asarray(x), np.asarray(y))
        x2, y2 = b.transform * (np.asarray(cols), np.asarray(rows))
        lon, lat = Transformer.from_crs(b.crs, "EPSG:4326", always_xy=True).transform(x2, y2)
    return np.column_stack([lon, lat])
