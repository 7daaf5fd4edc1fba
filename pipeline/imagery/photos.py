"""Reading an astronaut photo for matching: its size from the file's header, then its pixels as stored.

The footprint's corner columns are the ground points of the photo's corner pixels *as stored*
(design.md), so a photo is decoded without applying an EXIF orientation tag: a viewer that
honours the tag shows it turned, the manifest's corners and homography refer to the stored image.
"""

from __future__ import annotations

import os
import warnings

import cv2
import numpy as np

MIN_SIDE_PX = 32
MAX_SIDE_PX = 16_000


class PhotoError(ValueError):
    """A photo that cannot be matched; the message names the file, says why and what to do."""


def photo_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """(width, height) in pixels from the file's header, without decoding its pixels (GDAL reads
    JPEG, PNG, TIFF and WebP headers); None when GDAL cannot read it."""
    import rasterio
    from rasterio.errors import RasterioIOError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NotGeoreferencedWarning: a photo has no georeference
        try:
            with rasterio.open(path) as ds:
                return int(ds.width), int(ds.height)
        except RasterioIOError:
            return None


def read_photo(path: str | os.PathLike) -> np.ndarray:
    """The photo at ``path`` as RGB uint8 (H, W, 3), pixels as stored (EXIF orientation not applied).

    Raises :class:`PhotoError` for a missing file, an image whose header says it is larger than
    ``MAX_SIDE_PX`` on a side (refused before its pixels are decoded, so a huge PNG or TIFF never
    fills a worker's memory), an unreadable file, or one smaller than ``MIN_SIDE_PX``."""
    path = str(path)
    if not os.path.isfile(path):
        raise PhotoError(f"image file not found: {path}")
    size = photo_size(path)
    if size is not None and max(size) > MAX_SIDE_PX:
        raise PhotoError(f"image too large ({size[0]}x{size[1]} px, more than {MAX_SIDE_PX} on a side): "
                         f"downscale it first: {path}")
    img = cv2.imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None:
        raise PhotoError(f"unreadable image (corrupt or not an image): {path}")
    if min(img.shape[:2]) < MIN_SIDE_PX:
        raise PhotoError(f"image too small ({img.shape[1]}x{img.shape[0]} px, need at least {MIN_SIDE_PX}): {path}")
    return np.ascontiguousarray(img[..., ::-1])
