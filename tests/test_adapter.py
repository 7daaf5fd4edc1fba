"""The self-supervised adapter (pipeline/model/adapter.py, pipeline/train/adapter.py, run train --method adapter):
the paper's equations against loops, the loop's resume, and the stage on the tiny sample."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from pipeline.model import ModelConfig, WeightsError
from pipeline.model.adapter import Adapter, AdapterConfig, frozen_reference, save_adapter
from pipeline.model.checkpoint import build_model, load_model, save_checkpoint
from pipeline.train.adapter import (
    AdapterData,
    AdapterRun,
    AdapterTrainer,
    em_loss,
    one_hot,
    pseudo_labels,
    reconstruction_loss,
    streamed_labels,
)
from stages.cli import main

GEM = ModelConfig(
    "test-gem", arch="vits14", image_px=56, out_dim=384, trainable_blocks=0, aggregation="gem", backbone="random"
)
"""A bare backbone with GeM pooling, random values, 56 px: the frozen model of the stage's plumbing tests."""


def _unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


# -- the paper's equations, against loops ---------------------------------------------------------------------


def test_gem_is_eq1_and_the_gem_models_are_frozen_backbones():
    from pipeline.model.retrieval import CONFIGS, gem

    fmap = torch.tensor([1.0, 8.0, 8.0, 1.0]).view(1, 1, 2, 2).repeat(1, 2, 1, 1)
    fmap[0, 1] = -3.0  # negative tokens count as eps
    got = gem(fmap)
    assert got[0, 0] == pytest.approx(((1 + 512 + 512 + 1) / 4) ** (1 / 3), rel=1e-6)
    assert got[0, 1] == pytest.approx(1e-6, rel=1e-3)
    m = build_model(GEM)
    assert m.config.out_dim == 384 and not [p for p in m.parameters() if p.requires_grad]
    assert CONFIGS["cpu-gem"].out_dim == 384 and CONFIGS["paper-gem"].out_dim == 768
    with pytest.raises(ValueError, match="backbone's width"):
        ModelConfig("x", arch="vits14", aggregation="gem", out_dim=512)


def test_pseudo_labels_are_eq5_arg_max():
    zq, zr = _unit(7, 5), _unit(11, 5, seed=1)
    got = pseudo_labels(zq, zr)
    for i in range(7):
        sims = [sum(float(zq[i, k]) * float(zr[j, k]) for k in range(5)) for j in range(11)]
        assert int(got[i]) == max(range(11), key=lambda j: sims[j])


def _em_loop(za, zb, s, tau):
    terms = []
    for i in range(len(za)):
        num = sum(float(s[i, j]) * math.exp(float(za[i] @ zb[j]) / tau) for j in range(len(zb)))
        den = sum(math.exp(float(za[i] @ zb[j]) / tau) for j in range(len(zb)))
        if num > 0:
            terms.append(-math.log(num / den))
    return sum(terms) / len(terms)


@pytest.mark.parametrize("tau", [0.1, 1.0])
def test_em_loss_is_eq6_with_one_or_several_positives(tau):
    zq, zr = _unit(6, 4, seed=2), _unit(9, 4, seed=3)
    s = one_hot(pseudo_labels(zq, zr), 9)
    assert float(em_loss(zq, zr, s, tau)) == pytest.approx(_em_loop(zq, zr, s, tau), rel=1e-5)
    s2 = s.clone()
    s2[0, 3] = s2[4, 8] = 1.0  # several positives in a row (the supervised labels)
    assert float(em_loss(zq, zr, s2, tau)) == pytest.approx(_em_loop(zq, zr, s2, tau), rel=1e-5)
    # the reverse direction: the references no photo chose have no term
    assert float(em_loss(zr, zq, s.T, tau)) == pytest.approx(_em_loop(zr, zq, s.T, tau), rel=1e-5)
    assert int((s.T.sum(1) > 0).sum()) < 9


def test_reconstruction_loss_is_eq8():
    x, xh = torch.randn(5, 3), torch.randn(5, 3)
    loop = sum(sum((float(x[i, k]) - float(xh[i, k])) ** 2 for k in range(3)) for i in range(5))
    assert float(reconstruction_loss(x, xh)) == pytest.approx(loop, rel=1e-6)


def test_streamed_labels_equal_the_whole_database_at_once():
    adapter = Adapter(AdapterConfig(8, 16))
    refs = _unit(300, 8, seed=4).numpy().astype(np.float16)
    zq = adapter(_unit(10, 8, seed=5)).detach()
    labels, sims = streamed_labels(adapter, zq, refs, chunk=64)
    whole = adapter(torch.from_numpy(refs.astype(np.float32))).detach()
    assert torch.equal(labels, pseudo_labels(zq, whole))
    assert torch.allclose(sims, (zq @ whole.T).max(dim=1).values, atol=1e-6)


def test_the_residual_adapter_keeps_its_size_and_adds_its_input():
    with pytest.raises(ValueError, match="keeps the size"):
        AdapterConfig(8, 16, residual=True)
    a = Adapter(AdapterConfig(8, 8, residual=True))
    torch.nn.init.zeros_(a.linear.weight), torch.nn.init.zeros_(a.linear.bias)
    x = _unit(3, 8)
    assert torch.allclose(a(x), x, atol=1e-6)


# -- the loop -----------------------------------------------------------------------------------------------------


def _world(n=300, d0=64, warp=2.0, noise=0.6, seed=0):
    """References (n, d0) and photos that see them through one fixed distortion (a random linear map plus noise):
    photo i shows reference i."""
    g = torch.Generator().manual_seed(seed)
    refs = F.normalize(torch.randn(n, d0, generator=g), dim=-1)
    w = torch.eye(d0) + warp * torch.randn(d0, d0, generator=g) / math.sqrt(d0)
    photos = F.normalize(refs @ w.T + noise / math.sqrt(d0) * torch.randn(n, d0, generator=g), dim=-1)
    return photos.numpy().astype(np.float16), refs.numpy().astype(np.float16)


def _run(**kw):
    base = dict(
        steps=6,
        photos_per_step=40,
        references_per_step=0,
        lr=1e-3,
        tau=0.1,
        out_dim=32,
        residual=False,
        aic=True,
        aic_weight=1.0,
        labels="em",
        seed=0,
        checkpoint_every=1,
    )
    return AdapterRun(**{**base, **kw})


def test_a_stopped_adapter_run_resumes_to_the_same_weights_and_metrics(tmp_path):
    photos, refs = _world()
    data = AdapterData(photos, refs)
    whole, m_whole = AdapterTrainer(_run(), data, tmp_path / "a").run()
    AdapterTrainer(_run(steps=3), data, tmp_path / "b").run()  # stopped after its third iteration's checkpoint
    resumed, m_res = AdapterTrainer(_run(), data, tmp_path / "b").run()
    for k, v in whole.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    drop = lambda rows: pd.DataFrame(rows).drop(columns="seconds")  # noqa: E731
    assert drop(m_whole).equals(drop(m_res)) and len(m_res) == 6


@pytest.mark.parametrize("aic,references_per_step", [(False, 0), (True, 50)])
def test_em_adaptation_undoes_a_distortion_no_label_names(aic, references_per_step, tmp_path):
    """Photos see their references through a fixed linear distortion; the frozen features rank 69 % of them
    first. EM pseudo-labels, with no label at all, undo enough of it to rank more of them first: with all the
    references in each iteration (Algorithm 1) and with the streamed E-step and 50 sampled references."""
    photos, refs = _world()
    p, r = torch.from_numpy(photos.astype(np.float32)), torch.from_numpy(refs.astype(np.float32))
    truth = torch.arange(len(p))
    before = float((pseudo_labels(p, r) == truth).float().mean())
    run = _run(steps=60, photos_per_step=100, references_per_step=references_per_step, out_dim=256, aic=aic)
    adapter, metrics = AdapterTrainer(replace(run, aic_mean=True), AdapterData(photos, refs), tmp_path).run()
    with torch.no_grad():
        after = float((pseudo_labels(adapter(p), adapter(r)) == truth).float().mean())
    assert after > before + 0.08, (before, after)
    assert metrics[-1]["loss_em"] < metrics[0]["loss_em"] and (metrics[-1]["loss_re"] > 0) == aic


# -- the stage ----------------------------------------------------------------------------------------------------


def _describe(tiny: Path, model: Path, out: Path) -> list[str]:
    return [
        "run",
        "describe",
        "--workdir",
        str(tiny),
        "--model",
        str(model),
        "--out",
        str(out),
        "--zooms",
        "9",
        "--batch-size",
        "40",
        "--workers",
        "1",
        "--no-half",
        "-q",
    ]


@pytest.fixture(scope="module")
def frozen(tiny, tmp_path_factory) -> tuple[Path, Path]:
    """(a GeM model's checkpoint, its descriptor store of the tiny sample's zoom-9 windows and its 10 photos)."""
    d = tmp_path_factory.mktemp("frozen")
    model = save_checkpoint(d / "gem.pt", build_model(GEM))
    store = d / "store" / "index.parquet"
    assert main(_describe(tiny, model, store)) == 0
    return model, store


def test_run_train_adapter_holds_the_region_back_and_describes_through_its_frozen_model(tiny, frozen, tmp_path, capsys):
    import shapely

    from manifests import read_manifest
    from pipeline.train.settings import TrainSettings
    from stages.pairs import read_regions
    from stages.train import TrainStage

    model, store = frozen
    out = tmp_path / "adapter.pt"
    region = f"{tiny / 'regions.geojson'}#eval"
    args = ["run", "train", "--workdir", str(tiny), "--method", "adapter", "--features", str(store), "--out"]
    args += [str(out), "--exclude", region, "--steps", "3", "--adapter-dim", "32", "--photos-per-step", "4", "-q"]
    capsys.readouterr()
    assert main(args) == 0
    printed = capsys.readouterr().out
    # what it trained on: photos whose weak label is outside the region, windows that do not touch it
    area = shapely.union_all(read_regions(str(tiny / "regions.geojson"), "eval"))
    q = read_manifest(tiny / "queries.parquet", "queries", geometry=False)
    inside = shapely.intersects(shapely.points(q[["center_lon", "center_lat"]].to_numpy(float)), area)
    db = read_manifest(tiny / "database.parquet", "database")
    touching = shapely.intersects(db[db["zoom"] == 9].geometry.to_numpy(), area)
    assert 0 < inside.sum() < len(q) and 0 < touching.sum() < len(touching)
    s = TrainStage().resolve(TrainSettings(method="adapter", features=str(store), exclude=(region,)), tiny)
    data, ref, n = TrainStage().adapter_set(s)
    assert (n["photos"], n["held_photos"]) == (int((~inside).sum()), int(inside.sum()))
    assert (n["references"], n["held_references"]) == (4 * int((~touching).sum()), 4 * int(touching.sum()))
    assert f"{n['photos']} photos and {n['references']} window descriptors" in printed
    assert ref["model"] == str(model) and len(ref["sha256"]) == 64
    metrics = pq.read_table(tmp_path / "adapter-metrics.parquet").to_pandas()
    assert list(metrics["step"]) == [1, 2, 3] and (metrics["references"] == n["references"]).all()

    # describe through the frozen model and the adapter: the adapter applied to the frozen store's descriptors
    adapted = tmp_path / "adapted" / "index.parquet"
    assert main(_describe(tiny, out, adapted)) == 0
    from pipeline.descriptors import load_descriptors

    rows_f, desc_f = load_descriptors(store.parent, "window")
    rows_a, desc_a = load_descriptors(adapted.parent, "window")
    assert list(rows_f["id"]) == list(rows_a["id"]) and desc_a.shape == (len(desc_f), 32)
    adapter = load_model(str(out)).adapter
    with torch.no_grad():
        expect = adapter(torch.from_numpy(desc_f)).numpy()
    assert (expect * desc_a).sum(1).min() > 0.999  # float16 storage of both stores
    # the same from the frozen store, without rendering (--from-store)
    fast = tmp_path / "fast" / "index.parquet"
    assert main([*_describe(tiny, out, fast), "--from-store", str(store)]) == 0
    rows_s, desc_s = load_descriptors(fast.parent, "window")
    assert list(rows_s["id"]) == list(rows_a["id"]) and (desc_s * desc_a).sum(1).min() > 0.999
    assert len(load_descriptors(fast.parent, "photo")[0]) == len(load_descriptors(adapted.parent, "photo")[0]) > 0
    sub = tmp_path / "sub" / "index.parquet"  # a store of the model itself: a part of it, copied
    assert main([*_describe(tiny, model, sub), "--from-store", str(store), "--region", region]) == 0
    rows_p, desc_p = load_descriptors(sub.parent, "window")
    assert 0 < len(rows_p) < len(rows_f) and set(rows_p["id"]) <= set(rows_f["id"])
    by_key = {(i, r): n for n, (i, r) in enumerate(zip(rows_f["id"], rows_f["rotation_deg"]))}
    assert np.array_equal(desc_p, desc_f[[by_key[k] for k in zip(rows_p["id"], rows_p["rotation_deg"])]])
    capsys.readouterr()
    assert main([*_describe(tiny, out, tmp_path / "f2" / "index.parquet"), "--from-store", str(adapted)]) == 1
    assert "not by the adapter's frozen model" in capsys.readouterr().err
    summary = tmp_path / "eval" / "summary.json"
    assert main(["run", "eval", "--workdir", str(tiny), "--store", str(adapted), "--out", str(summary), "-q"]) == 0
    assert json.loads(summary.read_text())["queries"] > 0


def test_run_train_whitening_learns_from_the_pairs_and_describes_through_its_frozen_model(
    tiny, frozen, tmp_path, capsys
):
    """--method whitening: the closed-form map of the training photos' pairs (pipeline/train/whitening.py) on the
    frozen store, written as an adapter checkpoint: describing through it equals whitening the frozen descriptors."""
    from pipeline.descriptors import load_descriptors
    from pipeline.train.settings import TrainSettings
    from pipeline.train.whitening import apply_whitening, learn_whitening, matching_pairs
    from stages.train import TrainStage

    model, store = frozen
    pairs = tmp_path / "pairs.parquet"  # loose pairs, so the store's zoom-9 windows have some
    made = ["run", "pairs", "--workdir", str(tiny), "--footprints", str(tiny / "truth.parquet"), "--iou", "0.01"]
    assert main([*made, "--out", str(pairs), "-q"]) == 0
    out = tmp_path / "whitening.pt"
    region = f"{tiny / 'regions.geojson'}#eval"
    base = ["run", "train", "--workdir", str(tiny), "--method", "whitening", "--features", str(store), "--pairs"]
    base += [str(pairs), "--exclude", region, "--iou", "0.01", "--shrinkage", "0.5", "--out", str(out), "-q"]
    capsys.readouterr()
    assert main(base) == 0
    s = TrainStage().resolve(
        TrainSettings(method="whitening", features=str(store), pairs=str(pairs), exclude=(region,), iou=0.01), tiny
    )
    data, _, n = TrainStage().adapter_set(s)
    p = data.photos.astype(np.float32)
    r = data.references.astype(np.float32)
    pr, rr = matching_pairs(p, r, data.positive_windows)
    assert len(pr) >= 2 and f"whitening learned from {len(pr)} pairs" in capsys.readouterr().out
    weight, bias = learn_whitening(p[pr], r[rr], np.concatenate([p, r]), 0.5)
    adapted = tmp_path / "white" / "index.parquet"
    assert main([*_describe(tiny, out, adapted), "--from-store", str(store)]) == 0
    _, frozen_desc = load_descriptors(store.parent, "window")
    _, desc = load_descriptors(adapted.parent, "window")
    assert ((apply_whitening(frozen_desc, weight, bias) * desc).sum(1) > 0.999).all()  # float16 storage
    capsys.readouterr()
    assert main([*base, "--shrinkage", "0", "--overwrite"]) == 1  # fewer pairs than dimensions: singular
    assert "pass a shrinkage above 0" in capsys.readouterr().err


def test_an_adapter_refuses_a_changed_frozen_model_and_bad_settings(tiny, frozen, tmp_path, capsys):
    model, store = frozen
    moved = save_checkpoint(tmp_path / "gem.pt", build_model(GEM))
    adapter = Adapter(AdapterConfig(384, 16))
    path = save_adapter(tmp_path / "a.pt", adapter, frozen_reference(str(moved)))
    assert load_model(str(path)).config.out_dim == 16
    save_checkpoint(moved, build_model(GEM, seed=1))  # the same name, other weights
    with pytest.raises(WeightsError, match="changed since the adapter was trained"):
        load_model(str(path))
    base = ["run", "train", "--workdir", str(tiny), "--method", "adapter", "--out", str(tmp_path / "x.pt"), "-q"]
    capsys.readouterr()
    assert main([*base, "--features", str(tmp_path / "none" / "index.parquet")]) == 1
    assert "no descriptor store there; make one with the frozen model" in capsys.readouterr().err
    assert main([*base, "--features", str(store), "--validation", f"{tiny / 'regions.geojson'}#eval"]) == 1
    assert "validates nothing" in capsys.readouterr().err


def test_supervised_adaptation_learns_the_distortion_from_its_pairs(tmp_path):
    """The ablation's supervised row: the true pairs as labels (Eq. 6 with the pairs as s), all four entries of a
    window positive; the sampled-references path (the pairs' windows plus 50 drawn) learns it too."""
    photos, refs = _world()
    refs4 = np.repeat(refs, 2, axis=0)  # each window twice (two rotations with one descriptor)
    positives = [np.array([2 * i, 2 * i + 1]) for i in range(len(photos))]
    p, r = torch.from_numpy(photos.astype(np.float32)), torch.from_numpy(refs4.astype(np.float32))
    truth = torch.arange(len(p))
    before = float((pseudo_labels(p, r) // 2 == truth).float().mean())
    for refs_per_step in (0, 50):
        run = _run(steps=60, photos_per_step=100, references_per_step=refs_per_step, out_dim=256, aic=False)
        adapter, _ = AdapterTrainer(
            replace(run, labels="pairs"), AdapterData(photos, refs4, positives), tmp_path / str(refs_per_step)
        ).run()
        with torch.no_grad():
            after = float((pseudo_labels(adapter(p), adapter(r)) // 2 == truth).float().mean())
        assert after > before + 0.15, (refs_per_step, before, after)
