"""Batches of training pairs with no two pairs overlapping on the ground (AstroLoc, section 4.2).

Within a batch every image of the other pairs is a negative (Eq. 3), so two pairs of one batch must not show
the same ground: a pair's ground is its photo's footprint and its window together, and two pairs conflict
when those intersect.
"""

from __future__ import annotations

import numpy as np
import shapely


def pair_batches(grounds: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch of batches: indices into ``grounds`` (P,) shapely geometries (each pair's footprint and window,
    lon/lat degrees), ``batch_size`` each, no two intersecting, every pair in at most one batch. Pairs are taken
    in a random order; a pair that conflicts with the batch being filled waits for a later one; batches that
    cannot be filled are not returned (the pairs left over are counted by the caller)."""
    if batch_size < 2:
        raise ValueError(f"batch_size must be at least 2 (the other pairs are the negatives), got {batch_size}")
    waiting = list(rng.permutation(len(grounds)))
    batches = []
    while len(waiting) >= batch_size:
        batch, rest = [], []
        for i in waiting:
            if len(batch) < batch_size and not any(shapely.intersects(grounds[i], grounds[j]) for j in batch):
                batch.append(i)
            else:
                rest.append(i)
        if len(batch) < batch_size:
            break  # what is left overlaps too much to fill another batch
        batches.append(np.asarray(batch))
        waiting = rest
    return batches


__all__ = ["pair_batches"]
