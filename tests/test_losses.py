"""AstroLoc's losses and samplers (pipeline/train) against direct computations of the paper's equations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
import torch
import torch.nn.functional as F

from pipeline.train.losses import cluster_probabilities, mum_loss, pair_loss, sample_clusters
from pipeline.train.sampler import pair_batches


def _unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=-1)


def S(a, b) -> float:
    return float((a * b).sum())


@pytest.mark.parametrize("alpha, beta", [(1.0, 50.0), (2.0, 5.0)])
def test_the_pair_loss_is_equations_1_to_5(alpha, beta):
    b = 5
    q, d = _unit(b, 8, seed=1), _unit(b, 8, seed=2)
    pos, neg = pair_loss(q, d, alpha, beta)
    want_pos = sum(math.log(1 + math.exp(-alpha * S(q[i], d[i]))) for i in range(b)) / (alpha * b)  # Eq. 1, 2

    def phi(y, zs):  # Eq. 4
        return math.log(1 + sum(math.exp(beta * S(y, z)) for z in zs))

    want_neg = 0.0
    for i in range(b):  # Eq. 3
        pq = [q[j] for j in range(b) if j != i]
        pd = [d[j] for j in range(b) if j != i]
        want_neg += phi(q[i], pq) + phi(q[i], pd) + phi(d[i], pq) + phi(d[i], pd)
    want_neg /= beta * b
    assert float(pos) == pytest.approx(want_pos, rel=1e-12) and float(neg) == pytest.approx(want_neg, rel=1e-12)


@pytest.mark.parametrize("alpha, beta", [(1.0, 50.0), (3.0, 2.0)])
def test_the_mum_loss_is_equation_9(alpha, beta):
    n = 3
    h = _unit(n, 4, 8, seed=3)
    want = 0.0
    for i in range(n):
        for j in range(4):
            x = h[i, j]
            own = [h[i, m] for m in range(4) if m != j]
            others = [h[k, m] for k in range(n) if k != i for m in range(4)]
            want += math.log(1 + sum(math.exp(-alpha * S(x, y)) for y in own)) / alpha
            want += math.log(1 + sum(math.exp(beta * S(x, y)) for y in others)) / beta
    want /= 4 * n
    assert float(mum_loss(h, alpha, beta)) == pytest.approx(want, rel=1e-12)


def test_the_losses_have_gradients_and_fall_for_matching_descriptors():
    q = _unit(4, 8, seed=4).requires_grad_()
    pos, neg = pair_loss(q, _unit(4, 8, seed=5))
    (pos + neg).backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
    d = _unit(4, 8, seed=6)
    assert sum(pair_loss(d, d)) < sum(pair_loss(_unit(4, 8, seed=7), d))


def test_clusters_are_sampled_in_proportion_to_their_photos():
    """Eq. 7-8: frequencies of 20,000 draws against the bins: Pearson's chi-square over the 5 clusters with
    photos (4 degrees of freedom) below 18.47, its 0.1 % critical value."""
    bins = np.array([5, 0, 20, 10, 40, 25])
    assert cluster_probabilities(bins).tolist() == pytest.approx([0.05, 0, 0.2, 0.1, 0.4, 0.25])
    draws = sample_clusters(bins, 20_000, np.random.default_rng(0))
    counts = np.bincount(draws, minlength=len(bins))
    assert counts[1] == 0
    keep = bins > 0
    expected = 20_000 * cluster_probabilities(bins)[keep]
    assert ((counts[keep] - expected) ** 2 / expected).sum() < 18.47
    skewed = sample_clusters(np.array([5, 0, 40, 10, 20, 25]), 20_000, np.random.default_rng(0))  # other bins
    assert ((np.bincount(skewed, minlength=6)[keep] - expected) ** 2 / expected).sum() > 18.47  # the test can fail
    with pytest.raises(ValueError, match="at least one photo"):
        cluster_probabilities(np.zeros(3))


@pytest.mark.parametrize("seed", range(5))
def test_no_batch_holds_two_pairs_that_overlap_on_the_ground(seed):
    """Property test on random footprints: boxes of random size and place, many of them overlapping."""
    rng = np.random.default_rng(seed)
    n = 300
    lon, lat = rng.uniform(0, 20, n), rng.uniform(40, 50, n)
    w, h = rng.uniform(0.1, 2.0, n), rng.uniform(0.1, 2.0, n)
    grounds = shapely.box(lon, lat, lon + w, lat + h)
    batches = pair_batches(grounds, 8, rng)
    assert batches and all(len(b) == 8 for b in batches)
    seen = np.concatenate(batches)
    assert len(seen) == len(set(seen.tolist()))  # each pair at most once per epoch
    for b in batches:
        for i in range(len(b)):
            for j in range(i + 1, len(b)):
                assert not grounds[b[i]].intersects(grounds[b[j]])
