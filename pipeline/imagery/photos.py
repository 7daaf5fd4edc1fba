"""Reading an astronaut photo for matching: its size from the file's header, then its pixels as stored.

The footprint's corner columns are the ground points of the photo's corner pixels *as stored*
(design.md), so a photo is decoded without applying an EXIF orientation tag: a viewer that
honours the tag shows it turned, the manifest's corners and homography refer to the stored image.

libjpeg decodes a damaged JPEG with warnings only (a cut file comes back full-size and partly
grey), so a JPEG's structure is checked before decoding (:func:`jpeg_damage`: segment lengths,
the markers in the compressed data, an end-of-image marker after the last scan; a few ms for
10 MB) and a damaged one is refused with the reason.
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


# Second bytes of the markers a JPEG may hold after its first scan (between the scans of a
# progressive or multi-scan image): SOS, DHT, DQT, DRI, DAC, DNL (the line count after the first
# scan), COM and APP0-APP15. Each is a segment with a 2-byte length; EOI (0xD9) ends the image.
_BETWEEN_SCANS = np.zeros(256, bool)
_BETWEEN_SCANS[[0xDA, 0xC4, 0xDB, 0xDD, 0xCC, 0xDC, 0xFE, *range(0xE0, 0xF0)]] = True
# After a 0xFF byte in the compressed data and harmless: a stuffed zero, a fill byte, RST0-RST7.
_IN_SCAN = np.zeros(256, bool)
_IN_SCAN[[0x00, 0xFF, *range(0xD0, 0xD8)]] = True


def _segment_end(data: np.ndarray, at: int, where: str) -> tuple[int, str | None]:
    """(byte after the segment whose marker 0xFFxx is at byte ``at``, None) from its 2-byte
    big-endian length, or (0, what is wrong) when the length is cut off, runs past the end of
    the file or is less than 2 bytes. ``where`` names the segment in the message."""
    n, marker = int(data.size), int(data[at + 1])
    if at + 4 > n:
        return 0, f"truncated JPEG: the file ends at byte {n} inside the {where} 0xFF{marker:02X} at byte {at}"
    length = int(data[at + 2]) << 8 | int(data[at + 3])
    if length < 2:
        return 0, f"corrupt JPEG data: the {where} 0xFF{marker:02X} at byte {at} has an invalid length ({length})"
    if at + 2 + length > n:
        return 0, (
            f"truncated JPEG: the {where} 0xFF{marker:02X} at byte {at} runs past the end of "
            f"the file (to byte {at + 2 + length} of {n})"
        )
    return at + 2 + length, None


def jpeg_damage(data: np.ndarray) -> str | None:
    """What is structurally wrong with the JPEG file whose bytes are ``data`` (uint8, 1-D), or
    None when nothing is: a header segment or a segment between scans whose length runs past the
    end of the file, no scan at all, a marker that cannot occur in the compressed data (bytes
    overwritten), no end-of-image marker after the last scan (a cut file). Bytes after the
    end-of-image marker are allowed (some cameras append data). One vectorized pass over the
    compressed data: a few ms for a 10 MB file.

    The segments before the first scan, and those between scans, are skipped by their length,
    never scanned: an APPn (EXIF) segment holding a thumbnail with its own markers is harmless."""
    n = int(data.size)
    # Header: the segments after SOI up to the first SOS. Stray bytes between segments are
    # skipped as libjpeg skips them (it warns; the pixels are unharmed).
    pos = 2
    while True:
        if pos < n - 1 and data[pos] != 0xFF:  # rare: look for the next 0xFF
            ff = np.flatnonzero(data[pos : n - 1] == 0xFF)
            pos = pos + int(ff[0]) if ff.size else n
        if pos >= n - 1:
            return f"truncated JPEG: the file ends at byte {n} in its header, before any image data"
        marker = int(data[pos + 1])
        if marker in (0x00, 0x01, 0xFF) or 0xD0 <= marker <= 0xD7:  # fill byte, no segment
            pos += 1 if marker == 0xFF else 2
            continue
        if marker == 0xD9:
            return f"corrupt JPEG data: end-of-image marker at byte {pos}, before any image data"
        end, damage = _segment_end(data, pos, "header segment")
        if damage is not None:
            return damage
        if marker == 0xDA:
            break
        pos = end
    # Compressed data, from the first SOS header on: every 0xFF followed by a byte outside
    # _IN_SCAN is a marker; the segments it starts between scans are skipped by their length.
    events = pos + np.flatnonzero(data[pos : n - 1] == 0xFF)
    events = events[~_IN_SCAN[data[events + 1]]]
    k = 0
    while k < events.size:
        at = int(events[k])
        if at < end:  # inside the SOS header or a segment skipped by its length
            k = int(np.searchsorted(events, end))
            continue
        marker = int(data[at + 1])
        if marker == 0xD9:
            return None
        if not _BETWEEN_SCANS[marker]:
            return f"corrupt JPEG data: invalid marker 0xFF{marker:02X} at byte {at} in the compressed data"
        end, damage = _segment_end(data, at, "segment")
        if damage is not None:
            return damage
        k += 1
    return f"truncated JPEG: no end-of-image marker after the last scan (the file ends at byte {n})"


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
    fills a worker's memory), a damaged JPEG (cut short or with bytes overwritten: libjpeg would
    decode it with grey areas; see :func:`jpeg_damage`), a file that cannot be read (permissions, I/O
    errors) or decoded, or one smaller than
    ``MIN_SIDE_PX`` pixels on a side."""
    path = str(path)
    if not os.path.isfile(path):
        raise PhotoError(f"image file not found: {path}")
    size = photo_size(path)
    if size is not None and max(size) > MAX_SIDE_PX:
        raise PhotoError(
            f"image too large ({size[0]}x{size[1]} px, more than {MAX_SIDE_PX} on a side): downscale it first: {path}"
        )
    try:
        data = np.fromfile(path, np.uint8)  # read once: checked, then decoded from memory
    except OSError as e:  # no read permission, an I/O error on a network disk, a file removed meanwhile
        raise PhotoError(
            f"cannot read the image file ({e.strerror or e}): check its permissions and disk, "
            f"then run again with --retry-errors: {path}"
        ) from None
    if data.size >= 2 and data[0] == 0xFF and data[1] == 0xD8:
        damage = jpeg_damage(data)
        if damage is not None:
            raise PhotoError(f"{damage}: re-download or re-export the photo: {path}")
    try:  # the same pixels as cv2.imread(path, same flags)
        img = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION) if data.size else None
    except cv2.error:
        img = None
    if img is None:
        raise PhotoError(f"unreadable image (corrupt or not an image): {path}")
    if min(img.shape[:2]) < MIN_SIDE_PX:
        raise PhotoError(f"image too small ({img.shape[1]}x{img.shape[0]} px, need at least {MIN_SIDE_PX}): {path}")
    return np.ascontiguousarray(img[..., ::-1])
