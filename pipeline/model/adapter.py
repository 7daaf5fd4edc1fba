"""The self-supervised adapter of Li et al., "Learning Cross-view Visual Geo-localization without Ground Truth"
(``../shared/papers/cvgl-without-ground-truth.md``, section III): a frozen model f0 gives each image a descriptor
x (d0 values, unit length); the adapter f_theta maps it to z (d values) and the reverter f_phi maps z back to d0
for the reconstruction loss (its Eq. 7-8). Both are linear (its section IV-B).

Adapted descriptors are L2-normalized, as the frozen ones are: retrieval compares them by inner product (cosine)
and the InfoNCE temperature (Eq. 6) then has a fixed meaning. The reverter reads the adapter's output before that
normalization (Eq. 7, f_phi(f_theta(x))): a linear map of the unit vector could not give back the length a linear
adapter takes away, and the reconstruction loss would then fight every map that is not a rotation. The
residual-style design (its Fig. 6a) is z = normalize(x + f_theta(x)), with d = d0.

A checkpoint of an adapter (:func:`save_adapter`) holds the adapter and a reference to its frozen model (a
configuration name, or a checkpoint file with its SHA-256); :func:`load_adapted_model` rebuilds the frozen model and
refuses one that changed since the adapter was trained. ``run describe --model`` and ``run train --model`` take
such a file like any other checkpoint (:func:`pipeline.model.checkpoint.load_model`).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from manifests.files import atomic_output

FORMAT = "astroloc-adapter"
VERSION = 1


@dataclass(frozen=True)
class AdapterConfig:
    """The adapter's shape: ``in_dim`` d0 (the frozen descriptors'), ``out_dim`` d, ``residual`` (z = x + f(x))."""

    in_dim: int
    out_dim: int = 2048
    residual: bool = False

    def __post_init__(self) -> None:
        if self.in_dim < 1 or self.out_dim < 1:
            raise ValueError(f"adapter sizes must be positive, got {self.in_dim} -> {self.out_dim}")
        if self.residual and self.in_dim != self.out_dim:
            raise ValueError(
                f"a residual adapter keeps the size of its input ({self.in_dim}), got out_dim {self.out_dim}"
            )

    def to_dict(self) -> dict:
        return asdict(self)


class Adapter(nn.Module):
    """f_theta: frozen descriptors (B, d0) -> adapted descriptors (B, d), unit length."""

    def __init__(self, config: AdapterConfig):
        super().__init__()
        self.config = config
        self.linear = nn.Linear(config.in_dim, config.out_dim)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """f_theta(x) before normalization, (B, d0) -> (B, d): W x + b (residual: x + W x + b). The reverter
        reads this (Eq. 7)."""
        y = self.linear(x)
        return x + y if self.config.residual else y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.project(x), dim=-1)


class Reverter(nn.Module):
    """f_phi: adapted descriptors (B, d) -> reconstructed frozen descriptors (B, d0) (Eq. 7), linear."""

    def __init__(self, config: AdapterConfig):
        super().__init__()
        self.linear = nn.Linear(config.out_dim, config.in_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.linear(z)


@dataclass(frozen=True)
class AdaptedConfig:
    """What :class:`AdaptedModel` says of itself to the describe stage: its name, descriptor size, image side."""

    name: str
    out_dim: int
    image_px: int


class AdaptedModel(nn.Module):
    """images (B, 3, H, W) in [0, 1] -> the frozen model's descriptors (B, d0) -> the adapter's (B, d)."""

    def __init__(self, frozen: nn.Module, adapter: Adapter):
        super().__init__()
        self.frozen = frozen.eval().requires_grad_(False)
        self.adapter = adapter
        self.reference: dict = {}
        """The frozen model's reference (:func:`frozen_reference`) when loaded from a checkpoint."""
        fc = frozen.config
        self.config = AdaptedConfig(f"{fc.name}+adapter", adapter.config.out_dim, fc.image_px)
        if adapter.config.in_dim != fc.out_dim:
            raise ValueError(f"the adapter reads {adapter.config.in_dim} values; its frozen model gives {fc.out_dim}")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.frozen(images).float())


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def frozen_reference(model: str, backbone_weights: str | None = None) -> dict[str, Any]:
    """What an adapter checkpoint records of its frozen model ``model`` (a configuration name or a checkpoint)."""
    from .retrieval import CONFIGS

    ref: dict[str, Any] = {"model": model, "backbone_weights": backbone_weights or ""}
    if model in CONFIGS:
        ref["config"] = CONFIGS[model].to_dict()
    else:
        ref["sha256"] = file_sha256(model)
    return ref


def save_adapter(
    path: str | os.PathLike, adapter: Adapter, frozen: dict[str, Any], step: int = 0, **extra: Any
) -> Path:
    """Write ``adapter`` and its ``frozen`` model's reference (:func:`frozen_reference`) to ``path`` atomically."""
    blob = {
        "format": FORMAT,
        "version": VERSION,
        "adapter": adapter.config.to_dict(),
        "frozen": frozen,
        "step": int(step),
        "state_dict": adapter.state_dict(),
        **extra,
    }
    with atomic_output(path) as tmp:
        torch.save(blob, tmp)
    return Path(path)


def adapter_from_blob(blob: dict[str, Any], path: str) -> Adapter:
    from .weights import WeightsError

    if blob.get("version") != VERSION:
        raise WeightsError(f"{path}: adapter checkpoint version {blob.get('version')}, this pipeline reads {VERSION}")
    adapter = Adapter(AdapterConfig(**blob["adapter"]))
    adapter.load_state_dict(blob["state_dict"])
    return adapter.eval()


def load_adapted_model(blob: dict[str, Any], path: str) -> AdaptedModel:
    """The frozen model and the adapter of an adapter checkpoint (read from ``path`` into ``blob``); a frozen
    model that changed since the adapter was trained is refused."""
    from .checkpoint import load_model
    from .retrieval import CONFIGS
    from .weights import WeightsError

    ref = blob["frozen"]
    model = ref["model"]
    if model in CONFIGS:
        if CONFIGS[model].to_dict() != ref.get("config"):
            raise WeightsError(
                f"{path}: its frozen model, the {model} configuration, changed since the adapter was trained; "
                "train the adapter again (`run train --method adapter`)"
            )
    elif not Path(model).is_file():
        raise WeightsError(f"{path}: its frozen model {model} is not found; put it back there or train again")
    elif file_sha256(model) != ref.get("sha256"):
        raise WeightsError(
            f"{path}: its frozen model {model} changed since the adapter was trained (SHA-256 differs); "
            "train the adapter again"
        )
    frozen = load_model(model, ref.get("backbone_weights") or None)
    adapted = AdaptedModel(frozen, adapter_from_blob(blob, path)).eval()
    adapted.reference = dict(ref)
    return adapted


__all__ = [
    "FORMAT",
    "AdaptedModel",
    "Adapter",
    "AdapterConfig",
    "Reverter",
    "adapter_from_blob",
    "frozen_reference",
    "load_adapted_model",
    "save_adapter",
]
