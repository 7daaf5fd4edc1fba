"""Unsupervised mining for the MUM loss (AstroLoc, section 4.3): k-means clusters of the windows' descriptors, the
training photos assigned to them, and the windows of each step's quadruplets.

The windows of one batch never overlap on the ground (two views of one place would be counted as negatives of each
other); each batch's choice is a function of (seed, step) and the clusters, so resumed and data-parallel runs draw
the same windows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .losses import cluster_probabilities


def kmeans(x: np.ndarray, k: int, seed: int = 0, iterations: int = 20) -> np.ndarray:
    """Centroids (k, D) of the unit descriptors ``x`` (N, D): FAISS's spherical k-means (centroids re-normalized,
    points assigned by inner product)."""
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    if len(x) < k:
        raise ValueError(f"{len(x)} windows cannot make {k} clusters; lower clusters or mine more windows")
    km = faiss.Kmeans(x.shape[1], int(k), niter=iterations, seed=int(seed), spherical=True, verbose=False)
    km.train(x)
    return km.centroids.copy()


def assign(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """The nearest centroid (largest inner product) of each row of ``x`` (N, D) -> (N,) int64."""
    if not len(x):
        return np.zeros(0, np.int64)
    return np.argmax(np.asarray(x, np.float32) @ np.asarray(centroids, np.float32).T, axis=1).astype(np.int64)


@dataclass(frozen=True)
class Clusters:
    """A mining's result: ``labels`` (M,) the cluster of each mined window, ``bins`` (K,) the training photos
    assigned to each cluster (b_k of Eq. 8), ``step`` the step it was computed at."""

    labels: np.ndarray
    bins: np.ndarray
    step: int

    @classmethod
    def compute(cls, windows: np.ndarray, photos: np.ndarray, k: int, seed: int, step: int) -> Clusters:
        """Cluster the windows' descriptors ``windows`` (M, D) into ``k`` and count the photos ``photos`` (P, D) per
        cluster."""
        centroids = kmeans(windows, k, seed=seed + step)
        bins = np.bincount(assign(photos, centroids), minlength=k)
        return cls(assign(windows, centroids), bins, step)

    def state(self) -> dict:
        return {"labels": self.labels.tolist(), "bins": self.bins.tolist(), "step": int(self.step)}

    @classmethod
    def from_state(cls, d: dict) -> Clusters:
        return cls(np.asarray(d["labels"], np.int64), np.asarray(d["bins"], np.int64), int(d["step"]))


def _disjoint(order: np.ndarray, boxes: np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` of ``order`` (indices into ``boxes`` (M, 4): x0, y0, x1, y1 in the map's unit square) whose
    boxes do not overlap the ones taken before them (touching edges allowed)."""
    taken: list[int] = []
    for i in order:
        b = boxes[i]
        if all(b[2] <= boxes[j][0] or boxes[j][2] <= b[0] or b[3] <= boxes[j][1] or boxes[j][3] <= b[1] for j in taken):
            taken.append(int(i))
            if len(taken) == n:
                break
    return np.asarray(taken, np.int64)


def window_boxes(zoom: np.ndarray, x: np.ndarray, y: np.ndarray, size_tiles: int) -> np.ndarray:
    """Windows' extents (M, 4) in the Web Mercator unit square (x0, y0, x1, y1), from their top-left tiles."""
    scale = 2.0 ** np.asarray(zoom, np.float64)
    x0, y0 = np.asarray(x) / scale, np.asarray(y) / scale
    return np.stack([x0, y0, x0 + size_tiles / scale, y0 + size_tiles / scale], axis=1)


def quad_windows(
    step: int, n: int, boxes: np.ndarray, mining: str, clusters: Clusters | None, seed: int = 0, tries: int = 20
) -> np.ndarray:
    """Indices (n,) into the mined windows of step ``step``'s ``n`` quadruplets, no two overlapping.

    ``mining``: ``random`` (solution 1: any windows), ``uniform`` (solution 2: one cluster drawn uniformly among
    those that can fill a batch), ``photos`` (solution 3: one cluster drawn with Eq. 7-8's probabilities)."""
    rng = np.random.default_rng([seed, step, 7])
    if mining == "random":
        picked = _disjoint(rng.permutation(len(boxes)), boxes, n)
        if len(picked) < n:
            raise ValueError(f"the mined windows hold fewer than {n} that do not overlap; lower quad_batch")
        return picked
    if clusters is None:
        raise ValueError(f"mining {mining!r} needs clusters")
    k = len(clusters.bins)
    weights = clusters.bins.astype(np.float64) if mining == "photos" else np.ones(k)
    for _ in range(tries):
        if weights.sum() <= 0:
            break
        c = int(rng.choice(k, p=cluster_probabilities(weights)))
        members = np.flatnonzero(clusters.labels == c)
        picked = _disjoint(members[rng.permutation(len(members))], boxes, n)
        if len(picked) == n:
            return picked
        weights[c] = 0.0  # this cluster cannot fill a batch: draw among the others
    raise ValueError(
        f"no cluster holds {n} windows that do not overlap (step {step}); lower quad_batch or clusters, "
        "or mine more windows"
    )


__all__ = ["Clusters", "assign", "kmeans", "quad_windows", "window_boxes"]
