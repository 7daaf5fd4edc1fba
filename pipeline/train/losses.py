"""AstroLoc's losses (Berton, Stoken, Masone; section 4 of ``../shared/papers/astroloc.md``).

Descriptors are L2-normalized, so the similarity S of the paper is their inner product (cosine).

- :func:`pair_loss`: the query-satellite pairwise loss, Eq. 1-5: attraction within each (photo, window) pair,
  repulsion from every image of the other pairs of the batch (which do not overlap on the ground).
- :func:`mum_loss`: the Multi-similarity loss with Unsupervised Mining, Eq. 9: quadruplets of database images
  (four images of one window), every other image of a quadruplet a positive, every image of the other
  quadruplets a negative; no margin, no pair miner.
- :func:`cluster_probabilities`: Eq. 7-8, the clusters sampled in proportion to the training photos
  assigned to them.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def pair_loss(
    q: torch.Tensor, d: torch.Tensor, alpha: float = 1.0, beta: float = 50.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_pos, L_neg) of Eq. 1 and 3 for B pairs: photo descriptors ``q`` (B, D) and their windows' ``d`` (B, D),
    both unit vectors. L_pairs (Eq. 5) is their sum.

    L_pos = 1/(alpha B) sum_i log(1 + exp(-alpha S(q_i, d_i)))                                     (Eq. 1, 2)
    L_neg = 1/(beta B) sum_i [phi(q_i, P_Q minus q_i) + phi(q_i, P_D minus d_i)
                              + phi(d_i, P_Q minus q_i) + phi(d_i, P_D minus d_i)]                  (Eq. 3)
    phi(y, Z) = log(1 + sum_j exp(beta S(y, Z_j)))                                                   (Eq. 4)
    """
    b = q.shape[0]
    pos = F.softplus(-alpha * (q * d).sum(dim=1)).sum() / (alpha * b)
    others = ~torch.eye(b, dtype=torch.bool, device=q.device)  # P minus the pair's own image

    def phi(y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:  # (B,) for each y_i against z_j, j != i
        logits = (beta * y @ z.T).masked_fill(~others, float("-inf"))
        zero = torch.zeros(b, 1, dtype=logits.dtype, device=logits.device)  # the "1 +" inside the log
        return torch.logsumexp(torch.cat([zero, logits], dim=1), dim=1)

    neg = (phi(q, q) + phi(q, d) + phi(d, q) + phi(d, d)).sum() / (beta * b)
    return pos, neg


def mum_loss(h: torch.Tensor, alpha: float = 1.0, beta: float = 50.0) -> torch.Tensor:
    """Eq. 9 for H quadruplets ``h`` (H, 4, D) of unit descriptors (four images of one window each):

    L = 1/(4H) sum_i [ 1/alpha sum_j log(1 + sum_{d in H_i minus h_ij} exp(-alpha S(h_ij, d)))
                     + 1/beta  sum_j log(1 + sum_{d not in H_i} exp(+beta S(h_ij, d))) ]
    """
    n_quads, k, dim = h.shape
    x = h.reshape(n_quads * k, dim)
    s = x @ x.T
    group = torch.arange(n_quads, device=h.device).repeat_interleave(k)
    same = group[:, None] == group[None, :]
    self_ = torch.eye(n_quads * k, dtype=torch.bool, device=h.device)
    zero = torch.zeros(n_quads * k, 1, dtype=s.dtype, device=s.device)
    pos = torch.logsumexp(torch.cat([zero, (-alpha * s).masked_fill(~same | self_, float("-inf"))], 1), 1)
    neg = torch.logsumexp(torch.cat([zero, (beta * s).masked_fill(same, float("-inf"))], 1), 1)
    return (pos / alpha + neg / beta).sum() / (k * n_quads)


def cluster_probabilities(bins: np.ndarray) -> np.ndarray:
    """Eq. 8: Pr(k) = b_k / sum_i b_i, from the counts ``bins`` (K,) of training photos assigned to each cluster."""
    bins = np.asarray(bins, dtype=np.float64)
    if bins.ndim != 1 or (bins < 0).any() or bins.sum() <= 0:
        raise ValueError("cluster bins must be non-negative counts with at least one photo")
    return bins / bins.sum()


def sample_clusters(bins: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Eq. 7: ``n`` clusters drawn with the probabilities of Eq. 8 (a cluster with no photo is never drawn)."""
    return rng.choice(len(bins), size=n, p=cluster_probabilities(bins))


__all__ = ["cluster_probabilities", "mum_loss", "pair_loss", "sample_clusters"]
