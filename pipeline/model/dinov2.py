"""DINOv2 vision transformers (Oquab et al. 2023) with the official checkpoints' parameter names and shapes.

Our own implementation; its ``state_dict`` keys and shapes are those of the released
``dinov2_vit{s,b,l,g}14[_reg4]_pretrain.pth`` files (flat ``blocks.N.*``), so those files load with
``strict=True``: ``cls_token`` (1, 1, D), ``pos_embed`` (1, 1 + 37 * 37, D) for 518-px training images,
``register_tokens`` (1, 4, D) in the ``_reg4`` models, ``mask_token`` (1, D), ``patch_embed.proj``
(D, 3, 14, 14), per block ``norm1``, ``attn.qkv`` (3D, D: rows q, then k, then v), ``attn.proj``,
``ls1.gamma``, ``norm2``, ``mlp.fc1``/``mlp.fc2`` (ViT-g: the fused SwiGLU ``mlp.w12`` (2H, D) and
``mlp.w3`` (D, H)), ``ls2.gamma``, and the final ``norm``.

Images of another size than 518 px get the position embedding interpolated as the official code does
(:func:`interpolate_pos_embed`). Shapes: images (B, 3, H, W) with H and W multiples of 14, ImageNet-normalized;
tokens (B, 1 + R + h * w, D) with h = H / 14, w = W / 14, R registers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

PATCH = 14
"""Pixels per patch side."""
TRAIN_PX = 518
"""The image side the official models were trained at: 37 x 37 patches, the size of ``pos_embed``."""


@dataclass(frozen=True)
class ViTConfig:
    """One DINOv2 architecture: width D (``dim``), ``heads``, ``depth`` blocks, ``registers`` (0 or 4); ``swiglu``
    for ViT-g's feed-forward layer."""

    name: str
    dim: int
    heads: int
    depth: int
    registers: int = 0
    swiglu: bool = False

    @property
    def hidden(self) -> int:
        """Width of the feed-forward layer: 4 D, or for SwiGLU 2/3 of it rounded up to a multiple of 8."""
        if self.swiglu:
            return (int(4 * self.dim * 2 / 3) + 7) // 8 * 8
        return 4 * self.dim

    @property
    def interpolate_offset(self) -> float:
        """The official interpolation's offset: 0.1 for the models without registers, 0 (an exact size, with
        antialiasing) for the ``_reg4`` ones."""
        return 0.0 if self.registers else 0.1


ARCHS = {
    name + suffix: ViTConfig(name + suffix, dim, heads, depth, registers, swiglu=name == "vitg14")
    for name, dim, heads, depth in (
        ("vits14", 384, 6, 12),
        ("vitb14", 768, 12, 12),
        ("vitl14", 1024, 16, 24),
        ("vitg14", 1536, 24, 40),
    )
    for suffix, registers in (("", 0), ("_reg4", 4))
}
"""The released architectures, by the names of their checkpoints without ``dinov2_`` (``vitb14``, ``vitb14_reg4``)."""


def interpolate_pos_embed(pos_embed: torch.Tensor, rows: int, cols: int, offset: float) -> torch.Tensor:
    """The position embedding (1, 1 + M * M, D) of an M x M patch grid for a ``rows`` x ``cols`` one, as DINOv2's
    ``interpolate_pos_encoding``: the class token's part unchanged; the grid resized bicubically in float32, with
    ``scale_factor = ((rows + offset) / M, (cols + offset) / M)`` when ``offset`` is not 0 (the models without
    registers: 0.1), else to the exact ``size`` with antialiasing (the ``_reg4`` models). Returns
    (1, 1 + rows * cols, D) in ``pos_embed``'s dtype; unchanged when the grid is already M x M."""
    n = pos_embed.shape[1] - 1
    m = int(math.sqrt(n))
    if m * m != n:
        raise ValueError(f"pos_embed holds {n} patch positions, not a square grid")
    if rows == m and cols == m:
        return pos_embed
    dim = pos_embed.shape[-1]
    cls, grid = pos_embed[:, :1], pos_embed[:, 1:].float()
    grid = grid.reshape(1, m, m, dim).permute(0, 3, 1, 2)
    if offset:
        resized = F.interpolate(
            grid, scale_factor=((rows + offset) / m, (cols + offset) / m), mode="bicubic", antialias=False
        )
    else:
        resized = F.interpolate(grid, size=(rows, cols), mode="bicubic", antialias=True)
    if resized.shape[-2:] != (rows, cols):
        raise ValueError(f"interpolated to {tuple(resized.shape[-2:])}, not {(rows, cols)}")
    resized = resized.permute(0, 2, 3, 1).reshape(1, rows * cols, dim).to(pos_embed.dtype)
    return torch.cat([cls, resized], dim=1)


class PatchEmbed(nn.Module):
    """Non-overlapping 14 x 14 patches -> D channels: (B, 3, H, W) -> (B, h * w, D)."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=PATCH, stride=PATCH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with one ``qkv`` projection (rows: q, k, v) and an output ``proj``."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(head dim)) v
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    """The feed-forward layer: ``fc1`` -> GELU -> ``fc2``."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwiGLU(nn.Module):
    """ViT-g's feed-forward layer: ``w12`` gives two halves x1, x2; out = ``w3``(silu(x1) * x2)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


class LayerScale(nn.Module):
    """x * gamma, gamma (D,)."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm transformer block with layer scale: x + ls1(attn(norm1 x)), then + ls2(mlp(norm2 x))."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.attn = Attention(cfg.dim, cfg.heads)
        self.ls1 = LayerScale(cfg.dim)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.mlp = (SwiGLU if cfg.swiglu else Mlp)(cfg.dim, cfg.hidden)
        self.ls2 = LayerScale(cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DINOv2(nn.Module):
    """A DINOv2 ViT/14 whose parameters are named as the official checkpoints'.

    ``trainable_blocks``: only the last this many blocks (and the final norm) are trained; the ones before run
    without gradients (SALAD trains the last 4). ``forward`` returns the normalized patch tokens as a feature map
    (B, D, h, w) and the class token (B, D), as SALAD reads them."""

    def __init__(self, arch: str = "vitb14", trainable_blocks: int | None = None):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown DINOv2 architecture {arch!r}; choose from {', '.join(ARCHS)}")
        self.cfg = cfg = ARCHS[arch]
        grid = TRAIN_PX // PATCH
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, cfg.dim))
        if cfg.registers:
            self.register_tokens = nn.Parameter(torch.zeros(1, cfg.registers, cfg.dim))
        self.mask_token = nn.Parameter(torch.zeros(1, cfg.dim))  # masked-image training only; kept for the keys
        self.patch_embed = PatchEmbed(cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.trainable_blocks = cfg.depth if trainable_blocks is None else int(trainable_blocks)
        if not 0 <= self.trainable_blocks <= cfg.depth:
            raise ValueError(f"trainable_blocks must be in [0, {cfg.depth}], got {trainable_blocks}")
        self._init_weights()
        self.freeze()

    @property
    def dim(self) -> int:
        return self.cfg.dim

    def _init_weights(self) -> None:
        """Random values of DINOv2's initialisation (truncated normal, std 0.02): for the explicit random start and
        tests; real use loads a checkpoint."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.cfg.registers:
            nn.init.normal_(self.register_tokens, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def freeze(self) -> None:
        """No gradients for what is not trained: the embeddings and the blocks before the last ``trainable_blocks``."""
        frozen = self.cfg.depth - self.trainable_blocks
        for p in (self.cls_token, self.pos_embed, self.mask_token, *self.patch_embed.parameters()):
            p.requires_grad_(False)
        if self.cfg.registers:
            self.register_tokens.requires_grad_(False)
        for i, block in enumerate(self.blocks):
            block.requires_grad_(i >= frozen)
        self.norm.requires_grad_(self.trainable_blocks > 0)

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> the input tokens (B, 1 + R + h * w, D): class token, registers (no position embedding),
        patches; the position embedding added to the class token and the patches."""
        b, _, height, width = images.shape
        if height % PATCH or width % PATCH:
            raise ValueError(f"image size {height} x {width} px is not a multiple of the {PATCH}-px patch")
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1)
        x = x + interpolate_pos_embed(self.pos_embed, height // PATCH, width // PATCH, self.cfg.interpolate_offset)
        if self.cfg.registers:
            x = torch.cat([x[:, :1], self.register_tokens.expand(b, -1, -1), x[:, 1:]], dim=1)
        return x

    def frozen_part(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) ImageNet-normalized -> the tokens (B, 1 + R + h * w, D) after the blocks that are not
        trained, without gradients when there are any such blocks (they give an image the same tokens at every
        step)."""
        frozen = self.cfg.depth - self.trainable_blocks
        with torch.set_grad_enabled(torch.is_grad_enabled() and frozen == 0):
            x = self.tokens(images)
            for block in self.blocks[:frozen]:
                x = block(x)
        return x.detach() if frozen else x

    def trained_part(self, x: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The tokens of :meth:`frozen_part` (B, 1 + R + h * w, D) and the patch grid (h, w) -> (patch features
        (B, D, h, w), class token (B, D)), both after the trained blocks and the final norm."""
        for block in self.blocks[self.cfg.depth - self.trainable_blocks :]:
            x = block(x)
        x = self.norm(x)
        patches = x[:, 1 + self.cfg.registers :]
        fmap = patches.reshape(x.shape[0], grid[0], grid[1], self.dim).permute(0, 3, 1, 2)
        return fmap, x[:, 0]

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) ImageNet-normalized -> (patch features (B, D, H/14, W/14), class token (B, D)), both after
        the final norm."""
        height, width = images.shape[-2:]
        return self.trained_part(self.frozen_part(images), (height // PATCH, width // PATCH))


__all__ = ["ARCHS", "DINOv2", "PATCH", "TRAIN_PX", "ViTConfig", "interpolate_pos_embed"]
