"""Reading photos: pixels as stored, sizes from the header, one clear error per bad file."""

from __future__ import annotations

import csv
import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.imagery.photos import PhotoError, jpeg_damage, photo_size, read_photo


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
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 8)) + chunk(b"IEND", b"")
    )


def test_a_huge_image_is_refused_from_its_header(tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(_png_header_only(30000, 20000))  # decoding it would take 1.8 GB
    assert photo_size(path) == (30000, 20000)
    with pytest.raises(PhotoError, match=r"too large \(30000x20000 px"):
        read_photo(path)


def test_bad_files_are_named(tmp_path):
    with pytest.raises(PhotoError, match="not found: .*missing.jpg"):
        read_photo(tmp_path / "missing.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")  # its APP0 length runs past the end
    with pytest.raises(PhotoError, match=r"truncated JPEG: the header segment 0xFFE0 at byte 2 .*bad.jpg"):
        read_photo(tmp_path / "bad.jpg")
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all")
    with pytest.raises(PhotoError, match="unreadable image .*junk.jpg"):
        read_photo(tmp_path / "junk.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(PhotoError, match="unreadable image .*empty.jpg"):
        read_photo(tmp_path / "empty.jpg")
    cv2.imwrite(str(tmp_path / "small.png"), np.zeros((8, 40, 3), np.uint8))
    with pytest.raises(PhotoError, match=r"too small \(40x8 px"):
        read_photo(tmp_path / "small.png")


# --- damaged JPEGs: libjpeg decodes them with grey areas, read_photo refuses them ------------

_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
_VARIANTS = {
    "baseline": [],
    "progressive": [cv2.IMWRITE_JPEG_PROGRESSIVE, 1],
    "restart": [cv2.IMWRITE_JPEG_RST_INTERVAL, 2],
}


def _smooth_jpeg(params: list[int], seed: int = 7) -> bytes:
    """A seeded random but smooth 256x256 colour image, JPEG-encoded with ``params``."""
    rng = np.random.default_rng(seed)
    bgr = cv2.resize(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), (256, 256), interpolation=cv2.INTER_CUBIC)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 90, *params])
    assert ok
    return buf.tobytes()


def _with_thumbnail_app1(jpeg: bytes) -> bytes:
    """``jpeg`` with an APP1 Exif segment after SOI holding a thumbnail-like blob: its own SOI,
    a bogus marker 0xFF13 and EOI, which a scan inside the segment would take for damage."""
    thumb = b"\xff\xd8\xff\xdb\x00\x04\x01\x02\xff\x13\xff\x00\xff\xd9"
    body = b"Exif\x00\x00II*\x00\x08\x00\x00\x00" + thumb
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body + jpeg[2:]


def _first_scan_start(jpeg: bytes) -> int:
    """Byte after the first SOS header (where the compressed data starts)."""
    sos = jpeg.index(b"\xff\xda")
    return sos + 2 + struct.unpack(">H", jpeg[sos + 2 : sos + 4])[0]


@pytest.mark.parametrize("variant", sorted(_VARIANTS))
def test_a_sound_jpeg_reads_as_cv2_imread_does(tmp_path, variant):
    jpeg = _smooth_jpeg(_VARIANTS[variant])
    assert jpeg_damage(np.frombuffer(jpeg, np.uint8)) is None
    for name, data in [
        ("plain", jpeg),
        ("thumb", _with_thumbnail_app1(jpeg)),
        ("trailing", jpeg + b"\x00\xff\xd8\xff\x13garbage appended by a camera\xff"),
        ("dnl", jpeg[:-2] + b"\xff\xdc\x00\x04\x01\x00" + jpeg[-2:]),
    ]:  # a DNL segment (256 lines)
        path = tmp_path / f"{variant}-{name}.jpg"
        path.write_bytes(data)
        rgb = read_photo(path)
        expected = cv2.imread(str(path), _FLAGS)
        assert expected is not None and rgb.shape == (256, 256, 3)
        np.testing.assert_array_equal(rgb, expected[..., ::-1])


def test_the_thumbnail_blob_would_be_refused_if_scanned():
    """The APP1 test above means something: the blob, as compressed data, is corrupt."""
    jpeg = _smooth_jpeg([])
    start = _first_scan_start(jpeg)
    blob = _with_thumbnail_app1(jpeg)[6 + 14 : 6 + 14 + 14]
    assert blob.startswith(b"\xff\xd8") and blob.endswith(b"\xff\xd9")
    spliced = np.frombuffer(jpeg[:start] + blob[2:] + jpeg[start:], np.uint8)
    assert "invalid marker 0xFF13" in jpeg_damage(spliced)


@pytest.mark.parametrize("variant", sorted(_VARIANTS))
def test_a_cut_jpeg_is_refused_as_truncated(tmp_path, variant):
    jpeg = _with_thumbnail_app1(_smooth_jpeg(_VARIANTS[variant]))
    path = tmp_path / "cut.jpg"
    path.write_bytes(jpeg[: int(len(jpeg) * 0.6)])
    assert cv2.imread(str(path), _FLAGS) is not None  # libjpeg decodes it, partly grey
    with pytest.raises(
        PhotoError,
        match=r"truncated JPEG: no end-of-image marker after the last scan"
        r".*re-download or re-export.*cut\.jpg",
    ):
        read_photo(path)
    # every cut is caught, in the header, in a segment between scans or in the compressed data
    data = np.frombuffer(jpeg, np.uint8)
    for cut in range(2, len(jpeg), 7):
        assert jpeg_damage(data[:cut]).startswith("truncated JPEG"), cut


@pytest.mark.parametrize("variant", sorted(_VARIANTS))
def test_overwritten_bytes_in_the_scan_are_refused_as_corrupt(tmp_path, variant):
    jpeg = bytearray(_smooth_jpeg(_VARIANTS[variant]))
    start = _first_scan_start(bytes(jpeg))
    mid = (start + len(jpeg)) // 2
    run = np.random.default_rng(3).integers(0, 256, 200, dtype=np.uint8)
    run[run == 0xFF] = 0x7F  # the one stray marker is the one placed here
    run[120:122] = (0xFF, 0x13)
    jpeg[mid : mid + 200] = run.tobytes()
    path = tmp_path / "overwritten.jpg"
    path.write_bytes(bytes(jpeg))
    with pytest.raises(
        PhotoError,
        match=rf"corrupt JPEG data: invalid marker 0xFF13 at byte {mid + 120} "
        r"in the compressed data.*re-download or re-export.*overwritten\.jpg",
    ):
        read_photo(path)


def test_real_photos_pass_the_check_and_read_as_cv2_imread_does(real_sample):
    """The real sample's eight JPEGs (from ../shared, as every real-sample test reads it) are undamaged and read
    as OpenCV reads them (its cost: bench/jpeg_check.py)."""
    with open(real_sample / "queries.csv", newline="") as f:
        paths = [real_sample / row["image_path"] for row in csv.DictReader(f)]
    paths = [p for p in paths if p.suffix.lower() in (".jpg", ".jpeg")]
    assert len(paths) == 8 and all(p.is_file() for p in paths)
    for path in paths:
        assert jpeg_damage(np.fromfile(path, np.uint8)) is None, path
        np.testing.assert_array_equal(read_photo(path), cv2.imread(str(path), _FLAGS)[..., ::-1])


def _unreadable_file(tmp_path: Path) -> Path | None:
    """A path that is a file but cannot be read: mode 000 for a user; as root (who reads any mode), a write-only
    procfs file. None where neither works."""
    if os.geteuid() != 0:
        p = tmp_path / "locked.jpg"
        p.write_bytes(b"\xff\xd8")
        p.chmod(0)
        return p
    proc = Path("/proc/sys/vm/drop_caches")
    if proc.is_file():
        try:
            proc.read_bytes()
        except OSError:
            link = tmp_path / "locked.jpg"
            link.symlink_to(proc)
            return link
    return None


def test_a_photo_that_cannot_be_read_is_a_photo_error_naming_it(tmp_path):
    path = _unreadable_file(tmp_path)
    if path is None:
        pytest.skip("no unreadable file can be made here")
    with pytest.raises(PhotoError, match=r"cannot read the image file .*locked\.jpg"):
        read_photo(path)
