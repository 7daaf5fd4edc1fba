"""The learned whitening (pipeline/train/whitening.py): its defining equations, and a domain offset it removes."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.train.whitening import apply_whitening, learn_whitening, matching_pairs


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_the_whitening_equations_hold():
    """weight whitens the pairs' (shrunk) difference covariance, decorrelates the descriptors in descending order of
    variance, and the bias takes the descriptors' mean away."""
    rng = np.random.default_rng(0)
    a, b, x = _unit(rng.normal(size=(40, 8))), _unit(rng.normal(size=(40, 8))), _unit(rng.normal(size=(60, 8)))
    weight, bias = learn_whitening(a, b, x, shrinkage=0.5)
    cs = (a - b).T @ (a - b) / 40
    cs += 0.5 * np.trace(cs) / 8 * np.eye(8)
    np.testing.assert_allclose(weight @ cs @ weight.T, np.eye(8), atol=1e-9)
    np.testing.assert_allclose(bias, -weight @ x.mean(0), atol=1e-12)
    z = (x - x.mean(0)) @ weight.T
    cov = z.T @ z / len(z)
    np.testing.assert_allclose(cov, np.diag(np.diag(cov)), atol=1e-9)
    assert np.all(np.diff(np.diag(cov)) <= 1e-12)
    w3, b3 = learn_whitening(a, b, x, shrinkage=0.5, dim=3)  # the first rows, up to their signs
    np.testing.assert_allclose(np.abs(w3), np.abs(weight[:3]), atol=1e-9)
    assert apply_whitening(x, w3, b3).shape == (60, 3)
    with pytest.raises(ValueError, match="singular"):
        learn_whitening(a[:3], b[:3], x, shrinkage=0.0)  # 3 pairs cannot span 8 dimensions
    with pytest.raises(ValueError, match="dim must be in"):
        learn_whitening(a, b, x, dim=9)


def test_whitening_removes_the_photos_look_and_finds_their_windows():
    """Photos = their window plus one strong look shared by all photos (the camera, the haze) and noise: by cosine
    a photo's nearest window is the one most aligned with that look, not its own; whitening learned on other pairs
    of the same kind finds most photos' own windows."""
    rng = np.random.default_rng(1)
    d, look = 32, _unit(rng.normal(size=(1, 32)))[0]

    def world(n):
        windows = _unit(rng.normal(size=(n, d)) + 2.0 * look * rng.normal(size=(n, 1)))  # the look varies on the ground
        photos = _unit(windows + 3.0 * look + 0.15 * rng.normal(size=(n, d)))
        return photos, windows

    train_p, train_w = world(400)
    test_p, test_w = world(100)
    raw = np.mean(np.argmax(test_p @ test_w.T, axis=1) == np.arange(100))
    weight, bias = learn_whitening(train_p, train_w, np.concatenate([train_p, train_w]), shrinkage=0.1)
    zp, zw = apply_whitening(test_p, weight, bias), apply_whitening(test_w, weight, bias)
    white = np.mean(np.argmax(zp @ zw.T, axis=1) == np.arange(100))
    assert raw < 0.5 and white > 0.9, (raw, white)


def test_matching_pairs_take_the_rotation_most_like_the_photo():
    rng = np.random.default_rng(2)
    refs = _unit(rng.normal(size=(12, 16)))  # three windows at four rotations: rows 4w .. 4w + 3
    photos = _unit(refs[[5, 10]] + 0.05 * rng.normal(size=(2, 16)))  # photo 0 is row 5's view, photo 1 row 10's
    groups = [[np.arange(4, 8), np.arange(0, 4)], [np.arange(8, 12)]]
    p_rows, r_rows = matching_pairs(photos, refs, groups)
    assert p_rows.tolist() == [0, 0, 1] and r_rows[0] == 5 and r_rows[2] == 10 and 0 <= r_rows[1] < 4
