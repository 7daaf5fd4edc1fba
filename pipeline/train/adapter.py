"""Training the self-supervised adapter (Li et al., ``../shared/papers/cvgl-without-ground-truth.md``, Algorithm 1)
on stored frozen descriptors: no image is read, no label is used (unless ``labels="pairs"``, the supervised row of
the paper's Table VI).

Each iteration t (its Algorithm 1): M photo descriptors drawn at random (a function of (seed, t): a resumed run
draws what the uninterrupted one drew); their adapted descriptors Z_Q and the references' Z_R; the E-step labels
each photo with its most similar reference (Eq. 5); the M-step descends the symmetric InfoNCE (Eq. 6, both ways)
plus, with AIC, the reconstruction loss of both sides (Eq. 8) for the adapter, and the reconstruction loss alone
for the reverter.

References at scale. With ``references_per_step`` 0 (or at least N) every reference enters every iteration, as
Algorithm 1 writes it. Above that, the E-step still searches all N references (streamed in chunks without
gradients: the pseudo-label is Eq. 5's arg-max over the whole database), and the M-step's InfoNCE runs over the
photos' pseudo-positives plus ``references_per_step`` references drawn at random: the softmax of M x N logits with
their gradients (8 GB at M = 700 and N = 1M in float32, three times that to train) does not fit, the exact
labels do. The database is held once, in float16 (1M x 768 values: 1.5 GB).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from manifests.files import atomic_output

from ..model.adapter import Adapter, AdapterConfig, Reverter
from ..progress import progress

log = logging.getLogger(__name__)

STATE = "adapter-state.pt"
METRICS_SCHEMA = pa.schema(
    [
        ("step", pa.int64()),
        ("loss", pa.float64()),
        ("loss_em", pa.float64()),
        ("loss_re", pa.float64()),
        ("label_similarity", pa.float64()),
        ("labels_kept", pa.float64()),
        ("references", pa.int64()),
        ("seconds", pa.float64()),
    ]
)
"""One row per iteration: the losses (L_EM both ways, L_re both sides), the pseudo-labels' mean cosine similarity,
the share of the sampled photos whose label is the one they had when last drawn (NaN at a first draw), the
references in the M-step and the iteration's wall time (the one column a resumed run does not reproduce)."""


# -- the paper's equations ----------------------------------------------------------------------------------------


def pseudo_labels(zq: torch.Tensor, zr: torch.Tensor) -> torch.Tensor:
    """Eq. 5, the E-step: (M, d) adapted photos, (N, d) adapted references -> (M,) the index of each photo's most
    similar reference (inner product; the one-hot rows s_i of Eq. 5 as indices)."""
    return (zq @ zr.T).argmax(dim=1)


def em_loss(za: torch.Tensor, zb: torch.Tensor, s: torch.Tensor, tau: float) -> torch.Tensor:
    """Eq. 6, L_EM(Z_a, Z_b, s): -1/M sum_i log( sum_j s_ij exp(z_i . z_j / tau) / sum_j exp(z_i . z_j / tau) ),
    ``za`` (M, d), ``zb`` (N, d), ``s`` (M, N) of 0 and 1, ``tau`` the temperature.

    A row of ``s`` without a 1 has no defined term (log 0); such rows are left out and the mean is over the
    others. That happens in L_EM(Z_R, Z_Q, s^T), the second half of Algorithm 1's loss: a reference that no
    sampled photo chose has no positive."""
    logits = za @ zb.T / tau
    has = s.sum(dim=1) > 0
    if not bool(has.any()):
        return logits.sum() * 0.0
    pos = torch.logsumexp(logits.masked_fill(s <= 0, float("-inf")), dim=1)
    terms = torch.logsumexp(logits, dim=1) - pos
    return terms[has].mean()


def reconstruction_loss(x: torch.Tensor, x_hat: torch.Tensor, mean: bool = False) -> torch.Tensor:
    """Eq. 8, L_re(X, X^) = sum_i ||x_i - x^_i||_2^2 over the set: ``x``, ``x_hat`` (n, d0); ``mean``: divided
    by n."""
    err = ((x - x_hat) ** 2).sum()
    return err / len(x) if mean else err


def one_hot(labels: torch.Tensor, n: int) -> torch.Tensor:
    """(M,) indices -> s (M, n) with s[i, labels[i]] = 1."""
    s = torch.zeros(len(labels), n)
    s[torch.arange(len(labels)), labels] = 1.0
    return s


@torch.no_grad()
def streamed_labels(
    adapter: Adapter, zq: torch.Tensor, references: np.ndarray, chunk: int = 65536
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 5 over a database too large to adapt at once: ``references`` (N, d0) float16, adapted ``chunk`` rows
    at a time. Returns ((M,) indices, (M,) their similarities)."""
    best = torch.full((len(zq),), -2.0)
    arg = torch.zeros(len(zq), dtype=torch.long)
    for start in range(0, len(references), chunk):
        zr = adapter(torch.from_numpy(np.asarray(references[start : start + chunk], dtype=np.float32)))
        sim, j = (zq @ zr.T).max(dim=1)
        better = sim > best
        best[better], arg[better] = sim[better], j[better] + start
    return arg, best


# -- the loop -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdapterRun:
    """One adapter training's numbers (the stage's settings, resolved)."""

    steps: int
    photos_per_step: int
    references_per_step: int
    lr: float
    tau: float
    out_dim: int
    residual: bool
    aic: bool
    aic_weight: float
    labels: str
    seed: int
    checkpoint_every: int
    aic_mean: bool = False


@dataclass
class AdapterData:
    """What an adapter trains on: ``photos`` (P, d0) and ``references`` (N, d0) frozen descriptors (float16 or
    float32, unit length), and for ``labels="pairs"`` each photo's positive reference rows, also grouped by window
    (``positive_windows[p]``: one array of rows per paired window, its stored rotations)."""

    photos: np.ndarray
    references: np.ndarray
    positives: list[np.ndarray] | None = None
    positive_windows: list[list[np.ndarray]] | None = None


class AdapterTrainer:
    """Algorithm 1 for ``run.steps`` iterations; the resumable state and the metrics log in ``work``."""

    def __init__(self, run: AdapterRun, data: AdapterData, work: Path, record: dict | None = None):
        self.r, self.data, self.work, self.record = run, data, Path(work), record or {}

    def build(self) -> tuple[Adapter, Reverter]:
        d0 = self.data.photos.shape[1]
        config = AdapterConfig(d0, d0 if self.r.residual else self.r.out_dim, self.r.residual)
        with torch.random.fork_rng():
            torch.manual_seed(self.r.seed)
            return Adapter(config), Reverter(config)

    def run(self) -> tuple[Adapter, list[dict]]:
        r, d = self.r, self.data
        adapter, reverter = self.build()
        opt = torch.optim.Adam([*adapter.parameters(), *reverter.parameters()], lr=r.lr)
        step, metrics, last = self._load(adapter, reverter, opt)
        n_ref = len(d.references)
        full = r.references_per_step <= 0 or r.references_per_step >= n_ref
        refs_all = torch.from_numpy(np.asarray(d.references, dtype=np.float32)) if full else None
        bar = progress(total=r.steps, desc="adapter", unit="it")
        bar.update(step)
        while step < r.steps:
            t0 = time.perf_counter()
            rng = np.random.default_rng([r.seed, step])
            m = min(r.photos_per_step, len(d.photos))
            rows = np.sort(rng.choice(len(d.photos), m, replace=False))
            xq = torch.from_numpy(np.asarray(d.photos[rows], dtype=np.float32))
            yq = adapter.project(xq)
            zq = F.normalize(yq, dim=-1)
            if full:
                xr = refs_all
                yr = adapter.project(xr)
                zr = F.normalize(yr, dim=-1)
                if r.labels == "em":
                    with torch.no_grad():
                        labels = pseudo_labels(zq, zr)
                    s = one_hot(labels, n_ref)
            else:
                if r.labels == "em":
                    labels, _ = streamed_labels(adapter, zq.detach(), d.references)
                    wanted = labels.numpy()
                else:
                    wanted = np.concatenate([d.positives[i] for i in rows])
                drawn = rng.choice(n_ref, min(r.references_per_step, n_ref), replace=False)
                cols = np.unique(np.concatenate([wanted, drawn]))
                xr = torch.from_numpy(np.asarray(d.references[cols], dtype=np.float32))
                yr = adapter.project(xr)
                zr = F.normalize(yr, dim=-1)
                if r.labels == "em":
                    labels = torch.from_numpy(np.searchsorted(cols, wanted))
                    s = one_hot(labels, len(cols))
            if r.labels == "pairs":
                s = torch.zeros(m, len(xr))
                where = np.arange(n_ref) if full else cols
                for i, row in enumerate(rows):
                    s[i, np.searchsorted(where, d.positives[row])] = 1.0
                labels = s.argmax(dim=1)
            loss_em = em_loss(zq, zr, s, r.tau) + em_loss(zr, zq, s.T, r.tau)
            loss_re = zq.new_zeros(())
            if r.aic:  # Eq. 8 on both sides; the reverter is only in it, so it descends C alone
                loss_re = reconstruction_loss(xq, reverter(yq), r.aic_mean) + reconstruction_loss(
                    xr, reverter(yr), r.aic_mean
                )
            loss = loss_em + r.aic_weight * loss_re
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                sim = (zq * zr[labels]).sum(dim=1).mean().item()
            ids = labels.numpy() if full else cols[labels.numpy()]
            kept = [last[int(p)] == int(j) for p, j in zip(rows, ids) if int(p) in last]
            last.update({int(p): int(j) for p, j in zip(rows, ids)})
            step += 1
            metrics.append(
                {
                    "step": step,
                    "loss": loss.item(),
                    "loss_em": loss_em.item(),
                    "loss_re": loss_re.item(),
                    "label_similarity": sim,
                    "labels_kept": float(np.mean(kept)) if kept else float("nan"),
                    "references": len(xr),
                    "seconds": time.perf_counter() - t0,
                }
            )
            bar.update(1)
            bar.set_postfix(em=f"{loss_em.item():.3f}", re=f"{loss_re.item():.3f}", refresh=False)
            if step % r.checkpoint_every == 0 or step == r.steps:
                self._save(step, adapter, reverter, opt, metrics, last)
        bar.close()
        return adapter.eval(), metrics

    # -- resumable state --------------------------------------------------------------------------------------
    def _save(self, step, adapter, reverter, opt, metrics, last) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        blob = {
            "step": int(step),
            "adapter": adapter.state_dict(),
            "reverter": reverter.state_dict(),
            "optimizer": opt.state_dict(),
            "last_labels": torch.tensor(sorted(last.items()), dtype=torch.long).reshape(-1, 2),
            "settings": self.record,
        }
        with atomic_output(self.work / STATE) as tmp:
            torch.save(blob, tmp)
        write_metrics(self.work / "metrics.parquet", metrics)

    def _load(self, adapter, reverter, opt) -> tuple[int, list[dict], dict[int, int]]:
        path = self.work / STATE
        if not path.is_file():
            return 0, [], {}
        blob = torch.load(path, map_location="cpu", weights_only=True)
        adapter.load_state_dict(blob["adapter"])
        reverter.load_state_dict(blob["reverter"])
        opt.load_state_dict(blob["optimizer"])
        step = int(blob["step"])
        metrics = [m for m in read_metrics(self.work / "metrics.parquet") if m["step"] <= step]
        last = {int(p): int(j) for p, j in blob["last_labels"].tolist()}
        log.info("resuming at iteration %d of %d from %s", step, self.r.steps, path)
        return step, metrics, last


def write_metrics(path: Path, rows: list[dict]) -> None:
    """The adapter's metrics log, atomically (Parquet, :data:`METRICS_SCHEMA`)."""
    with atomic_output(path) as tmp:
        pq.write_table(pa.Table.from_pylist(rows, schema=METRICS_SCHEMA), tmp)


def read_metrics(path: Path) -> list[dict]:
    if not Path(path).is_file():
        return []
    return pq.read_table(path).cast(METRICS_SCHEMA).to_pylist()


__all__ = [
    "METRICS_SCHEMA",
    "AdapterData",
    "AdapterRun",
    "AdapterTrainer",
    "em_loss",
    "one_hot",
    "pseudo_labels",
    "read_metrics",
    "reconstruction_loss",
    "streamed_labels",
    "write_metrics",
]
