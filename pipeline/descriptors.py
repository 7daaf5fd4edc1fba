"""Descriptors of database windows and photos, and the store that keeps them.

A store is a folder: ``index.parquet`` says what each descriptor is (``kind`` window or photo, ``id``: tile_id
or photo_id, ``rotation_deg``, ``zoom`` for windows, ``shard``: a file of the folder, ``row`` in it) and each
shard is a ``.npy`` array (rows, D), float16 by default, written atomically by one task. The model and the
preprocessing that made them are recorded beside the index (the stage's config), so a store of another model
is refused rather than mixed. Reading streams shard by shard (:func:`iter_shards`): AstroLoc's database
(5.2 M windows x 4 rotations x 2048 values) is 85 GB in float16.

Windows are rendered from the tile source as the footprint stage renders them (``read_window``: the window's
tiles at their zoom, (size_tiles x 256)^2 pixels), then turned by ``rotation_deg`` clockwise (EarthLoc's
augmentation of the database) and resized by the model's preprocessing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from manifests.files import atomic_output

ROTATIONS = (0, 90, 180, 270)
"""The database's rotations (degrees clockwise), as EarthLoc's protocol augments it."""
INDEX_SCHEMA = pa.schema(
    [
        ("kind", pa.string()),
        ("id", pa.string()),
        ("rotation_deg", pa.int16()),
        ("zoom", pa.int16()),
        ("shard", pa.string()),
        ("row", pa.int32()),
    ]
)


def rotate(rgb: np.ndarray, degrees: int) -> np.ndarray:
    """``rgb`` (H, W, 3) turned clockwise by a multiple of 90 degrees."""
    if degrees % 90:
        raise ValueError(f"rotation {degrees} is not a multiple of 90 degrees")
    return np.ascontiguousarray(np.rot90(rgb, k=-(degrees // 90) % 4))


def to_tensor(images: Sequence[np.ndarray]) -> torch.Tensor:
    """RGB uint8 images (H, W, 3), all of one size -> (B, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255.0)


def autocast_dtype(device: str, half: bool = True) -> torch.dtype | None:
    """The reduced precision a model runs in on ``device`` with ``half``: float16 on CUDA, bfloat16 on a CPU that
    multiplies bfloat16 in hardware (AVX512-BF16, AMX: three times faster for the CPU model, descriptors within
    cosine 0.997 of float32's), None (float32) elsewhere."""
    from .runtime import cpu_has_native_bf16

    if not half:
        return None
    if str(device).startswith("cuda"):
        return torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else None


@torch.no_grad()
def describe(
    model: torch.nn.Module, images: Sequence[np.ndarray], batch: int = 16, device: str = "cpu", half: bool = False
) -> np.ndarray:
    """Descriptors (N, D) float32 of RGB uint8 images (any sizes: each resized by the model), ``batch`` at a time;
    under autocast with ``half`` (:func:`autocast_dtype`)."""
    dtype = autocast_dtype(device, half)
    kind = "cuda" if str(device).startswith("cuda") else "cpu"
    out = []
    for i in range(0, len(images), batch):
        chunk = images[i : i + batch]
        shapes = {im.shape for im in chunk}
        parts = [chunk] if len(shapes) == 1 else [[im] for im in chunk]  # photos of several sizes: one by one
        for p in parts:
            x = to_tensor(p).to(device)
            with torch.autocast(kind, dtype=dtype or torch.float32, enabled=dtype is not None):
                out.append(model(x).float().cpu().numpy())
    dim = getattr(getattr(model, "config", None), "out_dim", 0)
    return np.concatenate(out) if out else np.zeros((0, dim), np.float32)


def write_shard(path: str | os.PathLike, descriptors: np.ndarray, dtype: str = "float16") -> None:
    """One shard, atomically."""
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.save(f, descriptors.astype(dtype))


def read_index(folder: str | os.PathLike) -> pd.DataFrame:
    """The store's index (kind, id, rotation_deg, zoom, shard, row)."""
    return pq.read_table(Path(folder) / "index.parquet").to_pandas()


def iter_shards(folder: str | os.PathLike, kind: str | None = None) -> Iterator[tuple[pd.DataFrame, np.ndarray]]:
    """(index rows, their descriptors (n, D) float32) one shard at a time, in index order; only ``kind``'s rows
    when given. Shards are memory-mapped: one is in memory at a time."""
    folder = Path(folder)
    index = read_index(folder)
    if kind is not None:
        index = index[index["kind"] == kind]
    for shard, rows in index.groupby("shard", sort=False):
        data = np.load(folder / shard, mmap_mode="r")
        yield rows, np.asarray(data[rows["row"].to_numpy()], dtype=np.float32)


def read_rows(folder: str | os.PathLike, rows: pd.DataFrame, dtype=np.float32, dim: int = 0) -> np.ndarray:
    """The stored descriptors of ``rows`` (rows of the index of the store in ``folder``, any subset, any order) as
    one array (len(rows), D) of ``dtype`` in ``rows``' order, read shard by shard: only the result is held (1M
    descriptors of 768 values: 1.5 GB in float16). ``dim``: D when ``rows`` is empty."""
    shards = rows["shard"].to_numpy()
    where = rows["row"].to_numpy()
    out = None
    for shard, pos in pd.Series(shards).groupby(shards, sort=False).indices.items():
        data = np.load(Path(folder) / shard, mmap_mode="r")
        if out is None:
            out = np.empty((len(rows), data.shape[1]), dtype)
        out[pos] = data[where[pos]]
    return out if out is not None else np.zeros((0, dim), dtype)


def load_descriptors(folder: str | os.PathLike, kind: str) -> tuple[pd.DataFrame, np.ndarray]:
    """All of ``kind``'s descriptors at once (the photos of an evaluation; a database that fits in memory)."""
    pieces = list(iter_shards(folder, kind))
    if not pieces:
        return read_index(folder).iloc[:0], np.zeros((0, 0), np.float32)
    return pd.concat([p[0] for p in pieces], ignore_index=True), np.concatenate([p[1] for p in pieces])


_MODELS: dict[tuple, torch.nn.Module] = {}
"""Per worker process: the model of the latest batch (loaded once)."""


def _model(model: str, backbone_weights: str | None, device: str) -> torch.nn.Module:
    from .model.checkpoint import load_model

    key = (model, backbone_weights, device)
    if key not in _MODELS:
        _MODELS.clear()
        _MODELS[key] = load_model(model, backbone_weights).to(device)
    return _MODELS[key]


def describe_batch(
    kind: str,
    items: list[tuple],
    folder: str,
    shard: str,
    index_part: str,
    model: str,
    backbone_weights: str | None = None,
    device: str = "cpu",
    tiles: str | None = None,
    size_tiles: int = 4,
    rotations: Sequence[int] = ROTATIONS,
    dtype: str = "float16",
    batch: int = 16,
    threads: int = 0,
    half: bool = True,
) -> dict:
    """A Dask task: the descriptors of a batch, written as ``folder/shard`` and its index rows as ``index_part``
    (atomically, the shard first: an index part means its shard is whole).

    ``kind`` "window": ``items`` are (tile_id, zoom), each described at every rotation of ``rotations``, read
    from the tile source ``tiles``; "photo": ``items`` are (photo_id, image_path), at 0 degrees. A photo that
    cannot be read is left out (logged). Returns counts for the progress line."""
    import logging

    from .geometry.windows import Window
    from .imagery.photos import PhotoError, read_photo
    from .runtime import worker_device

    if threads:
        torch.set_num_threads(int(threads))
    device = worker_device(device)
    net = _model(model, backbone_weights, device)
    images, rows = [], []
    if kind == "window":
        from .tile_sources import open_tile_source

        source = open_tile_source(tiles)
        for tile_id, zoom in items:
            rgb = source.read_window(Window.from_tile_id(tile_id, size_tiles)).rgb
            for r in rotations:
                images.append(rotate(rgb, r))
                rows.append((tile_id, r, zoom))
    elif kind == "photo":
        for photo_id, path in items:
            try:
                images.append(read_photo(path))
                rows.append((photo_id, 0, None))
            except PhotoError as e:
                logging.getLogger(__name__).warning("photo %s left out: %s", photo_id, e)
    else:
        raise ValueError(f"kind must be window or photo, got {kind!r}")
    write_shard(Path(folder) / shard, describe(net, images, batch, device, half), dtype)
    table = pa.table(
        {
            "kind": [kind] * len(rows),
            "id": [r[0] for r in rows],
            "rotation_deg": [r[1] for r in rows],
            "zoom": [r[2] for r in rows],
            "shard": [shard] * len(rows),
            "row": list(range(len(rows))),
        },
        schema=INDEX_SCHEMA,
    )
    with atomic_output(index_part) as tmp:
        pq.write_table(table, tmp)
    return {"photos": len(items), "described": len(rows)}


__all__ = [
    "INDEX_SCHEMA",
    "ROTATIONS",
    "autocast_dtype",
    "describe",
    "describe_batch",
    "iter_shards",
    "load_descriptors",
    "read_index",
    "read_rows",
    "rotate",
    "to_tensor",
    "write_shard",
]
