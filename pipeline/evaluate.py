"""Retrieval evaluation under EarthLoc's and AstroLoc's protocol.

A query (a photo with its footprint) is searched over the database at its four rotations (every (window,
rotation) is one entry; rotations of one window are not merged in the top N, as in EarthLoc). Its positives
are the database windows its footprint intersects; a query with none in the searched database is dropped
and counted. recall@N is the share of queries with a positive among their N nearest entries (cosine
similarity: descriptors are unit vectors, so inner product). The random-ranking baseline is exact:
with D entries of which P are positive, P(a positive in the top N) = 1 - C(D - P, N) / C(D, N).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .pairs import Database, footprint_rings, join

KS = (1, 5, 10, 20, 100)
"""The recalls reported (AstroLoc's Table 3 gives R@1, R@10, R@100)."""
EARTH_RADIUS_KM = 6371.0088
"""Mean Earth radius (IUGG), for great-circle distances."""
VISIBLE_KM2 = 20e6
"""The area an ISS photo can show from its nadir, AstroLoc's search space instead of the whole Earth: a
spherical cap of 20 million km2 (radius :func:`cap_radius_km`, about 2,540 km of great circle)."""


def great_circle_km(lon1, lat1, lon2, lat2) -> np.ndarray:
    """Great-circle distance in km between points given in degrees (broadcasting; haversine on the mean sphere)."""
    lon1, lat1, lon2, lat2 = (np.radians(np.asarray(v, np.float64)) for v in (lon1, lat1, lon2, lat2))
    h = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))


def cap_radius_km(area_km2: float = VISIBLE_KM2) -> float:
    """The great-circle radius of a spherical cap of ``area_km2``: area = 2 pi R^2 (1 - cos(r / R))."""
    return EARTH_RADIUS_KM * math.acos(1.0 - area_km2 / (2 * math.pi * EARTH_RADIUS_KM**2))


def positive_windows(corners_lon: np.ndarray, corners_lat: np.ndarray, db: Database) -> list[set[str]]:
    """Per footprint (corners (Q, 4) degrees, tl tr br bl), the tile_ids of ``db``'s windows it intersects."""
    if not len(corners_lon):
        return []
    pairs = join(footprint_rings(corners_lon, corners_lat), db, 1e-12)  # any overlap
    out: list[set[str]] = [set() for _ in range(len(corners_lon))]
    for f, z, x, y in zip(pairs["fp"], pairs["zoom"], pairs["x"], pairs["y"]):
        out[int(f)].add(f"{z}_{x}_{y}")
    return out


def knn(database: np.ndarray, queries: np.ndarray, k: int, index: str = "flat") -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest database rows of each query by inner product (FAISS): (scores (Q, k), rows (Q, k), -1
    past the database's end). ``index``: ``flat`` (exact) or a FAISS factory string for a compressed one
    (``PCA256,IVF64,PQ32``: trained on the database itself)."""
    import faiss

    database = np.ascontiguousarray(database, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    k = min(k, len(database))
    if not k or not len(queries):  # nothing to search, or no one to search for
        return np.zeros((len(queries), k), np.float32), np.full((len(queries), k), -1, np.int64)
    d = database.shape[1]
    if index == "flat":
        ix = faiss.IndexFlatIP(d)
    else:
        ix = faiss.index_factory(d, index, faiss.METRIC_INNER_PRODUCT)
        ix.train(database)
    ix.add(database)
    return ix.search(queries, k)


def knn_within(database: np.ndarray, queries: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact kNN by inner product with each query restricted to its own database rows: ``allowed`` (Q, M) bool
    (the windows visible from a photo's nadir). Returns (scores (Q, k), rows (Q, k)), -1 past a query's rows."""
    q = len(queries)
    scores = np.full((q, k), -np.inf, dtype=np.float32)
    rows = np.full((q, k), -1, dtype=np.int64)
    for i in range(q):
        idx = np.flatnonzero(allowed[i])
        if not len(idx):
            continue
        sim = database[idx] @ queries[i]
        top = np.argsort(-sim, kind="stable")[:k]
        scores[i, : len(top)], rows[i, : len(top)] = sim[top], idx[top]
    return scores, rows


def first_positive_ranks(rows: np.ndarray, entry_ids: np.ndarray, positives: Sequence[set[str]]) -> np.ndarray:
    """For each query, the 0-based rank of its first positive among its nearest ``rows`` (Q, k) (-1: none among
    them); ``entry_ids`` (M,): the tile_id of each database row."""
    out = np.full(len(rows), -1, dtype=np.int64)
    for q, (r, pos) in enumerate(zip(rows, positives)):
        for rank, i in enumerate(r):
            if i >= 0 and entry_ids[i] in pos:
                out[q] = rank
                break
    return out


def recalls(ranks: np.ndarray, ks: Sequence[int] = KS) -> dict[int, float]:
    """recall@N for each N of ``ks``: the share of queries whose first positive ranks below N."""
    if not len(ranks):
        return {k: float("nan") for k in ks}
    return {k: float(np.mean((ranks >= 0) & (ranks < k))) for k in ks}


def random_recall(
    entries: int | Sequence[int], positive_entries: Sequence[int], ks: Sequence[int] = KS
) -> dict[int, float]:
    """The expected recall@N of a random ranking of D database entries (``entries``: one D for all queries, or
    one per query when each searches its own part), averaged over queries with ``positive_entries`` P each:
    1 - C(D - P, N) / C(D, N)."""
    ds = np.broadcast_to(np.asarray(entries, dtype=np.int64), (len(positive_entries),))

    def miss(d: int, p: int, n: int) -> float:
        n = min(n, d)
        if d - p < n:
            return 0.0
        return math.exp(
            math.lgamma(d - p + 1) - math.lgamma(d - p - n + 1) - math.lgamma(d + 1) + math.lgamma(d - n + 1)
        )

    return {
        k: float(1.0 - np.mean([miss(int(d), int(p), k) for d, p in zip(ds, positive_entries)]))
        if len(positive_entries)
        else float("nan")
        for k in ks
    }


__all__ = [
    "KS",
    "VISIBLE_KM2",
    "cap_radius_km",
    "first_positive_ranks",
    "great_circle_km",
    "knn",
    "knn_within",
    "positive_windows",
    "random_recall",
    "recalls",
]
