"""Reading the queries (the photos and their weak labels): CSV, Parquet or an image folder.

A queries table has one row per photo: ``photo_id`` (unique), ``image_path`` (relative to the
file's folder, or absolute), ``center_lat``/``center_lon`` (the weak label, WGS84 degrees),
and optionally ``nadir_lat``, ``nadir_lon``, ``acquired_at``, ``focal_length_mm``,
``tilt_deg``, ``cloud_pct``. A folder of images named in the EarthLoc/EarthMatch convention
(``@center_lat@center_lon@nadir_lat@nadir_lon@tilt@focal@cloud@PHOTO_ID@.jpg``, or the
localized form ``@tl_lat@tl_lon@...@bl_lon@PHOTO_ID@date@lat@lon@...@.jpg``) is read too.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import ManifestError, Problem
from .files import printable
from .schemas import QUERIES

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp")
PHOTO_ID = re.compile(r"^[A-Z]{2,6}\d{0,4}[A-Z]?-[A-Z]{1,2}-\d+$")
"""NASA Crew Earth Observations photo identifiers: mission-roll-frame, e.g. ISS064-E-513."""

_NUMERIC = ("center_lat", "center_lon", "nadir_lat", "nadir_lon", "focal_length_mm", "tilt_deg", "cloud_pct")
_RANGES = {
    "center_lat": (-90.0, 90.0),
    "center_lon": (-180.0, 180.0),
    "nadir_lat": (-90.0, 90.0),
    "nadir_lon": (-180.0, 180.0),
    "focal_length_mm": (0.0, 10_000.0),
    "tilt_deg": (0.0, 90.0),
    "cloud_pct": (0.0, 100.0),
}


def parse_earthloc_name(name: str) -> dict:
    """Fields of an EarthLoc/EarthMatch-style file name (see module docstring).

    Raises ValueError naming what could not be read.
    """
    stem = name.rsplit(".", 1)[0] if "." in name.rsplit("@", 1)[-1] else name
    fields = [f for f in stem.split("@")]
    fields = fields[1:] if fields and fields[0] == "" else fields
    id_at = next((i for i, f in enumerate(fields) if PHOTO_ID.match(f)), None)
    if id_at is None:
        raise ValueError(f"no photo id (like ISS064-E-513) between the '@' separators of {name!r}")

    def num(i: int) -> float:
        try:
            return float(fields[i])
        except (IndexError, ValueError):
            raise ValueError(
                f"field {i + 1} of {name!r} should be a number, found {fields[i]!r}"
                if i < len(fields)
                else f"{name!r} has too few '@' fields"
            ) from None

    row: dict = {"photo_id": fields[id_at]}
    if id_at == 8:  # localized form: 4 corners, id, date, centre lat, centre lon, ...
        row["center_lat"], row["center_lon"] = num(id_at + 2), num(id_at + 3)
    else:
        row["center_lat"], row["center_lon"] = num(0), num(1)
        if id_at == 7:
            for i, col in enumerate(("nadir_lat", "nadir_lon", "tilt_deg", "focal_length_mm", "cloud_pct"), start=2):
                row[col] = num(i)
    return row


def _read_folder(folder: Path) -> tuple[pd.DataFrame, list[Problem]]:
    """A folder of EarthLoc-named images as a queries table, and a problem per file whose name cannot be read:
    such a file keeps a row (photo_id = its file name, no label) so that it can end as one error row."""
    rows, problems = [], []
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ManifestError(
            folder,
            "no images (.jpg, .png, .tif, .webp) in this folder; "
            "pass a queries CSV/Parquet or a folder of EarthLoc-named photos",
        )
    for p in files:
        name = printable(p.name)  # bytes that are not UTF-8 escaped: the row, the manifest and messages are text
        try:
            if name != p.name:
                raise ValueError(f"the file name {name!r} is not valid UTF-8 (a table of text cannot hold it)")
            row = parse_earthloc_name(p.name)
        except ValueError as e:
            problems.append(
                Problem(
                    f"{e}; rename it as @lat@lon@...@PHOTO_ID@...@.jpg or list the photos in a queries CSV",
                    row=len(rows),
                    column="file name",
                    photo_id=name,
                )
            )
            row = {"photo_id": name, "center_lat": np.nan, "center_lon": np.nan}
        row["image_path"] = name
        rows.append(row)
    return pd.DataFrame(rows), problems


def read_queries_table(path: str | os.PathLike) -> tuple[pd.DataFrame, Path]:
    """The raw queries table and the folder its relative image paths start from."""
    path = Path(path)
    if not path.exists():
        raise ManifestError(path, "no such file or folder; pass a queries CSV/Parquet or a folder of photos")
    if path.is_dir():
        df, problems = _read_folder(path)
        if problems:
            raise ManifestError(path, problems)
        return df, path
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".txt"):
            df = pd.read_csv(
                path,
                sep=_csv_separator(path),
                skipinitialspace=True,
                dtype={"photo_id": str, "image_path": str},
                keep_default_na=True,
            )
        elif suffix in (".parquet", ".pq", ".geoparquet"):
            df = pd.read_parquet(path)
        else:
            raise ManifestError(path, f"unknown queries format {suffix!r}; use .csv or .parquet")
    except ManifestError:
        raise
    except Exception as e:
        raise ManifestError(path, f"could not be read as a table ({e})") from None
    return _known_column_names(df), path.parent


def _csv_separator(path: Path) -> str:
    """``,`` unless the header line is clearly separated by ``;`` or tabs (spreadsheet exports)."""
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        header = f.readline()
    for sep in (";", "\t"):
        if "," not in header and sep in header:
            return sep
    return ","


def _known_column_names(df: pd.DataFrame) -> pd.DataFrame:
    """Column names with stray spaces or in another case (``' image_path'``, ``PHOTO_ID``) renamed to
    the schema's, where that is unambiguous."""
    known = {n.lower(): n for n in QUERIES.schema.names}
    rename = {}
    for c in df.columns:
        key = str(c).strip().lower()
        if c not in QUERIES.schema.names and key in known and known[key] not in df.columns:
            rename[c] = known[key]
    if len(set(rename.values())) < len(rename):
        return df
    return df.rename(columns=rename)


def read_queries(
    path: str | os.PathLike, check_images: bool = True, on_error: str = "raise"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read and validate queries; resolve ``image_path`` to absolute paths.

    Args:
        path: a CSV or Parquet file, or a folder of EarthLoc-named images.
        check_images: also require every image file to exist.
        on_error: ``"raise"``: any bad row raises one :class:`ManifestError` listing the rows;
            ``"collect"``: bad rows are returned apart so a stage can record them as errors
            and go on with the rest. File-level problems (missing column, duplicate ids,
            unreadable file) always raise: they cannot be pinned to one photo.

    Returns:
        (queries, rejected): queries in the QUERIES schema's columns; rejected has
        photo_id, row (0-based), column and reason for each bad row (empty when none).
    """
    if on_error not in ("raise", "collect"):
        raise ValueError("on_error must be 'raise' or 'collect'")
    name_problems: list[Problem] = []  # a folder's files whose names are not EarthLoc's: one bad row each
    if Path(path).is_dir():
        df, name_problems = _read_folder(Path(path))
        base = Path(path)
    else:
        df, base = read_queries_table(path)
    missing = [c for c in QUERIES.required if c not in df.columns]
    if missing:
        hint = ", ".join(QUERIES.required)
        found = ", ".join(repr(str(c)) for c in list(df.columns)[:12]) or "none"
        raise ManifestError(
            path,
            [
                Problem(f"required column is missing (a queries file needs {hint}; found: {found})", column=c)
                for c in missing
            ],
        )
    unknown = [c for c in df.columns if c not in QUERIES.schema.names]
    df = df.drop(columns=unknown)
    for c in QUERIES.optional:
        if c not in df:
            df[c] = np.nan if c != "acquired_at" else pd.NaT
    df = df[QUERIES.schema.names].reset_index(drop=True)

    file_problems: list[Problem] = []
    ids = df["photo_id"]
    empty = ids.isna() | (ids.astype(str).str.strip() == "")
    for r in np.flatnonzero(empty.to_numpy()):
        file_problems.append(Problem("photo_id is empty; every photo needs a unique id", row=int(r), column="photo_id"))
    dup = ids.duplicated(keep="first") & ~empty
    for r in np.flatnonzero(dup.to_numpy()):
        first = int(np.flatnonzero((ids == ids.iloc[r]).to_numpy())[0])
        file_problems.append(
            Problem(
                f"duplicate photo_id (first seen in row {first + 1}); ids must be unique",
                row=int(r),
                column="photo_id",
                photo_id=str(ids.iloc[r]),
            )
        )
    if file_problems:
        raise ManifestError(path, file_problems)
    df["photo_id"] = ids.astype(str)

    row_problems: list[Problem] = []
    for c in _NUMERIC:
        raw = df[c]
        num = pd.to_numeric(raw, errors="coerce")
        not_number = num.isna() & raw.notna()
        for r in np.flatnonzero(not_number.to_numpy()):
            row_problems.append(
                Problem(f"{raw.iloc[r]!r} is not a number", row=int(r), column=c, photo_id=df["photo_id"].iloc[r])
            )
        lo, hi = _RANGES[c]
        v = num.to_numpy(dtype=np.float64, na_value=np.nan)
        required = c in QUERIES.required
        if required:
            for r in np.flatnonzero(np.isnan(v) & ~not_number.to_numpy()):
                row_problems.append(
                    Problem(
                        "value is missing or NaN; the weak label needs both center_lat and center_lon in degrees",
                        row=int(r),
                        column=c,
                        photo_id=df["photo_id"].iloc[r],
                    )
                )
        for r in np.flatnonzero(~np.isnan(v) & ((v < lo) | (v > hi) | ~np.isfinite(v))):
            row_problems.append(
                Problem(
                    f"value {v[r]:g} is outside [{lo:g}, {hi:g}]" + (" degrees" if c.endswith(("lat", "lon")) else ""),
                    row=int(r),
                    column=c,
                    photo_id=df["photo_id"].iloc[r],
                )
            )
        df[c] = num.astype(np.float64)
    df["acquired_at"] = pd.to_datetime(df["acquired_at"], utc=True, errors="coerce")

    paths = []
    for r, p in enumerate(df["image_path"].tolist()):
        if p is None or (isinstance(p, float) and np.isnan(p)) or str(p).strip() == "":
            row_problems.append(
                Problem("image_path is empty", row=r, column="image_path", photo_id=df["photo_id"].iloc[r])
            )
            paths.append("")
            continue
        full = Path(p) if os.path.isabs(str(p)) else (base / str(p))
        full = full.resolve()
        paths.append(str(full))
        if check_images and not full.is_file():
            row_problems.append(
                Problem(
                    f"image file {str(full)!r} does not exist; fix the path (relative paths "
                    "start from the queries file's folder) or drop the row",
                    row=r,
                    column="image_path",
                    photo_id=df["photo_id"].iloc[r],
                )
            )
    df["image_path"] = paths
    if name_problems:  # the file name is the problem, not the missing label it leaves
        named = {p.row for p in name_problems}
        row_problems = name_problems + [p for p in row_problems if p.row not in named]

    rejected = pd.DataFrame(
        {
            "photo_id": [p.photo_id for p in row_problems],
            "row": [p.row for p in row_problems],
            "column": [p.column for p in row_problems],
            "reason": [p.format(path) for p in row_problems],
        }
    )
    if row_problems and on_error == "raise":
        raise ManifestError(path, sorted(row_problems, key=lambda p: (p.row, p.column)))
    if len(rejected):
        rejected = rejected.drop_duplicates("row").sort_values("row").reset_index(drop=True)
        df = df.drop(index=rejected["row"].to_numpy()).reset_index(drop=True)
    return df, rejected
