"""SuperPoint + LightGlue with user-supplied weights, tested with generated (random, seeded) checkpoints.

The real weights cannot be shipped, so the checkpoints here only have the right key names and shapes: the
superpoint_v1.pth table below is written out independently of pipeline/matching/superpoint.py (from the published
Magic Leap network definition), and the LightGlue-for-SuperPoint file is derived from kornia's network in the old
cvg layout (``self_attn.{i}.*``/``cross_attn.{i}.*``, no derived buffer) of the v0.1_arxiv release files.
The whole file runs in a few seconds on 2 CPU cores.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.matching import (
    LightGlueMatcher,
    SuperPointExtractor,
    WeightsMismatchError,
    WeightsNotFoundError,
    build_extractor,
    build_matcher,
    user_weights_path,
)
from pipeline.matching.superpoint import logits_to_heatmap, sample_descriptors, select_keypoints

# superpoint_v1.pth: name -> weight shape (each also has a bias of shape (out_channels,))
SUPERPOINT_V1_SHAPES = {
    "conv1a": (64, 1, 3, 3),
    "conv1b": (64, 64, 3, 3),
    "conv2a": (64, 64, 3, 3),
    "conv2b": (64, 64, 3, 3),
    "conv3a": (128, 64, 3, 3),
    "conv3b": (128, 128, 3, 3),
    "conv4a": (128, 128, 3, 3),
    "conv4b": (128, 128, 3, 3),
    "convPa": (256, 128, 3, 3),
    "convPb": (65, 256, 1, 1),
    "convDa": (256, 128, 3, 3),
    "convDb": (256, 256, 1, 1),
}
H, W = 90, 122  # neither a multiple of 8


@pytest.fixture(autouse=True, scope="module")
def _threads_and_no_downloads():
    import kornia.feature.lightglue as kornia_lightglue

    def refuse(*args, **kwargs):
        raise AssertionError(f"a download was attempted: {args}")

    old = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: a second thread only adds synchronisation (badly so on a busy CPU)
    saved = (torch.hub.load_state_dict_from_url, kornia_lightglue.load_state_dict_from_url)
    torch.hub.load_state_dict_from_url = refuse
    kornia_lightglue.load_state_dict_from_url = refuse
    yield
    torch.hub.load_state_dict_from_url, kornia_lightglue.load_state_dict_from_url = saved
    torch.set_num_threads(old)


def _superpoint_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random He-initialised weights in the superpoint_v1.pth layout."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in SUPERPOINT_V1_SHAPES.items():
        fan_in = shape[1] * shape[2] * shape[3]
        state[f"{name}.weight"] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
        state[f"{name}.bias"] = torch.randn(shape[0], generator=g) * 0.01
    return state


def _lightglue_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random LightGlue-for-SuperPoint weights in the layout of cvg's superpoint_lightglue.pth."""
    from kornia.feature import LightGlue

    conf = {k: v for k, v in LightGlue.features["superpoint"].items() if k != "weights"}
    torch.manual_seed(seed)
    model = LightGlue(features=None, **conf)  # features=None: kornia downloads nothing
    state = {}
    for key, value in model.state_dict().items():
        if key == "confidence_thresholds":  # derived from n_layers, not stored in the release files
            continue
        parts = key.split(".")
        if parts[0] == "transformers":  # transformers.{i}.self_attn.X -> self_attn.{i}.X
            key = ".".join([parts[2], parts[1], *parts[3:]])
        state[key] = value.clone()
    return state


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("superpoint-weights")
    torch.save(_superpoint_state(), d / "superpoint_v1.pth")
    torch.save(_lightglue_state(), d / "superpoint_lightglue.pth")
    return d


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """Seeded synthetic RGB image with blobs and edges (uint8, H x W x 3)."""
    rng = np.random.default_rng(0)
    img = np.zeros((H, W), np.float32)
    yy, xx = np.mgrid[0:H, 0:W]
    for _ in range(25):
        cx, cy, r = rng.uniform(0, W), rng.uniform(0, H), rng.uniform(2, 8)
        img += rng.uniform(0.3, 1.0) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
    img += 0.05 * rng.standard_normal((H, W))
    img = np.clip(img / img.max(), 0, 1)
    return np.repeat((img * 255).astype(np.uint8)[:, :, None], 3, axis=2)


@pytest.fixture(scope="module")
def extractor(weights_dir):
    return build_extractor("superpoint", max_keypoints=64, weights_dir=weights_dir)


# ---------------------------------------------------------------- extractor


def test_extractor_outputs(extractor, image):
    assert isinstance(extractor, SuperPointExtractor) and not extractor.training
    out = extractor(image)
    n = len(out["keypoints"])
    assert 0 < n <= 64
    assert out["keypoints"].shape == (n, 2) and out["keypoints"].dtype == torch.float32
    assert out["descriptors"].shape == (n, 256) and out["descriptors"].dtype == torch.float32
    assert out["scores"].shape == (n,) and out["scores"].dtype == torch.float32
    assert out["image_size"] == (W, H)
    k = out["keypoints"]
    b = extractor.conf["remove_borders"]
    assert torch.equal(k, k.round())  # pixel-resolution detections, pixel centres at integers
    assert (k[:, 0] >= b).all() and (k[:, 0] < W - b).all() and (k[:, 1] >= b).all() and (k[:, 1] < H - b).all()
    assert torch.allclose(out["descriptors"].norm(dim=1), torch.ones(n), atol=1e-5)
    s = out["scores"]
    assert (s > extractor.conf["detection_threshold"]).all() and (s[:-1] >= s[1:]).all()
    assert len(set(map(tuple, k.tolist()))) == n
    # a float gray (H, W) tensor gives the same features as the equal-channel RGB array
    gray = torch.from_numpy(image[:, :, 0]).float() / 255.0
    assert torch.equal(extractor(gray)["keypoints"], k)


def test_extractor_options(weights_dir, image):
    every = build_extractor("superpoint", max_keypoints=0, weights_dir=weights_dir, nms_radius=2)(image)
    assert len(every["keypoints"]) > 64  # max_keypoints <= 0 keeps every detection
    small = build_extractor("superpoint", max_keypoints=32, weights_dir=weights_dir, resize=64)(image)
    assert small["image_size"] == (W, H) and 0 < len(small["keypoints"]) <= 32
    k = small["keypoints"]
    assert (k >= 0).all() and (k[:, 0] <= W - 1).all() and (k[:, 1] <= H - 1).all()  # back in the input frame
    with pytest.raises(ValueError, match="unknown superpoint options"):
        build_extractor("superpoint", weights_dir=weights_dir, keypoint_threshold=0.1)


# ---------------------------------------------------------------- post-processing, known answers


def test_single_peak_gives_exactly_that_keypoint():
    h, w = 37, 45  # padded to 40 x 48 inside the network: 5 x 6 cells
    logits = torch.zeros(1, 65, 5, 6)
    logits[:, 64] = 10.0  # everything in the dustbin: heatmap ~ 4.5e-5 below the threshold ...
    logits[0, 8 * 5 + 6, 2, 3] = 10.0  # ... except cell (row 2, col 3), offset (dy 5, dx 6): pixel x=30, y=21
    logits[0, 8 * 6 + 2, 4, 1] = 10.0  # pixel x=10, y=38: in the padding (y >= 37), must not appear
    logits[0, 8 * 1 + 1, 0, 0] = 10.0  # pixel x=1, y=1: within remove_borders
    heatmap = logits_to_heatmap(logits)[0, :h, :w]
    assert heatmap.shape == (h, w)
    kpts, scores = select_keypoints(heatmap, nms_radius=4, detection_threshold=0.005, remove_borders=4)
    assert kpts.tolist() == [[30.0, 21.0]] and kpts.dtype == torch.float32
    expected = np.exp(10.0) / (2 * np.exp(10.0) + 63)
    assert scores.tolist() == pytest.approx([expected], rel=1e-5)


def test_nms_threshold_and_max_keypoints():
    heat = torch.zeros(40, 40)
    heat[10, 10], heat[10, 13], heat[20, 30], heat[30, 20], heat[30, 10] = 0.9, 0.5, 0.7, 0.6, 0.004
    kpts, scores = select_keypoints(heat, nms_radius=4, detection_threshold=0.005, remove_borders=4)
    # (13, 10) lies within 4 px of the stronger (10, 10); (10, 30) is below the threshold
    assert kpts.tolist() == [[10, 10], [30, 20], [20, 30]]
    assert scores.tolist() == pytest.approx([0.9, 0.7, 0.6])
    kpts, _ = select_keypoints(heat, nms_radius=2, detection_threshold=0.005, remove_borders=4, max_keypoints=2)
    assert kpts.tolist() == [[10, 10], [30, 20]]
    kpts, _ = select_keypoints(heat, nms_radius=2, detection_threshold=0.005, remove_borders=4)
    assert [13, 10] in kpts.tolist()  # 3 px apart: both survive a radius of 2


def test_descriptor_sampling_uses_cell_centres():
    desc = torch.zeros(1, 4, 2, 2)  # one-hot descriptor per cell: channel 2 * row + col
    for i in range(2):
        for j in range(2):
            desc[0, 2 * i + j, i, j] = 1.0
    pts = torch.tensor([[3.5, 3.5], [11.5, 3.5], [3.5, 11.5], [7.5, 3.5], [0.0, 0.0], [15.0, 15.0]])
    d = sample_descriptors(desc, pts, cell=8)
    assert d.shape == (6, 4)
    assert torch.allclose(d[:3], torch.eye(4)[:3], atol=1e-6)  # exactly at the cell centres
    assert torch.allclose(d[3], torch.tensor([1.0, 1.0, 0, 0]) / 2**0.5, atol=1e-6)  # halfway between two cells
    assert torch.allclose(d[4], torch.eye(4)[0], atol=1e-6)  # before the first centre: the border cell
    assert torch.allclose(d[5], torch.eye(4)[3], atol=1e-6)
    assert sample_descriptors(desc, torch.zeros(0, 2)).shape == (0, 4)


# ---------------------------------------------------------------- matcher


def test_lightglue_matcher_runs_on_superpoint_features(weights_dir, extractor, image):
    matcher = build_matcher("superpoint", weights_dir=weights_dir)
    assert isinstance(matcher, LightGlueMatcher) and matcher.features == "superpoint"
    assert not matcher.model.training
    f0 = extractor(image)
    f1 = extractor(np.ascontiguousarray(np.roll(image, (3, 5), axis=(0, 1))))
    idx, scores = matcher.match_indices(f0, f1)
    assert idx.dtype == np.int64 and idx.shape == (len(scores), 2) and scores.dtype == np.float32
    assert (idx[:, 0] < len(f0["keypoints"])).all() and (idx[:, 1] < len(f1["keypoints"])).all()
    # random weights give no confident match; without the confidence filter the mutual best ones come back
    loose = build_matcher("superpoint", weights_dir=weights_dir, filter_threshold=0.0)
    m0, m1, s = loose(f0, f1)
    assert len(s) > 0 and m0.shape == m1.shape == (len(s), 2) and m0.dtype == np.float32 and s.dtype == np.float32
    assert set(map(tuple, m0.tolist())) <= set(map(tuple, f0["keypoints"].tolist()))


def test_lightglue_checkpoint_maps_every_key(weights_dir):
    from kornia.feature import LightGlue

    raw = torch.load(weights_dir / "superpoint_lightglue.pth", weights_only=True)
    matcher = LightGlueMatcher("superpoint", weights_dir=weights_dir)
    state = matcher.model.state_dict()
    assert "input_proj.weight" not in state  # SuperPoint's 256-D descriptors need no projection
    assert len(state) == len(raw) + 1  # + the derived confidence_thresholds buffer
    assert torch.equal(state["transformers.3.cross_attn.to_qk.weight"], raw["cross_attn.3.to_qk.weight"])
    assert LightGlue.features["superpoint"]["input_dim"] == 256


# ---------------------------------------------------------------- missing / wrong weights


def _assert_helpful(message: str) -> None:
    for text in (
        "superpoint_v1.pth",
        "superpoint_lightglue.pth",
        "--weights-dir",
        "magicleap/SuperPointPretrainedNetwork",
        "cvg/LightGlue/releases",
        "non-commercial",
    ):
        assert text in message, text


def test_missing_folder_or_files(tmp_path, weights_dir):
    missing = tmp_path / "no-such-folder"
    for build in (
        lambda: build_extractor("superpoint", weights_dir=missing),
        lambda: build_matcher("superpoint", weights_dir=missing),
    ):
        with pytest.raises(WeightsNotFoundError) as err:
            build()
        assert str(missing) in str(err.value)
        _assert_helpful(str(err.value))
    with pytest.raises(WeightsNotFoundError, match="none was given") as err:
        build_extractor("superpoint")
    _assert_helpful(str(err.value))
    # a folder with only the SuperPoint network: the extractor loads, the matcher names the missing file
    only_sp = tmp_path / "only-superpoint"
    only_sp.mkdir()
    (only_sp / "superpoint_v1.pth").symlink_to(weights_dir / "superpoint_v1.pth")
    assert build_extractor("superpoint", weights_dir=only_sp) is not None
    with pytest.raises(WeightsNotFoundError, match=r"^superpoint_lightglue\.pth not found") as err:
        build_matcher("superpoint", weights_dir=only_sp)
    assert str(only_sp) in str(err.value)
    _assert_helpful(str(err.value))
    # the torch.hub cache name of the release file is accepted
    (only_sp / "superpoint_lightglue_v0-1_arxiv.pth").symlink_to(weights_dir / "superpoint_lightglue.pth")
    assert user_weights_path(only_sp, "superpoint_lightglue").name == "superpoint_lightglue_v0-1_arxiv.pth"


def test_renamed_or_reshaped_superpoint_key(tmp_path):
    state = _superpoint_state()
    state["convDb.weights"] = state.pop("convDb.weight")
    torch.save(state, tmp_path / "superpoint_v1.pth")
    with pytest.raises(WeightsMismatchError) as err:
        build_extractor("superpoint", weights_dir=tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "superpoint_v1.pth") in msg
    assert "missing keys (1): convDb.weight" in msg and "unexpected keys (1): convDb.weights" in msg

    state = _superpoint_state()
    state["convPb.weight"] = state["convPb.weight"][:64]
    torch.save(state, tmp_path / "superpoint_v1.pth")
    with pytest.raises(WeightsMismatchError, match=r"convPb.weight: file \(64, 256, 1, 1\) vs network \(65,"):
        build_extractor("superpoint", weights_dir=tmp_path)


def test_renamed_lightglue_key(tmp_path, weights_dir):
    (tmp_path / "superpoint_v1.pth").symlink_to(weights_dir / "superpoint_v1.pth")
    state = torch.load(weights_dir / "superpoint_lightglue.pth", weights_only=True)
    state["self_attn.3.Wqkv_renamed.weight"] = state.pop("self_attn.3.Wqkv.weight")
    torch.save(state, tmp_path / "superpoint_lightglue.pth")
    with pytest.raises(WeightsMismatchError) as err:
        build_matcher("superpoint", weights_dir=tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "superpoint_lightglue.pth") in msg
    assert "missing keys (1): transformers.3.self_attn.Wqkv.weight" in msg
    assert "(in the file: self_attn.3.Wqkv_renamed.weight)" in msg


def test_other_features_ignore_weights_dir(tmp_path):
    # SIFT needs no weights: a weights_dir (e.g. from --weights-dir) is accepted and ignored
    assert build_extractor("sift", weights_dir=tmp_path / "unused") is not None
    assert build_matcher("sift", weights_dir=tmp_path / "unused") is not None


def test_footprints_stage_runs_superpoint_from_weights_dir(weights_dir, tiny, tmp_path, capsys):
    """`run footprints --extractor superpoint --weights-dir DIR` loads the user's files in the workers.

    The weights are generated (random): whatever they match is chance, so the right outcome is no footprint.
    No calibration exists for SuperPoint here: the run says so and decides on inliers alone."""
    from manifests import read_manifest
    from stages.cli import main

    (tmp_path / "cheap.toml").write_text(
        "[footprints]\nzooms = [11]\nrotations = [0]\nmax_keypoints = 128\n"
        "photo_px = 128\nwindow_px = 256\nworkers = 1\n"
    )
    out = tmp_path / "fp.parquet"
    assert (
        main(
            [
                "run",
                "footprints",
                "--workdir",
                str(tiny),
                "--out",
                str(out),
                "--extractor",
                "superpoint",
                "--weights-dir",
                str(weights_dir),
                "--limit",
                "1",
                "--config",
                str(tmp_path / "cheap.toml"),
                "-q",
            ]
        )
        == 0
    )
    assert "no calibration for superpoint features" in capsys.readouterr().err  # the CLI logs to stderr
    row = read_manifest(out, "footprints", geometry=False).iloc[0]
    assert row["status"] == "not_localized", row["reason"]
    assert row["matcher"] == "superpoint+lightglue" and pd.isna(row["confidence"])
