"""Reading photos: pixels as stored, sizes from the header, one clear error per bad file."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest

from pipeline.imagery.photos import PhotoError, photo_size, read_photo


def _with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """A JPEG with an APP1 Exif segment whose only tag is Orientation (0x0112)."""
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1)
    tiff += struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 0)
    body = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body + jpeg[2:]


def test_exif_orientation_is_not_applied(tmp_path):
    bgr = np.zeros((100, 200, 3), np.uint8)
    bgr[:, :100] = (0, 0, 255)  # left half red
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
    path = tmp_path / "turned.jpg"
    path.write_bytes(_with_exif_orientation(buf.tobytes(), 6))  # "rotate 90 deg to display"
    assert cv2.imread(str(path)).shape == (200, 100, 3)  # OpenCV's default would turn it
    rgb = read_photo(path)
    assert rgb.shape == (100, 200, 3)  # as stored: the corners are the stored image's
    assert rgb[50, 20, 0] > 200 and rgb[50, 180, 0] < 50  # RGB order, red on the left


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and IHDR claiming width x height, with one tiny (wrong) IDAT: enough for a header read."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 8)) + chunk(b"IEND", b"")


def test_a_huge_image_is_refused_from_its_header(tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(_png_header_only(30000, 20000))  # decoding it would take 1.8 GB
    assert photo_size(path) == (30000, 20000)
    with pytest.raises(PhotoError, match=r"too large \(30000x20000 px"):
        read_photo(path)


def test_bad_files_are_named(tmp_path):
    with pytest.raises(PhotoError, match="not found: .*missing.jpg"):
        read_photo(tmp_path / "missing.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    with pytest.raises(PhotoError, match="unreadable image .*bad.jpg"):
        read_photo(tmp_path / "bad.jpg")
    cv2.imwrite(str(tmp_path / "small.png"), np.zeros((8, 40, 3), np.uint8))
    with pytest.raises(PhotoError, match=r"too small \(40x8 px"):
        read_photo(tmp_path / "small.png")
