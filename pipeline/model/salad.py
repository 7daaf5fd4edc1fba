"""SALAD aggregation (Izquierdo and Civera, "Optimal Transport Aggregation for Visual Place Recognition", CVPR 2024).

Local features (B, C, h, w) and a global token (B, C) -> one L2-normalized descriptor of
``token_dim + clusters * cluster_dim`` values (256 + 64 x 128 = 8448 for ViT-B's C = 768):

1. per patch, a score for each of the m clusters (``score``: 1x1 convs C -> 512 -> m, dropout 0.3 between) and
   a reduced feature (``cluster_features``: 1x1 convs C -> 512 -> l); the token reduced by ``token_features``
   (C -> 512 -> 256);
2. the patches' assignment to the clusters, plus a learnable dust bin that takes the patches no cluster wants,
   by optimal transport: :func:`sinkhorn_log` (3 iterations in the log domain) with each patch's mass spread over
   the m + 1 rows and the clusters' share of it equal, the dust bin's n - m times one cluster's (the paper's
   marginals);
3. each cluster's features summed with its assignment weights (the dust bin's dropped), L2-normalized per
   cluster; the token L2-normalized; [token, clusters] (cluster values ordered feature-major: index = j * m + k)
   L2-normalized.

Parameter names follow the authors' module (``score``, ``cluster_features``, ``token_features``, ``dust_bin``), so
their trained aggregators load as they are.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def sinkhorn_log(scores: torch.Tensor, log_a: torch.Tensor, log_b: torch.Tensor, iterations: int = 3) -> torch.Tensor:
    """Entropic optimal transport in the log domain (regularization 1): the log of the plan P = diag(u) exp(S)
    diag(v) whose row sums approach exp(log_a) and column sums exp(log_b).

    ``scores`` (B, m, n), ``log_a`` (B, m), ``log_b`` (B, n). Each iteration fits the rows, then the columns, so
    after any number of iterations the columns hold exactly their targets. Returns log P (B, m, n)."""
    u = torch.zeros_like(log_a)
    v = torch.zeros_like(log_b)
    for _ in range(iterations):
        u = log_a - torch.logsumexp(scores + v[:, None, :], dim=2)
        v = log_b - torch.logsumexp(scores + u[:, :, None], dim=1)
    return scores + u[:, :, None] + v[:, None, :]


def assignment(scores: torch.Tensor, dust_bin: torch.Tensor, iterations: int = 3) -> torch.Tensor:
    """SALAD's soft assignment of n patches to m clusters and a dust bin: ``scores`` (B, m, n) -> P (B, m + 1, n),
    each column (patch) summing to 1; row m is the dust bin, whose score is the scalar ``dust_bin``.

    Marginals, as the paper's: each patch 1/(n + m); each cluster 1/(n + m) too, the dust bin (n - m)/(n + m), so
    that the dust bin may take the patches beyond one per cluster. Needs n > m."""
    b, m, n = scores.shape
    if n <= m:
        raise ValueError(f"SALAD needs more patches than clusters, got {n} patches for {m} clusters (a larger image)")
    s = torch.cat([scores, dust_bin.expand(b, 1, n).to(scores.dtype)], dim=1)
    norm = -math.log(n + m)
    log_a = torch.full((b, m + 1), norm, dtype=s.dtype, device=s.device)
    log_a[:, -1] += math.log(n - m)
    log_b = torch.full((b, n), norm, dtype=s.dtype, device=s.device)
    return torch.exp(sinkhorn_log(s, log_a, log_b, iterations) - norm)


class SALAD(nn.Module):
    """(features (B, C, h, w), token (B, C)) -> descriptor (B, token_dim + clusters * cluster_dim), L2-normalized."""

    def __init__(
        self,
        channels: int = 768,
        clusters: int = 64,
        cluster_dim: int = 128,
        token_dim: int = 256,
        hidden: int = 512,
        dropout: float = 0.3,
        iterations: int = 3,
    ):
        super().__init__()
        self.channels, self.clusters, self.cluster_dim, self.token_dim = channels, clusters, cluster_dim, token_dim
        self.iterations = iterations
        drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.token_features = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, token_dim))
        self.cluster_features = nn.Sequential(
            nn.Conv2d(channels, hidden, 1), drop, nn.ReLU(), nn.Conv2d(hidden, cluster_dim, 1)
        )
        self.score = nn.Sequential(nn.Conv2d(channels, hidden, 1), drop, nn.ReLU(), nn.Conv2d(hidden, clusters, 1))
        self.dust_bin = nn.Parameter(torch.tensor(1.0))

    @property
    def out_dim(self) -> int:
        return self.token_dim + self.clusters * self.cluster_dim

    def forward(self, features: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        if features.shape[1] != self.channels or token.shape[-1] != self.channels:
            raise ValueError(
                f"SALAD expects {self.channels} channels, got features {tuple(features.shape)} and "
                f"token {tuple(token.shape)}"
            )
        f = self.cluster_features(features).flatten(2)  # (B, l, n)
        p = assignment(self.score(features).flatten(2), self.dust_bin, self.iterations)[:, :-1]  # (B, m, n)
        agg = torch.einsum("bln,bmn->blm", f, p)  # (B, l, m): each cluster's features weighed by its assignment
        t = F.normalize(self.token_features(token), dim=-1)
        out = torch.cat([t, F.normalize(agg, dim=1).flatten(1)], dim=-1)
        return F.normalize(out, dim=-1)


__all__ = ["SALAD", "assignment", "sinkhorn_log"]
