"""The pair loss on the frozen blocks' tokens, computed once: many epochs in the time `run train` takes for one.

A diagnostic of the trainer's plateau (bench/RESULTS.md, 2026-12-07 third session), not a way to train: the cpu
model's frozen blocks (all but the last ``--trainable``) give the same tokens for an image at every step when
nothing augments it, so this script computes them once per training photo, training window (at its pair's quarter
turn) and validation image, keeps them in float16 under ``--tokens``, and trains the last blocks, SALAD and the
linear layer on them with the pair loss (Eq. 1-5, ``pipeline.train.losses.pair_loss``) and the trainer's batch
sampler. No augmentation, no resume, MUM only when asked (below). Every ``--eval-every`` steps it prints the
batches' measured similarities (as the trainer's metrics) and recall@1/5/10 of the validation region's photos against
its windows of zoom <= ``--max-zoom`` at four rotations (the trainer's validation rules), and saves the model as
a checkpoint `run describe --model` reads. On a procedural world it also prints recall@10 by the photo's year
(truth.parquet's ``world_year``; year 0 is the database's season) and the season test: the validation windows
rendered in years 1-3 found among year 0's windows (recall@1 of the same window).

``--lambda2 W`` adds the MUM loss (Eq. 9, ``pipeline.train.losses.mum_loss``) with weight W: each step draws
``--quad-batch`` windows that do not overlap among ``--mum-windows`` training windows of zooms 9-11 (solution 1,
``mining.quad_windows`` with ``random``), each a quadruplet of its four years' tokens, computed once like the rest;
``--lambda1 0`` leaves the pair loss out (MUM alone: no photo trains).

``--compare CKPT ...`` trains nothing: on the same validation tokens it compares each saved checkpoint with the
untrained model query by query (the queries each finds within 1 and 10 that the other does not, and McNemar's
exact two-sided test on them: is the difference more than the validation set's chance?).

    python bench/train_frozen_tokens.py --workdir L --exclude L/regions.geojson#eval --validation BOX.geojson \
        --out T --steps 750 --lr 1e-5 [--iou 0.4] [--subset 256] [--rendered-only]
    python bench/train_frozen_tokens.py --workdir L --exclude L/regions.geojson#eval --validation BOX.geojson \
        --tokens T/../tokens --rendered-only --compare T/model-250.pt T/model-500.pt
    python bench/train_frozen_tokens.py ... --out T --lambda1 0 --lambda2 1 --quad-batch 16

``--rendered-only`` keeps the pairs whose window the trainer's image cache (``WORKDIR/train/cache``) already holds:
rendering a window of the large sample takes about 0.1 s on 2 cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from math import comb
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.descriptors import autocast_dtype  # noqa: E402
from pipeline.evaluate import first_positive_ranks, knn, recalls  # noqa: E402
from pipeline.geometry.windows import Window  # noqa: E402
from pipeline.model.checkpoint import build_model, load_checkpoint, save_checkpoint  # noqa: E402
from pipeline.model.dinov2 import PATCH  # noqa: E402
from pipeline.model.retrieval import CONFIGS  # noqa: E402
from pipeline.train.data import TrainImages, default_render_px, window_sources  # noqa: E402
from pipeline.train.loop import batch_similarities  # noqa: E402
from pipeline.train.losses import mum_loss, pair_loss  # noqa: E402
from pipeline.train.mining import quad_windows, window_boxes  # noqa: E402
from pipeline.train.sampler import PairSchedule  # noqa: E402
from pipeline.train.settings import TrainSettings  # noqa: E402
from stages.train import TrainStage  # noqa: E402


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", required=True, type=Path)
    ap.add_argument("--exclude", action="append", default=[], help="regions held back (as run train --exclude)")
    ap.add_argument("--validation", required=True, help="the region whose photos and windows measure recall")
    ap.add_argument("--out", type=Path, help="folder for the checkpoints and log.json (needed to train)")
    ap.add_argument("--tokens", type=Path, help="folder of the cached tokens (default OUT/../tokens)")
    ap.add_argument("--max-zoom", type=int, default=11, help="validation windows of this zoom and coarser")
    ap.add_argument("--pair-batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--steps", type=int, default=750)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--trainable", type=int, default=2, help="trained blocks of the ViT-S (the cpu model's 2)")
    ap.add_argument("--alpha1", type=float, default=1.0)
    ap.add_argument("--beta1", type=float, default=50.0)
    ap.add_argument("--iou", type=float, default=0.2, help="train on the pairs at this IoU or more")
    ap.add_argument("--subset", type=int, default=0, help="train on this many pairs drawn at random (0: all)")
    ap.add_argument("--rendered-only", action="store_true", help="only pairs whose window is in the image cache")
    ap.add_argument("--lambda1", type=float, default=1.0, help="weight of the pair loss (0: MUM alone)")
    ap.add_argument("--lambda2", type=float, default=0.0, help="weight of the MUM loss (0: the pair loss alone)")
    ap.add_argument("--quad-batch", type=int, default=8, help="MUM quadruplets per step")
    ap.add_argument("--mum-windows", type=int, default=600, help="training windows (zooms 9-11) MUM draws from")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compare", nargs="+", type=Path, help="checkpoints to compare with the untrained model")
    a = ap.parse_args()
    if a.lambda1 <= 0 and a.lambda2 <= 0:
        ap.error("--lambda1 and --lambda2 cannot both be 0")
    if a.out is None and not a.compare:
        ap.error("--out is needed to train (or give --compare CKPT ...)")
    if a.tokens is None and a.out is None:
        ap.error("--compare needs --tokens: the folder a training run cached its tokens in")
    return a


def mcnemar_p(gained: int, lost: int) -> float:
    """McNemar's exact two-sided p-value: the chance of a split of the discordant queries at least this uneven
    when either model is as likely to find any one of them (binomial, p = 1/2)."""
    n = gained + lost
    return min(1.0, 2 * sum(comb(n, i) for i in range(min(gained, lost) + 1)) / 2**n) if n else 1.0


def main() -> None:
    a = parse()
    tokens_dir = a.tokens or a.out.parent / "tokens"
    stage = TrainStage()
    s = stage.resolve(TrainSettings(exclude=tuple(a.exclude), validation=a.validation, lambda2=0), a.workdir)
    data = stage.training_set(s)  # the pairs at IoU >= 0.2 outside the held-back regions, and the validation set
    cfg = dataclasses.replace(CONFIGS["cpu"], trainable_blocks=a.trainable)
    model = build_model(cfg, None, seed=0)
    bb = model.backbone
    frozen = bb.cfg.depth - bb.trainable_blocks
    side = cfg.image_px
    images = TrainImages(
        data.tiles, data.size_tiles, side, default_render_px(side), augmentation=None,
        cache_dir=str(a.workdir / "train" / "cache"),
    )  # fmt: skip
    dtype = autocast_dtype("cpu", True)

    def autocast():
        return torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None)

    @torch.no_grad()
    def prefix(xs: list[torch.Tensor]) -> torch.Tensor:
        """images (3, S, S) in [0, 1] -> the tokens after the frozen blocks (N, 1 + h w, 384) float16."""
        out = []
        for i in range(0, len(xs), 32):
            with autocast():
                out.append(bb.frozen_part(model.preprocess(torch.stack([x.float() for x in xs[i : i + 32]]))))
        return torch.cat(out).to(torch.float16)

    def describe(t: torch.Tensor, m: torch.nn.Module = model) -> torch.Tensor:
        """tokens (N, 1 + h w, 384) -> descriptors (N, 512), unit vectors: the trained blocks, SALAD, the layer."""
        with autocast():
            d = m.aggregate(*m.backbone.trained_part(t.float(), (side // PATCH, side // PATCH)))
        return d.float()

    def cached(name: str, keys: list, make) -> torch.Tensor:
        path = tokens_dir / f"{name}-frozen{frozen}.pt"
        if path.is_file():
            blob = torch.load(path)
            if blob["keys"] == keys:
                return blob["tokens"]
        t0, parts = time.perf_counter(), []
        for i in range(0, len(keys), 256):
            parts.append(prefix([make(k) for k in keys[i : i + 256]]))
            done = min(i + 256, len(keys))
            print(f"  tokens of {name}: {done}/{len(keys)} in {time.perf_counter() - t0:.0f} s", flush=True)
        t = torch.cat(parts)
        tokens_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"keys": keys, "tokens": t}, tmp)
        tmp.replace(path)
        return t

    def turned(x: torch.Tensor, turn: int) -> torch.Tensor:
        return torch.rot90(x, k=-int(turn) // 90, dims=(1, 2))  # clockwise, as pipeline.train.data.augment

    if a.rendered_only:
        have = np.array([images._disk_path(t, 0).is_file() for t in data.pair_windows])
        keep = np.flatnonzero(have)
        print(f"pairs whose window is in the image cache: {len(keep)} of {len(have)}", flush=True)
        data.pair_photos = [data.pair_photos[i] for i in keep]
        data.pair_windows = [data.pair_windows[i] for i in keep]
        data.pair_turns, data.grounds = data.pair_turns[keep], data.grounds[keep]
    photos = sorted(set(data.pair_photos))
    wkeys = sorted(set(zip(data.pair_windows, (int(t) for t in data.pair_turns))))
    print(f"{len(data.pair_photos)} pairs, {len(photos)} photos, {len(wkeys)} windows at their turns", flush=True)
    vwin = [t for t in data.val_windows if int(t.split("_")[0]) <= a.max_zoom]
    vkeys = [(t, r) for t in vwin for r in (0, 90, 180, 270)]
    vpos = [set(p) & set(vwin) for p in data.val_positives]
    vq = [i for i, p in enumerate(vpos) if p]
    print(f"validation: {len(vq)} photos with a positive, {len(vwin)} windows x 4 rotations", flush=True)

    val_photos = cached("validation-photos", [data.val_photos[i] for i in vq], images.photo)
    val_windows = cached("validation-windows", vkeys, lambda k: turned(images.window(k[0]), k[1]))
    ids = np.asarray([k[0] for k in vkeys], dtype=object)
    positives = [vpos[i] for i in vq]
    years = len(window_sources(data.tiles))
    truth = a.workdir / "truth.parquet"
    vyear = None
    if years > 1 and truth.is_file():
        wy = pd.read_parquet(truth, columns=["photo_id", "world_year"]).set_index("photo_id")["world_year"]
        vyear = np.array([wy[Path(data.val_photos[i]).stem] for i in vq])
    season = [
        cached(f"validation-windows-year{y}", [(t, y) for t in vwin], lambda k: images.window(*k))
        for y in range(1, years)
    ]  # the validation windows in another season, at rotation 0

    def describe_all(t: torch.Tensor, m: torch.nn.Module) -> np.ndarray:
        return torch.cat([describe(t[i : i + 64], m) for i in range(0, len(t), 64)]).numpy()

    @torch.no_grad()
    def validation_ranks(m: torch.nn.Module = model) -> tuple[np.ndarray, list[float]]:
        """(Q,) the rank of each validation photo's first positive among its 10 nearest windows (-1: none), and the
        season test's recall@1 for years 1, 2, 3 (none for a source of one year)."""
        m.eval()
        db = describe_all(val_windows, m)
        _, rows = knn(db, describe_all(val_photos, m), 10)
        ranks = first_positive_ranks(rows, ids, positives)
        found = []
        for t in season:
            _, rows = knn(db, describe_all(t, m), 1)
            found.append(float(np.mean(ids[rows[:, 0]] == np.asarray(vwin, dtype=object))))
        m.train()
        return ranks, found

    def by_year(ranks: np.ndarray, found: list[float]) -> str:
        """recall@10 by the photo's year and the season test, as a line's tail."""
        line = ""
        if vyear is not None:
            line += " | R@10 by year " + " ".join(f"{np.mean(ranks[vyear == y] >= 0):.2f}" for y in range(years))
        if found:
            line += " | season R@1 (years 1-3) " + " ".join(f"{f:.2f}" for f in found)
        return line

    if a.compare:
        base, found = validation_ranks()
        print(
            f"untrained: R@1 {np.mean(base == 0):.3f} R@10 {np.mean(base >= 0):.3f} ({len(base)} queries)"
            + by_year(base, found)
        )
        for path in a.compare:
            trained = load_checkpoint(path)[0]
            if trained.backbone.trainable_blocks != bb.trainable_blocks:
                raise SystemExit(f"{path}: {trained.backbone.trainable_blocks} trained blocks; give --trainable so")
            (r, found), line = validation_ranks(trained), [str(path)]
            for k in (1, 10):
                was, now = (base >= 0) & (base < k), (r >= 0) & (r < k)
                gained, lost = int(np.sum(now & ~was)), int(np.sum(was & ~now))
                p = mcnemar_p(gained, lost)
                line.append(f"R@{k} {now.mean():.3f} (+{gained} -{lost}, p {f'{p:.3f}' if p >= 0.001 else '< 0.001'})")
            print(" | ".join(line) + by_year(r, found), flush=True)
        return
    a.out.mkdir(parents=True, exist_ok=True)
    train_photos = cached("photos", photos, images.photo)
    train_windows = cached("windows", wkeys, lambda k: turned(images.window(k[0]), k[1]))

    def validate() -> tuple[dict[int, float], str]:
        ranks, found = validation_ranks()
        return recalls(ranks, (1, 5, 10)), by_year(ranks, found)

    pidx = {p: i for i, p in enumerate(photos)}
    widx = {k: i for i, k in enumerate(wkeys)}
    pair_p = np.array([pidx[p] for p in data.pair_photos])
    pair_w = np.array([widx[(w, int(t))] for w, t in zip(data.pair_windows, data.pair_turns)])
    grounds = data.grounds
    pick = np.arange(len(pair_p))
    if a.iou > 0.2:
        pp = pd.read_parquet(a.workdir / "pairs.parquet", columns=["photo_id", "tile_id", "iou"])
        iou = dict(zip(zip(pp["photo_id"], pp["tile_id"]), pp["iou"]))
        v = np.array([iou[(Path(p).stem, t)] for p, t in zip(data.pair_photos, data.pair_windows)])
        pick = np.flatnonzero(v >= a.iou)
    if a.subset:
        pick = np.sort(np.random.default_rng(a.seed).choice(pick, a.subset, replace=False))
    pair_p, pair_w, grounds = pair_p[pick], pair_w[pick], grounds[pick]
    print(f"training on {len(pick)} pairs (IoU >= {a.iou}{f', {a.subset} drawn' if a.subset else ''})", flush=True)

    if a.lambda2 > 0:
        cand = sorted({w for w in data.pair_windows if 9 <= int(w.split("_")[0]) <= 11})
        qwin = [
            cand[i]
            for i in np.random.default_rng(a.seed).choice(len(cand), min(a.mum_windows, len(cand)), replace=False)
        ]
        keys = [(w, y) for w in qwin for y in range(years)]
        quads = cached(f"mum-windows-{a.seed}", keys, lambda k: images.window(*k)).unflatten(0, (len(qwin), years))
        ws = [Window.from_tile_id(w, data.size_tiles) for w in qwin]
        qboxes = window_boxes(*(np.array([getattr(w, k) for w in ws]) for k in ("zoom", "x", "y")), data.size_tiles)
        print(f"MUM: {len(qwin)} windows x {years} years, {a.quad_batch} quadruplets a step", flush=True)
    schedule = PairSchedule(grounds, a.pair_batch, a.seed)
    print(f"epoch 0: {schedule._count(0)} batches of {a.pair_batch} pairs that do not overlap", flush=True)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=a.lr)
    r, extra = validate()
    print(f"step 0: validation R@1 {r[1]:.3f} R@5 {r[5]:.3f} R@10 {r[10]:.3f}{extra}", flush=True)
    log = [{"step": 0, **{f"recall_{k}": v for k, v in r.items()}}]
    model.train()
    busy, seen = 0.0, []
    for step in range(a.steps):
        t0 = time.perf_counter()
        torch.manual_seed(a.seed * 1_000_003 + step)  # dropout
        loss, sims = torch.zeros(()), {}
        if a.lambda1 > 0:
            batch = schedule.batch(step)
            q, d = describe(train_photos[pair_p[batch]]), describe(train_windows[pair_w[batch]])
            pos, neg = pair_loss(q, d, a.alpha1, a.beta1)
            loss, sims = a.lambda1 * (pos + neg), batch_similarities(q.detach(), d.detach())
        if a.lambda2 > 0:
            pick = quad_windows(step, a.quad_batch, qboxes, "random", None, a.seed)
            loss = loss + a.lambda2 * mum_loss(describe(quads[pick].flatten(0, 1)).unflatten(0, (len(pick), years)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen.append({"loss": loss.item(), **sims})
        busy += time.perf_counter() - t0
        if (step + 1) % a.eval_every == 0 or step + 1 == a.steps:
            m = {k: float(np.mean([x[k] for x in seen])) for k in seen[0]}
            seen = []
            r, extra = validate()
            print(
                f"step {step + 1}: {busy:.0f} s of training ({busy / (step + 1):.2f} s/step); means since the last line: "
                + " ".join(f"{k} {v:.3f}" for k, v in m.items())
                + f" | validation R@1 {r[1]:.3f} R@5 {r[5]:.3f} R@10 {r[10]:.3f}{extra}",
                flush=True,
            )
            log.append({"step": step + 1, **m, **{f"recall_{k}": v for k, v in r.items()}})
            save_checkpoint(a.out / f"model-{step + 1}.pt", model, step + 1)
    (a.out / "log.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(a).items()}, "log": log}))


if __name__ == "__main__":
    main()
