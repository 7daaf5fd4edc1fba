"""``python -m pipeline inspect``: what a manifest holds, on one screen."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .errors import ManifestError
from .io import atomic_output, detect_kind


def _histogram(values: np.ndarray, bins: int = 10, width: int = 40) -> list[str]:
    values = values[np.isfinite(values)]
    if not len(values):
        return []
    counts, edges = np.histogram(values, bins=bins)
    top = counts.max() or 1
    return [
        f"    [{edges[i]:>9.4g}, {edges[i + 1]:>9.4g})  {counts[i]:>8d}  {'#' * int(round(width * counts[i] / top))}"
        for i in range(len(counts))
    ]


def _column_summary(name: str, col: pa.ChunkedArray) -> str:
    n = len(col)
    nulls = col.null_count
    t = col.type
    head = f"  {name:<18} {str(t):<28} nulls {nulls:>8d}"
    if n == nulls:
        return head
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        v = col.to_numpy(zero_copy_only=False).astype(np.float64)
        v = v[np.isfinite(v)]
        if not len(v):
            return head
        q = np.percentile(v, [0, 50, 100])
        return head + f"  min {q[0]:.6g}  median {q[1]:.6g}  max {q[2]:.6g}"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        vc = pc.value_counts(col.drop_null()).to_pylist()
        vc.sort(key=lambda d: -d["counts"])
        top = ", ".join(f"{d['values']} ({d['counts']})" for d in vc[:3])
        return head + f"  distinct {len(vc)}  top: {top}"
    if pa.types.is_timestamp(t):
        return head + f"  from {pc.min(col)}  to {pc.max(col)}"
    return head


def inspect_manifest(path: str | os.PathLike, geojson: str | os.PathLike | None = None) -> str:
    """A text summary of a Parquet manifest; optionally export its geometries to GeoJSON."""
    path = Path(path)
    if path.is_dir():
        raise ManifestError(path, "is a folder; pass the path of a Parquet manifest (a .parquet file)")
    if not path.is_file():
        raise ManifestError(path, "no such file; pass the path of a Parquet manifest")
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:
        raise ManifestError(path, f"not a readable Parquet file ({e})") from None
    kind = detect_kind(path)
    table = pf.read()
    meta = pf.schema_arrow.metadata or {}
    lines = [
        f"{path}",
        f"  kind: {kind.name if kind else 'unknown'}   rows: {table.num_rows}   "
        f"row groups: {pf.num_row_groups}   size: {path.stat().st_size / 2**20:.2f} MiB",
    ]
    if b"geo" in meta:
        geo = json.loads(meta[b"geo"])
        col = geo["columns"][geo["primary_column"]]
        crs = col.get("crs", {})
        crs_name = (
            crs.get("id", {}).get("authority", "OGC") + ":" + str(crs.get("id", {}).get("code", "CRS84"))
            if crs
            else "OGC:CRS84 (default)"
        )
        lines.append(
            f"  GeoParquet {geo.get('version')}: column {geo['primary_column']!r}, {col.get('encoding')}, "
            f"CRS {crs_name}, types {col.get('geometry_types')}"
            + (", bbox covering column" if "covering" in col else "")
        )
    lines.append("  columns:")
    for name in table.column_names:
        if name in ("geometry", "bbox", "homography"):
            lines.append(
                f"  {name:<18} {str(table.schema.field(name).type)[:28]:<28} nulls {table[name].null_count:>8d}"
            )
            continue
        lines.append(_column_summary(name, table[name]))
    if kind is not None and kind.name == "footprints":
        counts = pc.value_counts(table["status"]).to_pylist()
        lines.append("  status:")
        for d in sorted(counts, key=lambda d: -d["counts"]):
            lines.append(
                f"    {d['values']:<14} {d['counts']:>8d}  ({100.0 * d['counts'] / max(table.num_rows, 1):.1f} %)"
            )
        if "reason" in table.column_names and table["reason"].null_count < table.num_rows:
            lines.append("  reasons (top 5):")
            vc = sorted(pc.value_counts(table["reason"].drop_null()).to_pylist(), key=lambda d: -d["counts"])
            lines += [f"    {d['counts']:>8d}  {d['values'][:100]}" for d in vc[:5]]
        if "inliers" in table.column_names and table["inliers"].null_count < table.num_rows:
            lines.append("  inliers histogram:")
            lines += _histogram(table["inliers"].to_numpy(zero_copy_only=False).astype(np.float64))
    if kind is not None and kind.name == "database":
        lines.append(
            "  windows per zoom: "
            + ", ".join(
                f"z{d['values']}: {d['counts']}"
                for d in sorted(pc.value_counts(table["zoom"]).to_pylist(), key=lambda d: d["values"])
            )
        )
    if kind is not None and kind.name == "pairs":
        lines.append("  IoU histogram:")
        lines += _histogram(table["iou"].to_numpy(zero_copy_only=False), bins=8)
    if geojson is not None:
        n = export_geojson(path, geojson)
        lines.append(f"  wrote {n} features to {geojson}")
    return "\n".join(lines)


def export_geojson(path: str | os.PathLike, out: str | os.PathLike) -> int:
    """Write the manifest's rows that have a geometry to a GeoJSON file (atomically).

    GeoParquet manifests (footprints, database, truth) export their polygons, also when a tool
    that does not know GeoParquet (``DataFrame.to_parquet``) dropped the metadata but kept the
    WKB ``geometry`` column (our manifests' geometries are always OGC:CRS84); a queries
    manifest, which has none, exports each photo's weak label (center_lon, center_lat) as a
    point. Anything else (pairs) is refused with the manifests that can be exported."""
    import geopandas as gpd
    import pandas as pd

    schema = pq.read_schema(path)
    columns = schema.names
    if b"geo" in (schema.metadata or {}):
        gdf = gpd.read_parquet(path)
    elif "geometry" in columns and pa.types.is_binary(schema.field("geometry").type):
        df = pd.read_parquet(path)
        gdf = gpd.GeoDataFrame(df, geometry=gpd.GeoSeries.from_wkb(df.pop("geometry"), crs="OGC:CRS84"))
    elif {"center_lat", "center_lon"} <= set(columns):
        df = pd.read_parquet(path)
        gdf = gpd.GeoDataFrame(df, geometry=gpd.points_from_xy(df.center_lon, df.center_lat), crs="OGC:CRS84")
    else:
        raise ManifestError(
            path,
            "has no geometry to export; --geojson works on footprints, database, truth and "
            "queries manifests (pairs link photo_id to tile_id: export the footprints or "
            "the database instead)",
        )
    gdf = gdf[~gdf.geometry.isna()]
    gdf = gdf.drop(columns=[c for c in ("bbox",) if c in gdf.columns])
    for c in gdf.columns:
        if c != gdf.geometry.name and gdf[c].dtype == object:
            gdf[c] = gdf[c].map(
                lambda v: (
                    v if v is None or isinstance(v, str) else json.dumps(v.tolist() if hasattr(v, "tolist") else v)
                )
            )
    with atomic_output(out) as tmp:
        # RFC 7946: WGS84 lon/lat without a "crs" member (GDAL's older form keeps one), counter-clockwise
        # exterior rings; coordinates with 15 decimals as the manifests have them (RFC 7946 mode would cut them
        # to 7); the layer name is the one QGIS shows
        gdf.to_file(tmp, driver="GeoJSON", layer=Path(out).stem, RFC7946="YES", COORDINATE_PRECISION=15)
    return len(gdf)
