"""``run train``: AstroLoc's training (section 4): the pairwise loss on (photo, window) pairs and the MUM loss on
quadruplets of windows mined by k-means, from the pairs manifest.

The stage gathers what the run trains on (:class:`pipeline.train.loop.TrainingSet`): the pairs at IoU >= t_iou,
their photos' paths and footprints, the windows the MUM loss may draw, the validation set; it holds back every
photo and window that touches an ``--exclude`` region or the validation region. The loop
(:class:`pipeline.train.loop.Trainer`) keeps its resumable state in the run's work folder: a stopped run resumes
at its last checkpoint. More than one GPU: ``torchrun --nproc-per-node N -m pipeline run train ...`` (one process
per GPU; only the first writes).
"""

from __future__ import annotations

import logging
import os
import time
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import shapely

from manifests import DATABASE, PAIRS, read_manifest, read_queries
from pipeline.model.retrieval import CONFIGS
from pipeline.train.settings import TrainSettings

from .base import Stage, StageError, StageRun, source_files
from .pairs import CORNERS, check_manifest_path, footprint_polygons, localized_footprints, read_regions

log = logging.getLogger(__name__)


def _region(spec: str):
    path, _, name = spec.partition("#")
    return shapely.union_all(read_regions(path, name))


def _pairs_footprints(pairs: Path) -> str | None:
    """The footprints file the pairs were made from, as the config beside them records it."""
    cfg = pairs.with_name(pairs.name + ".config.toml")
    try:
        with open(cfg, "rb") as f:
            return tomllib.load(f).get("pairs", {}).get("footprints")
    except (OSError, tomllib.TOMLDecodeError):
        return None


class TrainStage(Stage):
    name = "train"
    help = (
        "train the retrieval model on the pairs (AstroLoc's pairwise + MUM losses; torchrun for several GPUs), or "
        "a map on a frozen model's descriptors (--method adapter, whitening)"
    )
    settings_class = TrainSettings

    def primary(self) -> bool:
        return int(os.environ.get("RANK", 0)) == 0

    def resolve(self, s: TrainSettings, workdir: Path) -> TrainSettings:
        s = s.with_recipe()
        if s.method == "whitening":
            s = s.replace(labels="pairs")  # the whitening is learned from the pairs: it has no unlabelled form
        if s.method != "astroloc":
            return s.replace(
                features=str(Path(s.features or workdir / "descriptors" / "index.parquet").resolve()),
                pairs=str(Path(s.pairs or workdir / "pairs.parquet").resolve()) if s.labels == "pairs" else "",
                out=str(Path(s.out or workdir / "train" / f"{s.method}.pt").resolve()),
                model=None,
            )
        pairs = Path(s.pairs or workdir / "pairs.parquet").resolve()
        footprints = s.footprints or _pairs_footprints(pairs) or str(workdir / "footprints.parquet")
        model = s.model if s.model in CONFIGS else str(Path(s.model).resolve())
        return s.replace(
            pairs=str(pairs),
            footprints=str(Path(footprints).resolve()),
            queries=str(Path(s.queries or workdir / "queries.parquet").resolve()),
            database=str(Path(s.database or workdir / "database.parquet").resolve()),
            tiles=str(Path(s.tiles or workdir / "tiles").resolve()),
            out=str(Path(s.out or workdir / "train" / "model.pt").resolve()),
            model=model,
            image_cache=""
            if s.image_cache == "none"
            else str(Path(s.image_cache or workdir / "train" / "cache").resolve()),
            backbone_weights=str(Path(s.backbone_weights).resolve()) if s.backbone_weights else None,
        )

    def output(self, s: TrainSettings) -> Path:
        return Path(s.out)

    def input_files(self, s: TrainSettings) -> list[Path]:
        if s.method != "astroloc":
            files = [Path(s.features), Path(s.features + ".config.toml"), *([Path(s.pairs)] if s.pairs else [])]
            files += [Path(e.partition("#")[0]) for e in s.exclude]
            return [f for f in files if f.is_file()]
        files = [Path(s.pairs), Path(s.footprints), Path(s.queries), Path(s.database), *source_files(s.tiles)]
        files += [Path(e.partition("#")[0]) for e in (*s.exclude, *([s.validation] if s.validation else []))]
        if s.model not in CONFIGS:
            files.append(Path(s.model))
        if s.backbone_weights:
            files.append(Path(s.backbone_weights))
        return [f for f in files if f.is_file()]

    def check(self, run: StageRun) -> None:
        s = run.settings
        if s.method != "astroloc":
            if not Path(s.features).is_file() or not Path(s.features + ".config.toml").is_file():
                raise StageError(
                    f"--features {s.features}: no descriptor store there; make one with the frozen model, e.g. "
                    "`python -m pipeline run describe --model cpu-gem --out W/frozen/index.parquet`"
                )
            if s.pairs:
                check_manifest_path(s.pairs, PAIRS, "pairs")
            if s.validation:
                raise StageError(f"--validation: the {s.method} method validates nothing; leave it")
            return
        check_manifest_path(s.pairs, PAIRS, "pairs")
        check_manifest_path(s.database, DATABASE, "database")
        for key in ("footprints", "queries"):
            if not Path(getattr(s, key)).exists():
                raise StageError(f"--{key} {getattr(s, key)}: not found; pass --{key} FILE")
        if s.model not in CONFIGS and not Path(s.model).is_file():
            raise StageError(f"--model {s.model}: neither a checkpoint file nor a configuration ({', '.join(CONFIGS)})")
        if CONFIGS.get(s.model) is not None and CONFIGS[s.model].aggregation == "gem":
            raise StageError(
                f"--model {s.model}: a frozen backbone with GeM pooling has nothing to train with --method astroloc; "
                "it is the frozen model of --method adapter (describe with it, then pass the store as --features)"
            )
        if CONFIGS.get(s.model) is not None and CONFIGS[s.model].backbone == "official" and not s.backbone_weights:
            raise StageError(
                f"the {s.model} model starts from the official DINOv2 weights: pass --backbone-weights "
                f"dinov2_{CONFIGS[s.model].arch}_pretrain.pth"
            )

    def training_set(self, s: TrainSettings):
        """What the run trains on (see the module's docstring); raises StageError when nothing is left."""
        from pipeline.evaluate import positive_windows
        from pipeline.pairs import Database
        from pipeline.train.data import photo_rotation
        from pipeline.train.loop import TrainingSet
        from pipeline.train.mining import window_boxes

        pairs = read_manifest(s.pairs, PAIRS, columns=["photo_id", "tile_id", "iou"], geometry=False)
        pairs = pairs[pairs["iou"] >= s.iou]
        fp = localized_footprints(s.footprints).set_index("photo_id")
        q, _ = read_queries(s.queries, check_images=False, on_error="collect")
        paths = dict(zip(q["photo_id"].astype(str), q["image_path"]))
        db = read_manifest(s.database, DATABASE, columns=["tile_id", "zoom", "x", "y", "size_tiles", "geometry"])
        sizes = db["size_tiles"].unique()
        if len(sizes) != 1:
            raise StageError(f"{s.database}: windows of several sizes ({sorted(sizes)}); index one size per database")
        db = db.set_index("tile_id", drop=False)
        fp_poly = pd.Series(footprint_polygons(fp), index=fp.index)
        win_poly = pd.Series(db.geometry.to_numpy(), index=db.index)

        held = [_region(e) for e in s.exclude]
        val_area = _region(s.validation) if s.validation else None
        if val_area is not None:
            held.append(val_area)
        photo_out = np.zeros(len(fp), bool)
        window_out = np.zeros(len(db), bool)
        for area in held:
            photo_out |= shapely.intersects(fp_poly.to_numpy(), area)
            window_out |= shapely.intersects(win_poly.to_numpy(), area)
        train_photos = set(fp.index[~photo_out]) & set(paths)
        train_windows = set(db.index[~window_out])
        known = pairs["photo_id"].isin(fp.index) & pairs["tile_id"].isin(db.index)
        kept = pairs[known & pairs["photo_id"].isin(train_photos) & pairs["tile_id"].isin(train_windows)]
        log.info(
            "train: %d pairs at IoU >= %s, %d held back (exclude/validation regions), %d without a footprint, "
            "photo or window",
            len(pairs),
            s.iou,
            int(known.sum()) - len(kept),
            int((~known).sum()),
        )
        if s.lambda1 > 0 and len(kept) < s.pair_batch:
            raise StageError(
                f"{len(kept)} training pairs left from {s.pairs} (IoU >= {s.iou}, regions held back): fewer than one "
                "batch; make more pairs or lower --pair-batch"
            )
        pid, tid = kept["photo_id"].to_numpy(), kept["tile_id"].to_numpy()
        corners = fp.loc[pid]
        turns = photo_rotation(
            corners[[f"{c}_lon" for c in CORNERS]].to_numpy(), corners[[f"{c}_lat" for c in CORNERS]].to_numpy()
        )
        grounds = shapely.union(fp_poly.loc[pid].to_numpy(), win_poly.loc[tid].to_numpy())

        pool = db[~window_out]
        if s.mining_windows and len(pool) > s.mining_windows:
            pick = np.sort(np.random.default_rng(s.seed).choice(len(pool), s.mining_windows, replace=False))
            pool = pool.iloc[pick]
        size = int(sizes[0])
        data = TrainingSet(
            tiles=s.tiles,
            size_tiles=size,
            pair_photos=[paths[p] for p in pid],
            pair_windows=list(tid),
            pair_turns=turns,
            grounds=grounds,
            mum_windows=pool["tile_id"].astype(str).tolist(),
            mum_boxes=window_boxes(pool["zoom"].to_numpy(), pool["x"].to_numpy(), pool["y"].to_numpy(), size),
            photos=[paths[p] for p in sorted(set(pid))],
        )
        if val_area is not None:
            vp = fp[shapely.intersects(fp_poly.to_numpy(), val_area) & fp.index.isin(list(paths))]
            vw = db[shapely.intersects(win_poly.to_numpy(), val_area)]
            if s.validation_zooms:
                vw = vw[vw["zoom"].isin(s.validation_zooms)]
                if vw.empty:
                    raise StageError(
                        f"--validation {s.validation}: no window of zoom {', '.join(map(str, s.validation_zooms))} "
                        f"in it (the database's zooms: {', '.join(map(str, sorted(db['zoom'].unique())))}); "
                        "change --validation-zooms"
                    )
            vdb = Database.from_columns(vw["zoom"].to_numpy(), vw["x"].to_numpy(), vw["y"].to_numpy(), size)
            positives = positive_windows(
                vp[[f"{c}_lon" for c in CORNERS]].to_numpy(), vp[[f"{c}_lat" for c in CORNERS]].to_numpy(), vdb
            )
            keep = [i for i, p in enumerate(positives) if p]
            if not keep:
                raise StageError(f"--validation {s.validation}: no photo with a footprint on its windows")
            data.val_photos = [paths[vp.index[i]] for i in keep]
            data.val_positives = [positives[i] for i in keep]
            data.val_windows = vw["tile_id"].astype(str).tolist()
        return data

    def adapter_set(self, s: TrainSettings) -> tuple:
        """(the frozen descriptors an adapter trains on, the frozen model's reference, counts for the summary).

        Photos: the store's photos whose weak label (the manifest's centre point; no footprint is read) lies outside
        every ``--exclude`` region, the rule ``run describe --region`` selects an evaluation's photos by.
        References: every stored rotation of the windows that touch no such region. With ``--labels pairs``:
        the photos with a pair at IoU >= t_iou, each with its paired windows' rotations as positives."""
        from pipeline.descriptors import read_index, read_rows
        from pipeline.model.adapter import frozen_reference
        from pipeline.train.adapter import AdapterData

        cfg = tomllib.loads(Path(s.features + ".config.toml").read_text())["describe"]
        folder = Path(s.features).parent
        index = read_index(folder)
        photos, windows = index[index["kind"] == "photo"], index[index["kind"] == "window"]
        q, _ = (
            read_queries(cfg["queries"], check_images=False, on_error="collect")
            if cfg["queries"] != "none"
            else (
                pd.DataFrame(columns=["photo_id", "center_lon", "center_lat"]),
                None,
            )
        )
        db = read_manifest(cfg["database"], DATABASE, columns=["tile_id", "geometry"])
        held = [_region(e) for e in s.exclude]
        centre = q.set_index(q["photo_id"].astype(str))[["center_lon", "center_lat"]]
        out_photo = pd.Series(False, index=centre.index)
        out_window = pd.Series(False, index=db["tile_id"].astype(str).to_numpy())
        for area in held:
            out_photo |= shapely.intersects(shapely.points(centre.to_numpy(dtype=float)), area)
            out_window |= shapely.intersects(db.geometry.to_numpy(), area)
        keep_p = photos["id"].map(out_photo).eq(False).to_numpy()  # photos unknown to the manifest stay out
        keep_w = windows["id"].map(out_window).eq(False).to_numpy()
        photos, windows = photos[keep_p], windows[keep_w]
        positives = groups = None
        if s.labels == "pairs":
            pairs = read_manifest(s.pairs, PAIRS, columns=["photo_id", "tile_id", "iou"], geometry=False)
            pairs = pairs[pairs["iou"] >= s.iou]
            rows_of = windows.reset_index(drop=True).groupby("id").indices
            by_photo = pairs.groupby(pairs["photo_id"].astype(str))["tile_id"].apply(list)
            grouped = [[rows_of[t] for t in dict.fromkeys(by_photo.get(p, [])) if t in rows_of] for p in photos["id"]]
            has = np.array([len(g) > 0 for g in grouped], bool)
            photos, groups = photos[has], [g for g, h in zip(grouped, has) if h]
            positives = [np.sort(np.concatenate(g)) for g in groups]
        if not len(photos) or len(windows) < 2:
            raise StageError(
                f"{s.features}: {len(photos)} photos and {len(windows)} window descriptors left after the held-back "
                "regions" + (" and the pairs" if s.labels == "pairs" else "") + "; describe more (run describe)"
            )
        data = AdapterData(
            read_rows(folder, photos, np.float16), read_rows(folder, windows, np.float16), positives, groups
        )
        counts = {"photos": len(photos), "references": len(windows), "held_photos": int((~keep_p).sum())}
        counts["held_references"] = int((~keep_w).sum())
        return data, frozen_reference(cfg["model"], cfg.get("backbone_weights") or None), counts

    def _run_adapter(self, run: StageRun) -> str:
        from pipeline.model.adapter import save_adapter
        from pipeline.train.adapter import AdapterRun, AdapterTrainer, write_metrics

        s = run.settings
        data, frozen, n = self.adapter_set(s)
        r = AdapterRun(
            steps=s.steps,
            photos_per_step=s.photos_per_step,
            references_per_step=s.references_per_step,
            lr=s.lr,
            tau=s.tau,
            out_dim=s.adapter_dim,
            residual=s.residual,
            aic=s.aic,
            aic_weight=s.aic_weight,
            aic_mean=s.aic_reduction == "mean",
            labels=s.labels,
            seed=s.seed,
            checkpoint_every=s.checkpoint_every,
        )
        t0 = time.perf_counter()
        adapter, metrics = AdapterTrainer(r, data, run.parts_dir(), record=run.record).run()
        wall = time.perf_counter() - t0
        save_adapter(s.out, adapter, frozen, s.steps, training=run.record)
        write_metrics(Path(s.out).with_name(Path(s.out).stem + "-metrics.parquet"), metrics)
        last = metrics[-1] if metrics else {}
        per = np.median([m["seconds"] for m in metrics]) if metrics else float("nan")
        return "\n".join(
            [
                f"train (adapter, labels {s.labels}{', AIC' if s.aic else ''}{', residual' if s.residual else ''}): "
                f"{s.steps} iterations of {min(s.photos_per_step, n['photos'])} photos -> {s.out}",
                f"  frozen model {frozen['model']}: {data.photos.shape[1]} -> {adapter.config.out_dim} values; "
                f"{n['photos']} photos and {n['references']} window descriptors ({n['held_photos']} photos, "
                f"{n['held_references']} descriptors held back)",
                f"  last L_EM {last.get('loss_em', float('nan')):.4f}, L_re {last.get('loss_re', float('nan')):.4f}; "
                f"this run {wall:.1f} s, {per:.2f} s per iteration (median)",
            ]
        )

    def _run_whitening(self, run: StageRun) -> str:
        from pipeline.model.adapter import Adapter, AdapterConfig, save_adapter
        from pipeline.train.whitening import learn_whitening, matching_pairs

        s = run.settings
        t0 = time.perf_counter()
        data, frozen, n = self.adapter_set(s)
        photos, refs = data.photos.astype(np.float32), data.references.astype(np.float32)
        p_rows, r_rows = matching_pairs(photos, refs, data.positive_windows)
        seen = np.concatenate([photos, refs])
        d0 = photos.shape[1]
        try:
            weight, bias = learn_whitening(photos[p_rows], refs[r_rows], seen, s.shrinkage, s.whiten_dim or None)
        except ValueError as e:
            raise StageError(f"{s.features}: {e}") from None
        import torch

        adapter = Adapter(AdapterConfig(d0, weight.shape[0]))
        with torch.no_grad():
            adapter.linear.weight.copy_(torch.from_numpy(weight))
            adapter.linear.bias.copy_(torch.from_numpy(bias))
        save_adapter(s.out, adapter, frozen, 0, training=run.record, whitening={"pairs": len(p_rows)})
        return "\n".join(
            [
                f"train (whitening learned from {len(p_rows)} pairs at IoU >= {s.iou} of {n['photos']} photos, "
                f"shrinkage {s.shrinkage}): {d0} -> {weight.shape[0]} values -> {s.out}",
                f"  frozen model {frozen['model']}; the mean and covariance of {len(seen)} descriptors "
                f"({n['held_photos']} photos, {n['held_references']} window descriptors held back); "
                f"{time.perf_counter() - t0:.1f} s",
            ]
        )

    def run(self, run: StageRun) -> str:
        from pipeline.train.loop import Trainer

        s = run.settings
        if s.method == "adapter":
            return self._run_adapter(run)
        if s.method == "whitening":
            return self._run_whitening(run)
        data = self.training_set(s)
        try:
            result = Trainer(s, data, Path(s.out), run.parts_dir()).run()
        except ValueError as e:
            raise StageError(str(e)) from None
        lines = [
            f"train: {result['steps']} steps ({s.recipe} recipe, {s.pair_batch if s.lambda1 else 0} pairs + "
            f"{s.quad_batch if s.lambda2 else 0} quadruplets per batch, mining {s.mining}) -> {s.out}",
            f"  {len(data.pair_windows)} pairs of {len(data.photos)} photos, {len(data.mum_windows)} MUM windows; "
            f"last loss {result['last_loss']:.4f}; this run {result['wall_s']:.0f} s, "
            f"{result['images_per_s']:.1f} images/s",
            f"  metrics: {Path(s.out).with_name('metrics.parquet')}",
        ]
        if s.average_from:
            lines.append(
                f"  {s.out}: the mean of the weights after steps {s.average_from}-{result['steps']}; the last "
                f"step's: {Path(s.out).with_name('last.pt')}"
            )
        if result["validation"]:
            best = result["best"]
            lines.append(
                f"  validation ({len(data.val_photos)} photos): best recall@1 {best['recall_1']:.3f} at step "
                f"{best['step']} -> {Path(s.out).with_name('best.pt')}"
            )
        return "\n".join(lines)


__all__ = ["TrainStage"]
