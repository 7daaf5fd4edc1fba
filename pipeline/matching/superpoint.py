"""SuperPoint: a VGG-style keypoint detector and descriptor (DeTone, Malisiewicz and Rabinovich, CVPRW 2018).

This file is our own implementation of the network and of its post-processing. The module names and tensor shapes
follow the official Magic Leap checkpoint ``superpoint_v1.pth`` (a plain state dict), so that file loads with
``strict=True``; the weights themselves are not shipped (see :mod:`pipeline.matching.weights`).

Network (all convolutions have a bias; ReLU after every convolution except the two 1x1 output layers; no batch norm):

========================  =======================  ==========================================
module                    weight shape             role
========================  =======================  ==========================================
``conv1a``, ``conv1b``    (64, 1, 3, 3),           encoder, full resolution, then 2x2 max-pool
                          (64, 64, 3, 3)
``conv2a``, ``conv2b``    (64, 64, 3, 3) x 2       encoder, 1/2 resolution, then 2x2 max-pool
``conv3a``, ``conv3b``    (128, 64, 3, 3),         encoder, 1/4 resolution, then 2x2 max-pool
                          (128, 128, 3, 3)
``conv4a``, ``conv4b``    (128, 128, 3, 3) x 2     encoder, 1/8 resolution
``convPa``, ``convPb``    (256, 128, 3, 3),        detector head: 64 sub-pixel positions of an
                          (65, 256, 1, 1)          8x8 cell + 1 "no keypoint" dustbin
``convDa``, ``convDb``    (256, 128, 3, 3),        descriptor head: a 256-D descriptor per cell
                          (256, 256, 1, 1)
========================  =======================  ==========================================

Conventions:

* input: grayscale ``(1, 1, H, W)`` float tensor in ``[0, 1]`` (no mean/std normalisation);
* ``H`` and ``W`` need not be multiples of 8: the image is **padded** at the bottom and right (replicating its last
  row/column, at most 7 pixels, so no artificial edge is created) before the network, and the detection heatmap is
  **cropped** back to ``(H, W)`` before non-maximum suppression, so every input pixel can hold a keypoint and none
  lies in the padding;
* keypoints are pixel ``(x, y)`` = (column, row) of the input, pixel centres at integer coordinates (SuperPoint
  detects at pixel resolution, so the keypoints are whole numbers);
* descriptor cell ``(i, j)`` covers pixels ``[8j, 8j + 7] x [8i, 8i + 7]``, so its centre is pixel
  ``(8j + 3.5, 8i + 3.5)``; descriptors are interpolated bilinearly between cell centres (nearest cell beyond the
  outermost centres) and L2-normalised.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

CELL = 8  # the encoder downsamples by 2 ** 3
DESCRIPTOR_DIM = 256
# (name, in_channels, out_channels, kernel_size) in the layout of superpoint_v1.pth
LAYERS = (
    ("conv1a", 1, 64, 3),
    ("conv1b", 64, 64, 3),
    ("conv2a", 64, 64, 3),
    ("conv2b", 64, 64, 3),
    ("conv3a", 64, 128, 3),
    ("conv3b", 128, 128, 3),
    ("conv4a", 128, 128, 3),
    ("conv4b", 128, 128, 3),
    ("convPa", 128, 256, 3),
    ("convPb", 256, CELL * CELL + 1, 1),
    ("convDa", 128, 256, 3),
    ("convDb", 256, DESCRIPTOR_DIM, 1),
)


def pad_to_multiple(image: torch.Tensor, multiple: int = CELL) -> torch.Tensor:
    """Pad ``(B, C, H, W)`` at the bottom and right to multiples of ``multiple`` by replicating the last row/column."""
    h, w = image.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return image
    return F.pad(image, (0, pw, 0, ph), mode="replicate")


def logits_to_heatmap(logits: torch.Tensor) -> torch.Tensor:
    """Detector logits ``(B, 65, Hc, Wc)`` -> keypoint probability heatmap ``(B, 8 Hc, 8 Wc)`` in ``[0, 1]``.

    Softmax over the 65 channels, drop the dustbin (channel 64), and place channel ``k = 8 * dy + dx`` of cell
    ``(i, j)`` at pixel ``(row 8i + dy, column 8j + dx)`` (a pixel shuffle).
    """
    prob = logits.softmax(dim=1)[:, :-1]
    return F.pixel_shuffle(prob, CELL)[:, 0]


def nms_mask(heatmap: torch.Tensor, radius: int) -> torch.Tensor:
    """Local maxima of ``(B, H, W)``: pixels equal to the maximum of their ``(2r+1) x (2r+1)`` window.

    Window pixels outside the image are ignored. ``radius <= 0`` keeps every pixel. Exact ties inside one
    window (a flat plateau) keep every tied pixel.
    """
    if radius <= 0:
        return torch.ones_like(heatmap, dtype=torch.bool)
    k = 2 * int(radius) + 1
    local_max = F.max_pool2d(heatmap[:, None], kernel_size=k, stride=1, padding=int(radius))[:, 0]
    return heatmap == local_max


def select_keypoints(
    heatmap: torch.Tensor,
    nms_radius: int = 4,
    detection_threshold: float = 0.005,
    remove_borders: int = 4,
    max_keypoints: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keypoints of one ``(H, W)`` heatmap, strongest first.

    In order: non-maximum suppression (:func:`nms_mask`), score ``> detection_threshold``, removal of keypoints
    whose row or column is within ``remove_borders`` pixels of the border (kept: ``b <= x < W - b``,
    ``b <= y < H - b``), then the ``max_keypoints`` highest scores (all when ``None`` or ``<= 0``; ties keep
    raster order).

    Returns ``keypoints`` ``(N, 2)`` float32 pixel ``(x, y)`` and ``scores`` ``(N,)`` (heatmap values).
    """
    h, w = heatmap.shape
    keep = nms_mask(heatmap[None], nms_radius)[0] & (heatmap > detection_threshold)
    b = int(remove_borders)
    if b > 0:
        border = torch.ones_like(keep)
        border[b : h - b, b : w - b] = False
        keep &= ~border
    ys, xs = torch.nonzero(keep, as_tuple=True)
    scores = heatmap[ys, xs]
    order = torch.sort(scores, descending=True, stable=True).indices
    if max_keypoints is not None and max_keypoints > 0:
        order = order[:max_keypoints]
    keypoints = torch.stack([xs[order], ys[order]], dim=1).to(torch.float32)
    return keypoints, scores[order]


def sample_descriptors(descriptors: torch.Tensor, keypoints: torch.Tensor, cell: int = CELL) -> torch.Tensor:
    """Interpolate a coarse descriptor map at pixel keypoints.

    Args:
        descriptors: ``(1, D, Hc, Wc)`` map, one descriptor per ``cell x cell`` block of pixels.
        keypoints: ``(N, 2)`` pixel ``(x, y)``, pixel centres at integers.

    Returns ``(N, D)`` L2-normalised descriptors. Cell ``j`` spans pixels ``[cell*j, cell*j + cell - 1]``, so its
    centre is at ``x = cell*j + (cell - 1)/2``, i.e. coarse coordinate ``u = (x + 0.5) / cell - 0.5``; in the
    ``align_corners=False`` convention of :func:`torch.nn.functional.grid_sample` this is
    ``(2x + 1) / (cell * Wc) - 1``. Beyond the outermost centres the border cell is used.
    """
    d = descriptors.shape[1]
    if len(keypoints) == 0:
        return descriptors.new_zeros((0, d))
    hc, wc = descriptors.shape[-2:]
    size = keypoints.new_tensor([cell * wc, cell * hc])
    grid = (2.0 * keypoints + 1.0) / size - 1.0
    sampled = F.grid_sample(
        descriptors,
        grid.view(1, 1, -1, 2).to(descriptors.dtype),
        mode="bilinear",
        padding_mode="border",
        align_corners=False,
    )  # (1, D, 1, N)
    return F.normalize(sampled[0, :, 0].t(), p=2, dim=1)


class SuperPoint(nn.Module):
    """The SuperPoint network with the module names of ``superpoint_v1.pth`` plus its post-processing.

    ``forward`` takes one grayscale image ``(1, 1, H, W)`` in ``[0, 1]`` and returns a dict with ``keypoints``
    ``(N, 2)`` float32 pixel ``(x, y)``, ``scores`` ``(N,)`` in ``[0, 1]`` (strongest first) and ``descriptors``
    ``(N, 256)`` (unit L2 norm). The network starts with random weights: load a checkpoint with
    ``load_state_dict``.
    """

    default_conf: dict[str, Any] = {
        "nms_radius": 4,  # pixels; suppression window (2r+1) x (2r+1)
        "detection_threshold": 0.005,  # on the heatmap probability
        "remove_borders": 4,  # pixels
        "max_keypoints": 2048,  # None or <= 0: all
    }

    def __init__(self, **conf: Any) -> None:
        super().__init__()
        unknown = set(conf) - set(self.default_conf)
        if unknown:
            raise ValueError(f"unknown SuperPoint options: {sorted(unknown)}")
        self.conf = {**self.default_conf, **conf}
        for name, c_in, c_out, k in LAYERS:
            self.add_module(name, nn.Conv2d(c_in, c_out, kernel_size=k, stride=1, padding=k // 2))

    def dense(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Network outputs for ``(B, 1, H, W)`` with ``H`` and ``W`` multiples of 8.

        Returns detector ``logits`` ``(B, 65, H/8, W/8)`` and L2-normalised ``descriptors`` ``(B, 256, H/8, W/8)``.
        """
        x = image
        for stage in (("conv1a", "conv1b"), ("conv2a", "conv2b"), ("conv3a", "conv3b")):
            for name in stage:
                x = F.relu(getattr(self, name)(x))
            x = F.max_pool2d(x, kernel_size=2, stride=2)
        x = F.relu(self.conv4b(F.relu(self.conv4a(x))))
        logits = self.convPb(F.relu(self.convPa(x)))
        descriptors = F.normalize(self.convDb(F.relu(self.convDa(x))), p=2, dim=1)
        return logits, descriptors

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        if image.ndim != 4 or image.shape[:2] != (1, 1):
            raise ValueError(f"expected a (1, 1, H, W) grayscale image, got shape {tuple(image.shape)}")
        h, w = image.shape[-2:]
        logits, desc_map = self.dense(pad_to_multiple(image, CELL))
        heatmap = logits_to_heatmap(logits)[0, :h, :w]
        c = self.conf
        keypoints, scores = select_keypoints(
            heatmap, c["nms_radius"], c["detection_threshold"], c["remove_borders"], c["max_keypoints"]
        )
        return {"keypoints": keypoints, "scores": scores, "descriptors": sample_descriptors(desc_map, keypoints)}
