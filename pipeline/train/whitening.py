"""Learned whitening from matching pairs, in closed form: a linear map with a bias on a frozen model's descriptors.

Radenović, Tolias and Chum, "Fine-tuning CNN Image Retrieval with No Human Annotation" (TPAMI 2018), section 3.3
("Learning discriminative whitening"), learn it from matching pairs instead of PCA-whitening all descriptors:

- mu, the mean of the training descriptors;
- C_S = 1/|pairs| sum_(i, j) (x_i - x_j)(x_i - x_j)^T over the matching pairs (here a photo and the window it is
  paired with, at the stored rotation most similar to the photo): the directions in which a photo and its own
  window differ, the camera's and the season's look among them;
- the whitening part C_S^(-1/2), then the rotation: the eigenvectors of the descriptors' covariance C_D in the
  whitened space, largest first (the paper's C_D is the covariance of non-matching pairs, which is twice the
  descriptors' covariance in expectation: the same eigenvectors);
- P = eig(C_S^(-1/2) C_D C_S^(-1/2))^T C_S^(-1/2), kept to its first ``dim`` rows, and x -> normalize(P (x - mu)).

C_S is estimated from a few hundred to a few thousand pairs in hundreds of dimensions: ``shrinkage`` adds that
fraction of its mean eigenvalue to its diagonal (our addition; the paper's pairs outnumber its dimensions by far) so
the directions no pair spans are not blown up by the inverse square root.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def matching_pairs(
    photos: np.ndarray, references: np.ndarray, windows: Sequence[Sequence[np.ndarray]]
) -> tuple[np.ndarray, np.ndarray]:
    """(photo rows (n,), reference rows (n,)): one matching pair per (photo, paired window), the window at the stored
    rotation most similar to the photo. ``photos`` (P, D) and ``references`` (N, D) are unit descriptors;
    ``windows[p]`` lists photo p's paired windows, each as the rows (r,) of its stored rotations in ``references``."""
    p_rows, r_rows = [], []
    for p, groups in enumerate(windows):
        for rows in groups:
            rows = np.asarray(rows, np.int64)
            if not len(rows):
                continue
            sims = references[rows].astype(np.float32) @ photos[p].astype(np.float32)
            p_rows.append(p)
            r_rows.append(int(rows[int(np.argmax(sims))]))
    return np.asarray(p_rows, np.int64), np.asarray(r_rows, np.int64)


def learn_whitening(
    a: np.ndarray, b: np.ndarray, descriptors: np.ndarray, shrinkage: float = 0.1, dim: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The learned whitening of matching pairs (``a`` (n, D), ``b`` (n, D): row i of each is one pair) and the
    training ``descriptors`` (m, D) (the mean and the covariance C_D): (weight (k, D), bias (k,)) with
    z = normalize(weight @ x + bias), k = ``dim`` or D. ``shrinkage`` >= 0: that fraction of C_S's mean eigenvalue
    added to its diagonal. float64 throughout; the weight satisfies weight C weight^T = I_k with
    C = C_S + shrinkage x trace(C_S) / D x I."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    x = np.asarray(descriptors)
    if a.ndim != 2 or a.shape != b.shape or x.ndim != 2 or x.shape[1] != a.shape[1]:
        raise ValueError(f"pairs (n, D) twice and descriptors (m, D) expected, got {a.shape}, {b.shape}, {x.shape}")
    n, d = a.shape
    if n < 2 or len(x) < 2:
        raise ValueError(f"at least 2 matching pairs and 2 descriptors are needed, got {n} and {len(x)}")
    if shrinkage < 0:
        raise ValueError(f"shrinkage must be 0 or more, got {shrinkage}")
    k = d if dim is None else int(dim)
    if not 1 <= k <= d:
        raise ValueError(f"dim must be in [1, {d}] (the descriptors' size), got {dim}")
    mu, cov = _mean_covariance(x)
    diff = a - b
    cs = diff.T @ diff / n
    if not np.trace(cs) > 0:
        raise ValueError("every pair's two descriptors are equal: there is no difference to whiten")
    cs += shrinkage * np.trace(cs) / d * np.eye(d)
    val, vec = np.linalg.eigh(cs)
    if val.min() <= 1e-12 * val.max():
        raise ValueError(
            "the pairs' difference covariance is singular (fewer independent pairs than dimensions); "
            "pass a shrinkage above 0 (e.g. 0.1)"
        )
    inv_sqrt = (vec / np.sqrt(val)) @ vec.T  # C_S^(-1/2), symmetric
    _, rot = np.linalg.eigh(inv_sqrt @ cov @ inv_sqrt)  # the whitened descriptors' covariance
    weight = rot[:, ::-1][:, :k].T @ inv_sqrt  # largest variance first
    return weight, -weight @ mu


def _mean_covariance(x: np.ndarray, block: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """The mean (D,) and covariance (D, D) of the rows of ``x`` (m, D), in float64, a block of rows at a time (a
    store of a million descriptors is never copied whole)."""
    m, d = x.shape
    total, outer = np.zeros(d), np.zeros((d, d))
    for i in range(0, m, block):
        part = np.asarray(x[i : i + block], np.float64)
        total += part.sum(axis=0)
        outer += part.T @ part
    mu = total / m
    return mu, outer / m - np.outer(mu, mu)


def apply_whitening(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """normalize(weight @ x + bias) for each row of ``x`` (n, D) -> (n, k) float32."""
    z = np.asarray(x, np.float64) @ weight.T + bias
    return (z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)).astype(np.float32)


__all__ = ["apply_whitening", "learn_whitening", "matching_pairs"]
