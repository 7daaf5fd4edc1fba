"""Reading, validating and atomically writing manifests.

Writes go to a temporary file in the destination folder that is renamed over the target only
when complete, so a crash never leaves a half-written manifest behind.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import ManifestError, Problem
from .files import atomic_output
from .geoparquet import decode_geometries, encode_geometries, geo_metadata
from .schemas import CORNER_COLUMNS, KINDS, STATUSES, ManifestKind

KIND_METADATA_KEY = b"astroloc:manifest"


def to_table(df: pd.DataFrame, kind: ManifestKind) -> pa.Table:
    """A DataFrame -> an Arrow table in ``kind``'s schema (column order, types, bbox).

    Missing optional columns become nulls; the geometry column may hold shapely geometries
    or WKB bytes; the bbox covering column is computed from it.
    """
    unknown = [c for c in df.columns if c not in kind.schema.names]
    if unknown:
        raise ValueError(f"columns {unknown} are not part of the {kind.name} manifest: {kind.schema.names}")
    n = len(df)
    arrays = []
    for f in kind.schema:
        if f.name == "bbox" and kind.geometry:
            continue
        if f.name == kind.geometry:
            geoms = df[f.name].to_numpy(dtype=object) if f.name in df else np.full(n, None, dtype=object)
            if n and isinstance(next((g for g in geoms if g is not None), None), (bytes, bytearray)):
                geoms = decode_geometries(geoms)
            wkb, bbox = encode_geometries(geoms)
            arrays.append((f, wkb))
            bbox_field = kind.schema.field("bbox")
            arrays.append((bbox_field, bbox))
            continue
        if f.name in df:
            values = df[f.name]
            if pa.types.is_fixed_size_list(f.type):
                arr = pa.array([None if v is None else [float(x) for x in v] for v in values], type=f.type)
            else:
                arr = pa.array(values, type=f.type, from_pandas=True)
        else:
            arr = pa.nulls(n, type=f.type)
        arrays.append((f, arr))
    by_name = {f.name: a for f, a in arrays}
    return pa.Table.from_arrays([by_name[f.name] for f in kind.schema], schema=kind.schema)


def _file_metadata(kind: ManifestKind) -> dict[bytes, bytes]:
    meta = {KIND_METADATA_KEY: kind.name.encode()}
    if kind.geometry:
        meta[b"geo"] = geo_metadata(list(kind.geometry_types), kind.geometry)
    return meta


def write_manifest(
    df: pd.DataFrame, path: str | os.PathLike, kind: ManifestKind, before_replace: Callable[[Path], None] | None = None
) -> Path:
    """Write a whole manifest atomically (GeoParquet 1.1 when ``kind`` has a geometry); ``before_replace``: see
    :class:`ManifestWriter`."""
    with ManifestWriter(path, kind, before_replace=before_replace) as writer:
        writer.write(df)
    return Path(path)


class ManifestWriter:
    """Stream a manifest to Parquet batch by batch; the file appears only on :meth:`close`.

    Use as a context manager: leaving it with an exception discards everything written.
    ``before_replace(tmp)`` is called with the finished file just before it is renamed onto
    ``path`` (a stage saves the config that will describe it then); if it raises, nothing is
    replaced.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        kind: ManifestKind,
        row_group_size: int = 64_000,
        before_replace: Callable[[Path], None] | None = None,
    ):
        self.path = Path(path)
        self.kind = kind
        self.rows = 0
        self._row_group_size = row_group_size
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._before_replace = before_replace
        self._ctx = atomic_output(self.path)
        self._tmp = self._ctx.__enter__()
        self._schema = kind.schema.with_metadata(_file_metadata(kind))
        self._writer = pq.ParquetWriter(self._tmp, self._schema, compression="zstd")

    def write(self, df: pd.DataFrame | pa.Table) -> None:
        """Add rows; they are buffered into row groups of ``row_group_size``."""
        table = df if isinstance(df, pa.Table) else to_table(df, self.kind)
        if not table.num_rows:
            return
        self._pending.append(table.cast(self._schema))
        self._pending_rows += table.num_rows
        self.rows += table.num_rows
        if self._pending_rows >= self._row_group_size:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._writer.write_table(pa.concat_tables(self._pending), row_group_size=self._row_group_size)
        self._pending, self._pending_rows = [], 0

    def close(self) -> Path:
        self._flush()
        self._writer.close()
        if self._before_replace is not None:
            try:
                self._before_replace(self._tmp)
            except BaseException as e:
                self._ctx.__exit__(type(e), e, e.__traceback__)  # the temporary file goes, ``path`` stays
                raise
        self._ctx.__exit__(None, None, None)
        return self.path

    def abort(self, exc: BaseException | None = None) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()
        err = exc or RuntimeError("aborted")
        with contextlib.suppress(BaseException):
            self._ctx.__exit__(type(err), err, None)

    def __enter__(self) -> ManifestWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort(exc)


def detect_kind(path: str | os.PathLike) -> ManifestKind | None:
    """The manifest kind recorded in a Parquet file's metadata, else guessed from its columns."""
    schema = pq.read_schema(path)
    name = (schema.metadata or {}).get(KIND_METADATA_KEY)
    if name and name.decode() in KINDS:
        return KINDS[name.decode()]
    names = set(schema.names)
    if {"photo_id", "status"} <= names:
        return KINDS["footprints"]
    for kind in (KINDS["database"], KINDS["pairs"], KINDS["queries"]):
        if set(kind.required) <= names:
            return kind
    return None


def read_manifest(
    path: str | os.PathLike, kind: ManifestKind | str, columns: list[str] | None = None, geometry: bool = True
) -> pd.DataFrame:
    """Read and validate a manifest; raises :class:`ManifestError` naming file, row and column.

    The geometry column is decoded to shapely geometries unless ``geometry`` is False.
    """
    kind = KINDS[kind] if isinstance(kind, str) else kind
    path = Path(path)
    if not path.exists():
        raise ManifestError(path, f"no such file; create it with {kind.produced_by} or pass the right path")
    try:
        schema = pq.read_schema(path)
    except Exception as e:  # pyarrow raises several types for non-Parquet input
        raise ManifestError(path, f"not a readable Parquet file ({e}); regenerate it with {kind.produced_by}") from None
    missing = [c for c in kind.required if c not in schema.names]
    if missing:
        raise ManifestError(
            path,
            [
                Problem(
                    f"required column is missing from this {kind.name} manifest; regenerate it with {kind.produced_by}",
                    column=c,
                )
                for c in missing
            ],
        )
    wanted = [c for c in (columns or kind.schema.names) if c in schema.names]
    df = pq.read_table(path, columns=wanted).to_pandas()
    validate(df, kind, path)
    if geometry and kind.geometry in df:
        df[kind.geometry] = decode_geometries(df[kind.geometry].to_numpy(dtype=object))
    return df


def _bad_rows(df: pd.DataFrame, mask: np.ndarray, column: str, message: str, id_col: str | None) -> list[Problem]:
    rows = np.flatnonzero(mask)
    ids = df[id_col].to_numpy() if id_col in df else None
    return [
        Problem(message, row=int(r), column=column, photo_id=str(ids[r]) if ids is not None else None) for r in rows
    ]


def validate(df: pd.DataFrame, kind: ManifestKind, path: str | os.PathLike | None = None) -> None:
    """Check nulls and value ranges of a manifest's columns; raise one ManifestError for all."""
    problems: list[Problem] = []
    id_col = "photo_id" if "photo_id" in df else ("tile_id" if "tile_id" in df else None)
    for c in kind.required:
        if c in df:
            problems += _bad_rows(df, df[c].isna().to_numpy(), c, "value is missing; every row needs one", id_col)
    if "status" in df:
        bad = ~df["status"].isin(STATUSES).to_numpy()
        problems += _bad_rows(df, bad, "status", f"status must be one of {', '.join(STATUSES)}", id_col)
    for c in CORNER_COLUMNS:
        if c in df:
            v = df[c].to_numpy(dtype=np.float64, na_value=np.nan)
            limit = 90.0 if c.endswith("lat") else 180.0
            bad = np.abs(v) > limit
            problems += _bad_rows(df, bad, c, f"value outside [-{limit:g}, {limit:g}] degrees", id_col)
    if "iou" in df:
        v = df["iou"].to_numpy(dtype=np.float64, na_value=np.nan)
        problems += _bad_rows(df, (v < 0) | (v > 1 + 1e-9), "iou", "IoU must lie in [0, 1]", id_col)
    if kind.name == "footprints" and "status" in df and "tl_lat" in df:
        # a localized row stands for a footprint (pairs and training read its corners); the others have none
        has = df["tl_lat"].notna().to_numpy()
        loc = df["status"].eq("localized").fillna(False).to_numpy(dtype=bool)
        other = df["status"].isin(("not_localized", "error")).to_numpy()
        problems += _bad_rows(
            df,
            loc & ~has,
            "tl_lat",
            "a localized row without its footprint's corners; rerun "
            "`run footprints` for this photo, or mark the row not_localized",
            id_col,
        )
        problems += _bad_rows(
            df,
            other & has,
            "tl_lat",
            "corners on a row that is not localized; clear them, or mark the row localized if the footprint is right",
            id_col,
        )
    if kind.name in ("footprints", "queries", "truth") and "photo_id" in df:
        dup = df["photo_id"].duplicated(keep="first").to_numpy()
        problems += _bad_rows(df, dup, "photo_id", "duplicate photo_id: each photo must appear once", id_col)
    if problems:
        raise ManifestError(path, problems)
