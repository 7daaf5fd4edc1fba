"""The retrieval model: DINOv2 (:mod:`.dinov2`) + SALAD (:mod:`.salad`) + a linear layer (:mod:`.retrieval`),
its backbone weights (:mod:`.weights`) and its checkpoints (:mod:`.checkpoint`)."""

from .checkpoint import build_model, load_checkpoint, save_checkpoint
from .dinov2 import ARCHS, DINOv2, interpolate_pos_embed
from .retrieval import CONFIGS, ModelConfig, RetrievalModel
from .salad import SALAD
from .weights import WeightsError

__all__ = [
    "ARCHS",
    "CONFIGS",
    "DINOv2",
    "ModelConfig",
    "RetrievalModel",
    "SALAD",
    "WeightsError",
    "build_model",
    "interpolate_pos_embed",
    "load_checkpoint",
    "save_checkpoint",
]
