"""The trainer's settings: one frozen value per run, and the two recipes their defaults come from.

A recipe fills every hyperparameter the user leaves unset (``None``): ``paper`` is AstroLoc's section 5.1
(t_iou 0.2, alpha 1, beta 50, lambda 1, K 50, 48 pairs + 48 quadruplets, Adam at 5e-5, 30k iterations, mining
every 5000) on the ``paper`` model; ``cpu`` trains the ``cpu`` model on two cores in minutes. The stage resolves
the recipe before the run, so the record saved beside a checkpoint holds the numbers it was trained with.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.geometry.windows import parse_zooms
from pipeline.settings import Settings, setting

MINING = ("photos", "uniform", "random")
"""AstroLoc's three ways of choosing a MUM batch (section 4.3): ``photos`` (solution 3: a k-means cluster drawn
in proportion to the training photos assigned to it, Eq. 7-8), ``uniform`` (solution 2: a cluster drawn
uniformly), ``random`` (solution 1: windows drawn at random, no clusters)."""

RECIPES: dict[str, dict] = {
    "paper": dict(
        model="paper",
        iou=0.2,
        pair_batch=48,
        quad_batch=48,
        lr=5e-5,
        steps=30_000,
        clusters=50,
        mining_every=5000,
        mining_windows=0,
        checkpoint_every=1000,
        validate_every=5000,
    ),
    "cpu": dict(
        model="cpu",
        iou=0.2,
        pair_batch=8,
        quad_batch=4,
        lr=1e-5,
        steps=100,
        clusters=8,
        mining_every=50,
        mining_windows=320,
        checkpoint_every=25,
        validate_every=50,
    ),
}
"""The hyperparameters each recipe sets (the losses' gains alpha1 = alpha2 = 1, beta1 = beta2 = 50 and the
weights lambda1 = lambda2 = 1 are the paper's in both). ``mining_windows`` 0: every training window is clustered."""

ADAPTER_RECIPES: dict[str, dict] = {
    "paper": dict(lr=1e-3, steps=60, photos_per_step=700, checkpoint_every=10, iou=0.2),
    "cpu": dict(lr=1e-3, steps=60, photos_per_step=700, checkpoint_every=10, iou=0.2),
}
"""``--method adapter``'s recipes: the adapter paper's section IV-B (Adam at 1e-3, T = 60 iterations, 700 photos
per iteration on University-1652). An iteration costs seconds on a CPU at the sample's scale, so ``cpu`` is the
same."""


def _region_specs(value) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, (list, tuple)):
        raise ValueError('a list of region specs, e.g. exclude = ["regions.geojson#eval"]')
    return tuple(str(v) for v in value)


@dataclass(frozen=True)
class TrainSettings(Settings):
    section = "train setting"

    pairs: str = setting("", "training pairs from `run pairs` (default: WORKDIR/pairs.parquet)")
    footprints: str = setting(
        "",
        "the photos' footprints (a footprints manifest or a truth file; default: the one the pairs were made "
        "from, as their config records)",
    )
    queries: str = setting("", "the photos' paths: queries manifest (default: WORKDIR/queries.parquet)")
    database: str = setting("", "database manifest: the MUM loss's windows (default: WORKDIR/database.parquet)")
    tiles: str = setting(
        "",
        "tile source of the windows (default: WORKDIR/tiles); a procedural world gives its four years to each "
        "MUM quadruplet, another source four augmented views of one window",
    )
    out: str = setting("", "the trained checkpoint (default: WORKDIR/train/model.pt; metrics.parquet beside it)")
    recipe: str = setting("cpu", "where unset hyperparameters come from: paper or cpu", choices=tuple(RECIPES))
    method: str = setting(
        "astroloc",
        "the training method: astroloc (pairs + MUM, trains the model), adapter (a linear adapter on a frozen "
        "model's stored descriptors, EM pseudo-labels: no label used) or whitening (a linear map learned in closed "
        "form from the pairs on a frozen model's stored descriptors: docs/training.md)",
        choices=("astroloc", "adapter", "whitening"),
    )
    model: str | None = setting(None, "the start: a model config (cpu, paper, cpu-random) or a checkpoint file")
    backbone_weights: str | None = setting(None, "the official DINOv2 checkpoint, for the paper model")
    iou: float | None = setting(None, "pairs below this IoU are not used (t_iou; the recipe's: 0.2)")
    pair_batch: int | None = setting(None, "B: (photo, window) pairs per batch (paper 48, cpu 8)")
    quad_batch: int | None = setting(None, "H: MUM quadruplets per batch (paper 48, cpu 4)")
    alpha1: float = setting(1.0, "the pairwise loss's positive gain (Eq. 1)")
    beta1: float = setting(50.0, "the pairwise loss's negative gain (Eq. 3)")
    alpha2: float = setting(1.0, "the MUM loss's positive gain (Eq. 9)")
    beta2: float = setting(50.0, "the MUM loss's negative gain (Eq. 9)")
    lambda1: float = setting(1.0, "weight of the pairwise loss (0: MUM only)")
    lambda2: float = setting(1.0, "weight of the MUM loss (0: pairs only)")
    mining: str = setting(
        "photos",
        "how a MUM batch is chosen: photos (solution 3, clusters drawn by their share of the training photos), "
        "uniform (solution 2), random (solution 1: no clusters)",
        choices=MINING,
    )
    clusters: int | None = setting(None, "K: k-means clusters of the windows' descriptors (paper 50, cpu 8)")
    mining_every: int | None = setting(None, "recompute the clusters every N steps (paper 5000, cpu 50)")
    mining_windows: int | None = setting(
        None, "cluster this many training windows, drawn once (0: all; paper 0, cpu 320)"
    )
    lr: float | None = setting(None, "Adam's learning rate (paper 5e-5, cpu 1e-5)")
    backbone_lr: float | None = setting(
        None, "learning rate of the backbone's trainable blocks (default: lr; 0 keeps them as they start)"
    )
    steps: int | None = setting(None, "training iterations (paper 30000, cpu 100)")
    average_from: int = setting(
        0,
        "keep the uniform mean of the trained weights after every step from this one on (stochastic weight "
        "averaging): model.pt, best.pt and the validations are the mean, last.pt the last step's weights (0: off)",
    )
    seed: int = setting(0, "seed of the batches, the augmentation, dropout and the clustering")
    augment: bool = setting(
        True, "augment every image: a random quarter turn (a pair's two images together) and the changes below"
    )
    rotate: float = setting(0.0, "augmentation: a further turn drawn in [-rotate, rotate] degrees per image")
    perspective: float = setting(
        0.0, "augmentation: each corner of the view moved inward by up to this fraction of half the side"
    )
    zoom: float = setting(0.0, "augmentation: the view's side drawn in [1 - zoom, 1] of the image's")
    colour: float = setting(
        0.3, "augmentation: brightness, contrast and saturation scaled by factors in [1 - colour, 1 + colour]"
    )
    render_px: int | None = setting(
        None, "side the windows are rendered at before the model's resize (default: twice the model's side)"
    )
    exclude: tuple[str, ...] = setting(
        (),
        "regions that never train: photos whose footprint touches one, and windows (pairs' and MUM's) that "
        "touch one, e.g. regions.geojson#eval; repeatable",
        repeat=True,
        parse=_region_specs,
        metavar="SPEC",
    )
    validation: str | None = setting(
        None,
        "validation region (regions.geojson#val): its photos and windows are held out from training and "
        "their recall@N is measured every validate_every steps; the best checkpoint is kept as best.pt",
    )
    validation_zooms: tuple[int, ...] | None = setting(
        None,
        "validate against the region's windows of these zooms only, e.g. 8-11 (none: every zoom); its photos "
        "are those with a positive among them. A validation embeds each window at four rotations, so the "
        "finest zoom, which holds most windows, is most of its cost",
        parse=parse_zooms,
    )
    validate_every: int | None = setting(None, "validate every N steps (paper 5000, cpu 50)")
    checkpoint_every: int | None = setting(None, "save the resumable state every N steps (paper 1000, cpu 25)")
    features: str = setting(
        "",
        "adapter and whitening: the frozen model's descriptor store from `run describe` (default: "
        "WORKDIR/descriptors/index.parquet); its model is the frozen one",
    )
    labels: str = setting(
        "em",
        "adapter: em (pseudo-labels, Eq. 5; no label used) or pairs (supervised by the pairs manifest: the "
        "ablation's supervised row); whitening always learns from the pairs",
        choices=("em", "pairs"),
    )
    adapter_dim: int = setting(2048, "adapter: d, the adapted descriptors' size (residual: the frozen size)")
    residual: bool = setting(False, "adapter: the residual-style design z = x + f(x) (the paper's Fig. 6a)")
    aic: bool = setting(True, "adapter: the reverter and the reconstruction loss (AIC, Eq. 7-8)")
    aic_weight: float = setting(1.0, "adapter: the reconstruction loss's weight (the paper's: 1)")
    aic_reduction: str = setting(
        "sum",
        "adapter: the reconstruction loss summed over the descriptors (Eq. 8) or its mean per descriptor",
        choices=("sum", "mean"),
    )
    shrinkage: float = setting(
        0.1, "whitening: this fraction of the pairs' difference covariance's mean eigenvalue added to its diagonal"
    )
    whiten_dim: int = setting(0, "whitening: the whitened descriptors' size (0: the frozen descriptors')")
    tau: float = setting(0.1, "adapter: the InfoNCE temperature (Eq. 6; the paper does not give its value)")
    photos_per_step: int | None = setting(None, "adapter: M, photos drawn per iteration (paper 700)")
    references_per_step: int = setting(
        65536,
        "adapter: references in an iteration's loss: all of them up to this many (Algorithm 1); beyond, the "
        "E-step still searches all, the InfoNCE runs over the pseudo-positives plus this many drawn at random",
    )
    half: bool = setting(True, "mixed precision: float16 autocast on CUDA, bfloat16 on a CPU with AVX512-BF16/AMX")
    image_cache: str = setting(
        "",
        "folder of rendered windows kept between runs (default: WORKDIR/train/cache; none: memory only)",
        runtime=True,
    )
    loader_workers: int = setting(1, "DataLoader worker processes reading photos and rendering windows", runtime=True)
    device: str = setting(
        "auto", "auto, cpu, cuda or cuda:N (under torchrun: each process its local GPU)", runtime=True
    )

    def check(self) -> None:
        for key in ("pair_batch", "quad_batch", "clusters", "mining_every", "steps", "validate_every"):
            v = getattr(self, key)
            self.need(v is None or v >= 1, key, "must be at least 1")
        self.need(self.pair_batch is None or self.pair_batch >= 2, "pair_batch", "at least 2 (the negatives)")
        self.need(self.quad_batch is None or self.quad_batch >= 2, "quad_batch", "at least 2 (the negatives)")
        self.need(self.iou is None or 0 < self.iou <= 1, "iou", "must be in (0, 1]")
        self.need(self.lr is None or self.lr > 0, "lr", "must be above 0")
        self.need(self.backbone_lr is None or self.backbone_lr >= 0, "backbone_lr", "must be 0 or more")
        self.need(self.lambda1 >= 0 and self.lambda2 >= 0, "lambda1", "loss weights must be 0 or more")
        self.need(self.lambda1 > 0 or self.lambda2 > 0, "lambda1", "lambda1 and lambda2 cannot both be 0")
        self.need(self.loader_workers >= 0, "loader_workers", "must be 0 (in the training process) or more")
        self.need(self.render_px is None or self.render_px >= 14, "render_px", "must be at least 14 pixels")
        self.need(0 <= self.rotate <= 180, "rotate", "degrees in [0, 180]")
        self.need(0 <= self.perspective < 1, "perspective", "a fraction in [0, 1)")
        self.need(0 <= self.zoom < 1, "zoom", "a fraction in [0, 1)")
        self.need(0 <= self.colour < 1, "colour", "a fraction in [0, 1)")
        self.need(self.adapter_dim >= 1, "adapter_dim", "must be at least 1")
        self.need(self.tau > 0, "tau", "must be above 0")
        self.need(self.shrinkage >= 0, "shrinkage", "must be 0 or more")
        self.need(self.whiten_dim >= 0, "whiten_dim", "0 (the frozen size) or more")
        self.need(self.aic_weight >= 0, "aic_weight", "must be 0 or more")
        self.need(self.photos_per_step is None or self.photos_per_step >= 1, "photos_per_step", "at least 1")
        self.need(self.average_from >= 0, "average_from", "a step, 1 or more (0: no averaging)")
        self.need(
            not self.average_from or self.steps is None or self.average_from <= self.steps,
            "average_from",
            f"past the run's last step ({self.steps}); start the mean at a step of the run",
        )
        self.need(self.references_per_step >= 0, "references_per_step", "0 (all) or more")

    def with_recipe(self) -> TrainSettings:
        """These settings with every unset hyperparameter taken from the recipe."""
        recipes = RECIPES if self.method == "astroloc" else ADAPTER_RECIPES
        fill = {k: v for k, v in recipes[self.recipe].items() if getattr(self, k) is None}
        return self.replace(**fill) if fill else self


__all__ = ["ADAPTER_RECIPES", "MINING", "RECIPES", "TrainSettings"]
