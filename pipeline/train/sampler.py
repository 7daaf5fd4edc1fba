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


class PairSchedule:
    """The pairs of every training step, a function of (seed, step) alone: epoch ``e`` is
    :func:`pair_batches` with the generator ``(seed, e)``, and step ``t`` is the ``t``-th batch counted across
    epochs. A resumed run, or each process of a data-parallel one, finds the same batches without carrying a
    sampler's state."""

    def __init__(self, grounds: np.ndarray, batch_size: int, seed: int = 0):
        self.grounds, self.batch_size, self.seed = grounds, int(batch_size), int(seed)
        self._counts: list[int] = []  # batches per epoch
        self._cache: dict[int, list[np.ndarray]] = {}  # the latest epochs' batches
        if self._count(0) == 0:
            raise ValueError(
                f"{len(grounds)} pairs cannot fill one batch of {batch_size} pairs that do not overlap on the "
                "ground; lower the pair batch or add photos"
            )

    def _batches(self, epoch: int) -> list[np.ndarray]:
        if epoch not in self._cache:
            if len(self._cache) >= 4:
                self._cache.pop(next(iter(self._cache)))
            rng = np.random.default_rng([self.seed, epoch])
            self._cache[epoch] = pair_batches(self.grounds, self.batch_size, rng)
        return self._cache[epoch]

    def _count(self, epoch: int) -> int:
        while len(self._counts) <= epoch:
            self._counts.append(len(self._batches(len(self._counts))))
        return self._counts[epoch]

    def batch(self, step: int) -> np.ndarray:
        """Indices into the pairs (batch_size,) of step ``step`` (0-based)."""
        epoch = 0
        while step >= self._count(epoch):
            step -= self._count(epoch)
            epoch += 1
        return self._batches(epoch)[step]


__all__ = ["PairSchedule", "pair_batches"]
