"""AstroLoc's training loop: pairs and MUM quadruplets, Adam, mining, validation, resumable checkpoints, one process
or many (torchrun, DistributedDataParallel).

Determinism is by construction: each step's batch (:class:`~pipeline.train.sampler.PairSchedule`,
:func:`~pipeline.train.mining.quad_windows`), its augmentation (seeded per image slot) and its dropout (seeded per
step and process) are functions of (seed, step) and the clusters, so the resumable state is the model, the
optimizer, the step, the clusters, the best validation so far and, with ``average_from``, the weights' mean; a run
stopped at a checkpoint and resumed ends with the weights and the metrics log of an uninterrupted one.

Data parallelism: under ``torchrun --nproc-per-node N`` each process reads a contiguous 1/N of the batch's pairs and
quadruplets, the processes' descriptors are gathered (``torch.distributed.all_gather``, the process's own share
keeping its gradient) so every process computes the loss of the whole batch, as one process would; the loss is
scaled by N because DistributedDataParallel averages the processes' gradients, and each process's gradient holds
only its share's terms. The sum is the one-process gradient.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.distributed as dist
from torch.optim.swa_utils import AveragedModel

from manifests.files import atomic_output

from ..descriptors import autocast_dtype
from ..evaluate import first_positive_ranks, knn, recalls
from ..model.checkpoint import build_model, load_checkpoint, save_checkpoint
from ..model.retrieval import CONFIGS
from ..progress import leave_out, progress
from .data import Augmentation, StepPlan, TrainImages, default_render_px, split_slots
from .losses import mum_loss, pair_loss
from .mining import Clusters, quad_windows
from .sampler import PairSchedule
from .settings import TrainSettings

log = logging.getLogger(__name__)

STATE = "state.pt"
"""The resumable state, in the run's work folder."""
METRICS_SCHEMA = pa.schema(
    [
        ("step", pa.int64()),
        ("kind", pa.string()),  # train, mining or validation
        ("loss", pa.float64()),
        ("pair_pos", pa.float64()),
        ("pair_neg", pa.float64()),
        ("mum", pa.float64()),
        # what the pair loss sees in its batch, measured per pair (no gradient): the mean cosine of a photo and its
        # own window, the mean over photos of the cosine of the most similar other window of the batch, and the
        # share of photos whose own window is the most similar of the batch's windows
        ("pos_cos", pa.float64()),
        ("neg_cos", pa.float64()),
        ("batch_r1", pa.float64()),
        ("lr", pa.float64()),
        ("recall_1", pa.float64()),
        ("recall_5", pa.float64()),
        ("recall_10", pa.float64()),
        ("images", pa.int64()),
        ("seconds", pa.float64()),  # wall time of the step (or the mining, the validation): not reproducible
    ]
)
TIMING_COLUMNS = ("seconds",)


@dataclass
class TrainingSet:
    """What a run trains on, in memory: the pairs (photo path, window tile_id, the window's turn to the photo, the
    pair's ground for the batch sampler), the windows the MUM loss may draw (tile_ids and their boxes in the Mercator
    unit square), the training photos (paths: they weigh the clusters), and the validation set."""

    tiles: str
    size_tiles: int
    pair_photos: list[str]
    pair_windows: list[str]
    pair_turns: np.ndarray
    grounds: np.ndarray
    mum_windows: list[str]
    mum_boxes: np.ndarray
    photos: list[str]
    val_photos: list[str] = field(default_factory=list)
    val_positives: list[set[str]] = field(default_factory=list)
    val_windows: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Processes:
    """This process's place in a data-parallel run (torchrun's environment), or the one process of a plain run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Processes:
        return cls(
            int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))
        )

    @property
    def main(self) -> bool:
        return self.rank == 0

    def start(self, device: str) -> None:
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")

    def gather(self, local: torch.Tensor) -> torch.Tensor:
        """The processes' ``local`` tensors (n, ...) concatenated in rank order (N n, ...); this process's share keeps
        its gradient, the others' are values."""
        if self.world == 1:
            return local
        parts = [torch.empty_like(local) for _ in range(self.world)]
        dist.all_gather(parts, local.detach().contiguous())
        parts[self.rank] = local
        return torch.cat(parts)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def stop(self) -> None:
        """Wait for every process, then leave the process group."""
        if self.world > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def train_device(device: str, procs: Processes) -> str:
    """auto: this process's GPU (LOCAL_RANK) when CUDA is there, else the CPU."""
    if device == "auto":
        return f"cuda:{procs.local_rank}" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and procs.world > 1:
        return f"cuda:{procs.local_rank}"
    return device


def start_model(s: TrainSettings):
    """The model training starts from: a configuration (its backbone's weights, the rest from seed 0) or a
    checkpoint."""
    if s.model in CONFIGS:
        return build_model(s.model, s.backbone_weights, seed=0)
    return load_checkpoint(s.model)[0]


@torch.no_grad()
def embed(model, images: Sequence[torch.Tensor], device: str, half: bool, batch: int = 32) -> np.ndarray:
    """Descriptors (N, D) float32 of images (3, S, S) in [0, 1], the model in evaluation mode."""
    dtype = autocast_dtype(device, half)
    kind = "cuda" if device.startswith("cuda") else "cpu"
    was = model.training
    model.eval()
    out = []
    for i in range(0, len(images), batch):
        x = torch.stack([im.float() for im in images[i : i + batch]]).to(device)
        with torch.autocast(kind, dtype=dtype or torch.float32, enabled=dtype is not None):
            out.append(model(x).float().cpu().numpy())
    model.train(was)
    return np.concatenate(out) if out else np.zeros((0, model.config.out_dim), np.float32)


def trained_state(model) -> dict[str, torch.Tensor]:
    """The parameters training changes (those that require gradients), by name: what a resumable state keeps of the
    model (the frozen blocks are the start model's: the paper model trains 4 of ViT-B/14's 12 blocks)."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def averaged(average: AveragedModel | None, model):
    """The model to validate and to save: the mean of the weights once it holds a step, else the model itself."""
    return average.module if average is not None and int(average.n_averaged) > 0 else model


def average_state(average: AveragedModel | None) -> dict | None:
    """What a resumable state keeps of the weights' mean: the steps it holds and its trainable weights (its copy
    of the model has the model's trainable parameters)."""
    if average is None:
        return None
    return {"steps": int(average.n_averaged), "weights": trained_state(average.module)}


def load_average(average: AveragedModel, saved: dict | None) -> None:
    """Restore a mean saved by :func:`average_state` (none saved: the mean holds no step yet)."""
    if not saved or not saved["steps"]:
        return
    _, unexpected = average.module.load_state_dict(saved["weights"], strict=False)
    if unexpected:
        raise ValueError(f"the saved mean of the weights has weights this model lacks: {unexpected[:3]}")
    average.n_averaged.fill_(saved["steps"])


def param_groups(model, lr: float, backbone_lr: float | None = None) -> list[dict]:
    """Adam's parameter groups: the backbone's trainable blocks at ``backbone_lr`` (default ``lr``; 0 freezes them),
    SALAD and the linear layer at ``lr``."""
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("backbone.")]
    if backbone_lr == 0:
        for p in backbone:
            p.requires_grad_(False)
        return [{"params": rest, "lr": lr}]
    return [{"params": backbone, "lr": lr if backbone_lr is None else backbone_lr}, {"params": rest, "lr": lr}]


class Trainer:
    """One run: ``Trainer(settings, data, out, work).run()``. ``settings`` are resolved (the recipe applied), ``out``
    the final checkpoint (metrics.parquet and, with validation, best.pt beside it; with ``average_from`` it is the
    weights' mean and last.pt the last step's weights), ``work`` the folder of the resumable state."""

    def __init__(self, s: TrainSettings, data: TrainingSet, out: Path, work: Path, record: dict | None = None):
        self.s, self.data, self.out, self.work = s, data, Path(out), Path(work)
        self.record = record or s.identity()
        self.procs = Processes.from_env()
        self.device = train_device(s.device, self.procs)
        self.b = s.pair_batch if s.lambda1 > 0 else 0
        self.h = s.quad_batch if s.lambda2 > 0 else 0
        for name, n in (("pair_batch", self.b), ("quad_batch", self.h)):
            if n % self.procs.world:
                raise ValueError(f"{name} {n} is not divisible by the {self.procs.world} processes of this run")

    # -- the pieces ---------------------------------------------------------------------------------------------
    def _images(self, side: int) -> TrainImages:
        s = self.s
        render = s.render_px or default_render_px(side)
        cache = s.image_cache or None
        how = Augmentation(s.rotate, s.perspective, s.zoom, s.colour) if s.augment else None
        return TrainImages(
            self.data.tiles, self.data.size_tiles, side, render, seed=s.seed, augmentation=how, cache_dir=cache
        )

    def _plan(self, step: int, schedule: PairSchedule | None, clusters: Clusters | None) -> StepPlan:
        d, s, p = self.data, self.s, self.procs
        pairs = schedule.batch(step) if schedule is not None else np.zeros(0, np.int64)
        quads = quad_windows(step, self.h, d.mum_boxes, s.mining, clusters, s.seed) if self.h else np.zeros(0, int)
        ps, qs = split_slots(self.b, p.rank, p.world), split_slots(self.h, p.rank, p.world)
        return StepPlan(
            step,
            pairs=tuple((d.pair_photos[i], d.pair_windows[i], int(d.pair_turns[i])) for i in pairs[ps.start : ps.stop]),
            pair_slots=tuple(ps),
            quads=tuple(d.mum_windows[j] for j in quads[qs.start : qs.stop]),
            quad_slots=tuple(qs),
        )

    def _mine(self, model, images: TrainImages, step: int) -> tuple[Clusters, float]:
        t0 = time.perf_counter()
        state = None
        if self.procs.main:
            d = self.data
            wd = embed(model, [images.window(t) for t in d.mum_windows], self.device, self.s.half)
            pd_ = embed(model, [images.photo(p) for p in d.photos], self.device, self.s.half)
            state = Clusters.compute(wd, pd_, self.s.clusters, self.s.seed, step).state()
        if self.procs.world > 1:
            box = [state]
            dist.broadcast_object_list(box, src=0)
            state = box[0]
        return Clusters.from_state(state), time.perf_counter() - t0

    def _validate(self, model, images: TrainImages) -> dict[int, float]:
        """recall@1/5/10 of the validation photos against the validation windows at four rotations, by `run eval`'s
        rules (the windows rendered as for training: within a few grey levels of the full-resolution ones `run
        describe` reads; `run eval` on a described region is the measure to report)."""
        d = self.data
        windows = [images.window(t) for t in d.val_windows]
        entries = [torch.rot90(w, k=-r // 90, dims=(1, 2)) for w in windows for r in (0, 90, 180, 270)]
        ids = np.repeat(np.asarray(d.val_windows, dtype=object), 4)
        db = embed(model, entries, self.device, self.s.half)
        q = embed(model, [images.photo(p) for p in d.val_photos], self.device, self.s.half)
        _, rows = knn(db, q, 10)
        return recalls(first_positive_ranks(rows, ids, d.val_positives), (1, 5, 10))

    def _save_state(self, step, model, opt, scaler, clusters, best, metrics, average=None) -> None:
        blob = {
            "step": int(step),
            "model": trained_state(model),  # the frozen rest is the start model's, rebuilt on resume
            "average": average_state(average),
            "optimizer": opt.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "clusters": clusters.state() if clusters is not None else None,
            "best": dict(best),
            "torch_rng": torch.get_rng_state(),
            "settings": self.record,
        }
        with atomic_output(self.work / STATE) as tmp:
            torch.save(blob, tmp)
        write_metrics(self.work / "metrics.parquet", metrics)

    def _load_state(self, model, opt, scaler):
        path = self.work / STATE
        if not path.is_file():
            return 0, None, {"recall_1": -1.0, "step": -1}, [], None
        blob = torch.load(path, map_location="cpu", weights_only=True)
        missing, unexpected = model.load_state_dict(blob["model"], strict=False)
        if unexpected or set(trained_state(model)) - set(blob["model"]):
            raise ValueError(f"{path}: its weights are not this run's trainable ones; pass --overwrite to start again")
        opt.load_state_dict(blob["optimizer"])
        if scaler is not None and blob.get("scaler"):
            scaler.load_state_dict(blob["scaler"])
        step = int(blob["step"])
        clusters = Clusters.from_state(blob["clusters"]) if blob.get("clusters") else None
        metrics = read_metrics(self.work / "metrics.parquet")
        metrics = [m for m in metrics if m["step"] <= step]
        log.info("resuming at step %d of %d from %s", step, self.s.steps, path)
        return step, clusters, blob["best"], metrics, blob.get("average")

    # -- the run --------------------------------------------------------------------------------------------------
    def run(self) -> dict:
        s, d, procs = self.s, self.data, self.procs
        procs.start(self.device)
        self.work.mkdir(parents=True, exist_ok=True)
        model = start_model(s).to(self.device)
        model.train()
        opt = torch.optim.Adam(param_groups(model, s.lr, s.backbone_lr))
        cuda = self.device.startswith("cuda")
        dtype = autocast_dtype(self.device, s.half)
        scaler = torch.amp.GradScaler("cuda") if cuda and dtype == torch.float16 else None
        step, clusters, best, metrics, saved_average = self._load_state(model, opt, scaler)
        average = None
        if s.average_from:
            average = AveragedModel(model)  # PyTorch's running uniform mean of the weights (SWA)
            load_average(average, saved_average)
        net = model
        if procs.world > 1:
            net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[self.device] if cuda else None)
        schedule = PairSchedule(d.grounds, self.b, s.seed) if self.b else None
        side = model.config.image_px
        loader_images, main_images = self._images(side), self._images(side)
        mining = self.h > 0 and s.mining != "random"
        bar = progress(total=s.steps, desc="train", unit="step", disable=None if procs.main else True)
        bar.update(step)
        t_start = time.perf_counter()
        images_done = 0
        while step < s.steps:
            if mining and step % s.mining_every == 0 and (clusters is None or clusters.step != step):
                clusters, secs = self._mine(model, main_images, step)
                leave_out(bar, secs)
                metrics.append(row(step, "mining", images=len(d.mum_windows) + len(d.photos), seconds=secs))
            end = s.steps
            if mining:
                end = min(end, (step // s.mining_every + 1) * s.mining_every)
            plans = [self._plan(t, schedule, clusters) for t in range(step, end)]
            loader = torch.utils.data.DataLoader(
                loader_images,
                batch_size=None,
                sampler=plans,
                num_workers=s.loader_workers,
                prefetch_factor=2 if s.loader_workers else None,
            )
            t_step = time.perf_counter()
            for batch in loader:
                torch.manual_seed(s.seed * 1_000_003 + step * 1009 + procs.rank)  # dropout: a function of the step
                terms = self._step(net, opt, scaler, batch, dtype)
                step += 1
                if average is not None and step >= s.average_from:
                    average.update_parameters(model)
                n = (2 * self.b + 4 * self.h) // procs.world * procs.world
                images_done += n
                now = time.perf_counter()
                metrics.append(row(step, "train", lr=s.lr, images=n, seconds=now - t_step, **terms))
                t_step = now
                bar.update(1)
                bar.set_postfix({k: f"{v:.3f}" for k, v in terms.items() if not math.isnan(v)}, refresh=False)
                if d.val_photos and (step % s.validate_every == 0 or step == s.steps):
                    t0 = time.perf_counter()
                    if procs.main:
                        judged = averaged(average, model)
                        r = self._validate(judged, main_images)
                        metrics.append(
                            row(
                                step,
                                "validation",
                                seconds=time.perf_counter() - t0,
                                **{f"recall_{k}": v for k, v in r.items()},
                            )
                        )
                        log.info("step %d: validation recall@1 %.3f @5 %.3f @10 %.3f", step, r[1], r[5], r[10])
                        if r[1] > best["recall_1"]:
                            best = {"recall_1": r[1], "step": step}
                            save_checkpoint(self.out.with_name("best.pt"), judged, step, training=self.record)
                    procs.barrier()
                    t_step = time.perf_counter()
                    leave_out(bar, t_step - t0)
                if procs.main and (step % s.checkpoint_every == 0 or step == s.steps):
                    self._save_state(step, model, opt, scaler, clusters, best, metrics, average)
        bar.close()
        wall = time.perf_counter() - t_start
        if procs.main:
            mean, extra = averaged(average, model), {}
            if mean is not model:
                save_checkpoint(self.out.with_name("last.pt"), model, step, training=self.record)
                extra["averaged"] = {"from": s.average_from, "steps": int(average.n_averaged)}
            save_checkpoint(self.out, mean, step, training=self.record, best=dict(best), **extra)
            write_metrics(self.out.with_name("metrics.parquet"), metrics)
        procs.stop()
        train_rows = [m for m in metrics if m["kind"] == "train"]
        return {
            "steps": step,
            "images_per_s": images_done / wall if wall > 0 and images_done else float("nan"),
            "wall_s": wall,
            "last_loss": train_rows[-1]["loss"] if train_rows else float("nan"),
            "best": best,
            "validation": [m for m in metrics if m["kind"] == "validation"],
        }

    def _step(self, net, opt, scaler, batch: dict, dtype) -> dict[str, float]:
        s, procs = self.s, self.procs
        b, h = len(batch["photos"]), len(batch["quads"])
        x = torch.cat([batch["photos"], batch["windows"], batch["quads"].flatten(0, 1)]).to(self.device)
        kind = "cuda" if self.device.startswith("cuda") else "cpu"
        with torch.autocast(kind, dtype=dtype or torch.float32, enabled=dtype is not None):
            desc = net(x)
        desc = desc.float()
        q, dd, quads = desc[:b], desc[b : 2 * b], desc[2 * b :].reshape(h, 4, desc.shape[1])
        nan = float("nan")
        loss = desc.new_zeros(())
        pos = neg = mum = None
        seen = {}
        if self.b:
            qg, dg = procs.gather(q), procs.gather(dd)
            pos, neg = pair_loss(qg, dg, s.alpha1, s.beta1)
            loss = loss + s.lambda1 * (pos + neg)
            seen = batch_similarities(qg.detach(), dg.detach())
        if self.h:
            mum = mum_loss(procs.gather(quads), s.alpha2, s.beta2)
            loss = loss + s.lambda2 * mum
        scaled = loss * procs.world  # DDP averages; each process's gradient holds its own share's terms
        if scaler is not None:
            scaler.scale(scaled).backward()
            scaler.step(opt)
            scaler.update()
        else:
            scaled.backward()
            opt.step()
        opt.zero_grad(set_to_none=True)
        return {
            "loss": loss.item(),
            "pair_pos": pos.item() if pos is not None else nan,
            "pair_neg": neg.item() if neg is not None else nan,
            "mum": mum.item() if mum is not None else nan,
            **seen,
        }


def batch_similarities(q: torch.Tensor, d: torch.Tensor) -> dict[str, float]:
    """For B pairs of unit descriptors, photos ``q`` (B, D) and their windows ``d`` (B, D): ``pos_cos`` the mean
    cosine of a photo and its window, ``neg_cos`` the mean over photos of the largest cosine with another pair's
    window, ``batch_r1`` the share of photos whose own window is the nearest of the B (ties count against)."""
    s = (q @ d.T).float()
    b = s.shape[0]
    own = s.diagonal()
    if b < 2:
        return {"pos_cos": own.mean().item()}
    other = s.masked_fill(torch.eye(b, dtype=torch.bool, device=s.device), float("-inf")).max(dim=1).values
    return {
        "pos_cos": own.mean().item(),
        "neg_cos": other.mean().item(),
        "batch_r1": (own > other).float().mean().item(),
    }


def row(step: int, kind: str, **values) -> dict:
    """A metrics row: every column of :data:`METRICS_SCHEMA`, NaN (or 0) where ``values`` says nothing."""
    out = {"step": int(step), "kind": kind}
    for f in METRICS_SCHEMA:
        if f.name not in out:
            out[f.name] = values.get(f.name, 0 if pa.types.is_integer(f.type) else float("nan"))
    return out


def write_metrics(path: Path, rows: list[dict]) -> None:
    """The metrics log, atomically (Parquet, :data:`METRICS_SCHEMA`)."""
    table = pa.Table.from_pylist(rows, schema=METRICS_SCHEMA)
    with atomic_output(path) as tmp:
        pq.write_table(table, tmp)


def read_metrics(path: Path) -> list[dict]:
    """The rows of a metrics log; columns a log written before they existed (pos_cos, neg_cos, batch_r1) come back
    as NaN, so a run started on an older version resumes."""
    if not Path(path).is_file():
        return []
    table = pq.read_table(path)
    for f in METRICS_SCHEMA:
        if f.name not in table.column_names:  # filled as row() fills what a row does not say
            table = table.append_column(f.name, pa.array([row(0, "")[f.name]] * len(table), f.type))
    return table.select(METRICS_SCHEMA.names).cast(METRICS_SCHEMA).to_pylist()


__all__ = [
    "METRICS_SCHEMA",
    "TIMING_COLUMNS",
    "Processes",
    "Trainer",
    "TrainingSet",
    "batch_similarities",
    "embed",
    "read_metrics",
    "row",
]
