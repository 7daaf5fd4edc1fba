"""The footprint search: homography bookkeeping, bad photos, and one photo localized end to end."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from manifests import read_manifest
from pipeline.footprint import homography as hg
from pipeline.footprint.evidence import Catalogue
from pipeline.footprint.settings import SearchSettings
from pipeline.geometry.geodesy import footprint_polygon, iou


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_rotation_matrix_follows_np_rot90(k):
    img = np.zeros((6, 10), np.uint8)
    img[1, 7] = 255  # the pixel whose centre is (7.5, 1.5)
    rot = np.rot90(img, k)
    v, u = np.argwhere(rot == 255)[0]
    moved = hg.apply(hg.rotation(k, 10, 6), np.array([[7.5, 1.5]]))[0]
    assert moved == pytest.approx([u + 0.5, v + 0.5])


def test_pixel_conventions_round_trip():
    h = np.array([[1.1, 0.1, 3.0], [0.05, 0.9, -2.0], [1e-4, 2e-4, 1.0]])
    assert np.allclose(hg.to_centres(hg.from_centres(h)), h)
    assert hg.apply(hg.pixels_to_mercator((0, 0, 100, 50), 10, 5), np.array([[0, 0], [10, 5]])).tolist() == [
        [0, 50],
        [100, 0],
    ]


def test_photo_to_mercator_undoes_corners_lonlat():
    """A footprint's corners -> the homography -> the same corners (to 1e-5 deg, about 1 m)."""
    corners = np.array([[87.57, 28.78], [85.52, 28.92], [85.81, 31.57], [87.83, 31.41]])
    h = hg.photo_to_mercator(corners, 1024, 768)
    assert np.abs(hg.corners_lonlat(h, 1024, 768) - corners).max() < 1e-5


@pytest.mark.parametrize(
    "outside, scale, inside",
    [(0.05, 1.2, True), (0.15, 1.2, False), (0.15, 3.0, True), (0.9, 3.0, True), (1.2, 3.0, False), (0.0, 1.0, True)],
)
def test_label_check_scales_the_footprint_about_its_centroid(outside, scale, inside):
    """A 100 km square with the label ``outside`` widths beyond its east edge: 1.2 leaves a tenth of the width
    beyond each edge, EarthMatch's 3 a full width; the edge itself counts as inside."""
    from pipeline.footprint.search import label_inside

    sq = np.array([[0, 0], [100e3, 0], [100e3, 100e3], [0, 100e3]], float)
    assert label_inside(sq, 100e3 * (1 + outside), 50e3, scale) is inside


def test_a_footprint_beyond_the_mercator_map_is_rejected_not_an_error():
    """A refined footprint whose far edge passes latitude 85.05 is an invalid candidate (the search goes on), not
    an exception that would end the photo as an error row."""
    from types import SimpleNamespace

    from pipeline.footprint.search import FootprintSearch
    from pipeline.footprint.settings import SearchSettings

    corners = np.array([[5.0, 85.0], [15.0, 85.0], [15.0, 83.8], [5.0, 83.8]])
    to_merc = np.array([[1, 0, 0], [0, 1, 3e5], [0, 0, 1.0]]) @ hg.photo_to_mercator(corners, 600, 400)  # 300 km north
    search = SimpleNamespace(settings=SearchSettings())
    got, why = FootprintSearch.check(search, to_merc, 600, 400, lon=10.0, lat=84.9)
    assert got is None and "beyond the Web Mercator map" in why
    ok, why = FootprintSearch.check(search, hg.photo_to_mercator(corners, 600, 400), 600, 400, lon=10.0, lat=84.4)
    assert why is None and np.abs(ok - corners).max() < 1e-6


@pytest.mark.parametrize("label_lon, inside", [(-179.95, True), (179.9, True), (180.1, True), (-179.0, False)])
def test_a_footprint_matched_across_lon_180_contains_a_label_on_either_side(label_lon, inside):
    """A footprint found in the window across the antimeridian has unwrapped corners (here 179.8 .. 180.2);
    a label at -179.95 is the same place as 180.05 and lies in it."""
    from types import SimpleNamespace

    from pipeline.footprint.search import FootprintSearch
    from pipeline.footprint.settings import SearchSettings

    corners = np.array([[179.8, -16.8], [180.2, -16.8], [180.2, -17.2], [179.8, -17.2]])
    search = SimpleNamespace(settings=SearchSettings())
    got, why = FootprintSearch.check(
        search, hg.photo_to_mercator(corners, 600, 600), 600, 600, lon=label_lon, lat=-17.0
    )
    assert (why is None) is inside, why
    assert inside or "does not contain the weak label" in why


def test_refine_iterations_must_be_at_least_one():
    from pipeline.footprint.settings import SearchSettings

    with pytest.raises(ValueError, match="refine_iterations = 0: an integer of at least 1"):
        SearchSettings(refine_iterations=0)


def test_bad_photos_end_as_errors(tmp_path):
    from pipeline.footprint.batch import footprint_row

    bad = tmp_path / "corrupt.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"neither a jpeg nor any image")
    tiny = tmp_path / "tiny.png"
    cv2.imwrite(str(tiny), np.zeros((1, 1, 3), np.uint8))
    base = {"photo_id": "X", "center_lat": 45.0, "center_lon": 4.0, "focal_length_mm": 400.0}
    cases = {
        "not found": dict(base, image_path=str(tmp_path / "missing.jpg")),
        "truncated JPEG": dict(base, image_path=str(bad)),
        "unreadable": dict(base, image_path=str(garbage)),
        "too small": dict(base, image_path=str(tiny)),
        "beyond the Web Mercator": dict(base, image_path=str(tiny), center_lat=89.0),
    }
    for words, row in cases.items():
        out = footprint_row(None, row, "aliked+lightglue")  # fails before any matching
        assert out["status"] == "error" and words in out["reason"], (words, out["reason"])


def test_a_sample_photo_is_localized_with_its_true_footprint(tiny):
    from pipeline.footprint.search import FootprintSearch
    from pipeline.tile_sources import open_tile_source

    q = read_manifest(tiny / "queries.parquet", "queries")
    t = read_manifest(tiny / "truth.parquet", "truth", geometry=False)
    row, truth = q.iloc[0], t.iloc[0]
    assert truth.localizable
    photo = cv2.imread(str(tiny / row.image_path))[..., ::-1]
    result = FootprintSearch(open_tile_source(tiny / "tiles")).localize(
        np.ascontiguousarray(photo), row.center_lon, row.center_lat, Catalogue.from_row(row)
    )
    assert result.status == "localized", result.reason
    true = np.array(
        [
            [truth.tl_lon, truth.tl_lat],
            [truth.tr_lon, truth.tr_lat],
            [truth.br_lon, truth.br_lat],
            [truth.bl_lon, truth.bl_lat],
        ]
    )
    assert iou(footprint_polygon(result.corners_lonlat), footprint_polygon(true)) >= 0.8
    # the homography column: photo pixels (as stored) -> the candidate window's native pixels (4 x 256)
    from pipeline.geometry.windows import Window

    zoom, x, y = map(int, result.candidate_id.split("_"))
    window_to_mercator = hg.pixels_to_mercator(Window(zoom, x, y, 4).bounds_mercator(), 1024, 1024)
    h, w = photo.shape[:2]
    corners = hg.corners_lonlat(window_to_mercator @ result.homography, w, h)
    assert np.abs(corners - result.corners_lonlat).max() < 1e-9


def test_a_label_without_imagery_says_so(tiny):
    from pipeline.footprint.search import FootprintSearch
    from pipeline.tile_sources import open_tile_source

    photo = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    far = FootprintSearch(open_tile_source(tiny / "tiles"), SearchSettings(max_keypoints=64)).localize(
        photo, -120.0, 40.0, Catalogue(focal_mm=400.0)
    )
    assert far.status == "not_localized" and far.pairs_matched == 0
    assert far.reason.startswith("no imagery around the weak label") and "lat 40.0000, lon -120.0000" in far.reason


def test_window_features_are_kept_on_disk_and_reused(tiny, tmp_path):
    """A second search (another process, a later run) loads the features instead of extracting them."""
    from pipeline.footprint.search import FootprintSearch
    from pipeline.geometry.windows import windows_containing
    from pipeline.tile_sources import open_tile_source

    source = open_tile_source(tiny / "tiles")
    window = windows_containing(4.0, 46.0, 11)[0]
    first = FootprintSearch(source, SearchSettings(feature_dir=str(tmp_path), max_keypoints=128))
    feats, valid = first.window_features(window)
    files = list(tmp_path.rglob("*.npz"))
    assert len(files) == 1 and files[0].name == f"{window.tile_id}.npz"

    second = FootprintSearch(source, SearchSettings(feature_dir=str(tmp_path), max_keypoints=128))
    second._extract = None  # it must not extract: calling it would fail
    again, valid2 = second.window_features(window)
    assert valid2 == valid and again["image_size"] == feats["image_size"]
    for k in ("keypoints", "descriptors", "scores"):
        assert torch.equal(again[k], feats[k])
    # another feature config gets its own folder
    FootprintSearch(source, SearchSettings(feature_dir=str(tmp_path), max_keypoints=64)).window_features(window)
    assert len(list(tmp_path.rglob("*.npz"))) == 2


def test_offset_turns_only_at_the_likeliest_zooms_and_each_turn_extracted_when_first_needed(tiny):
    """Quarter turns at every zoom (AstroLoc's 80 pairs), the 45-degree offsets at the ``offset_zooms``
    likeliest zooms only, right after the quarter turns there; a photo matched by its first pair costs one
    photo extraction; each image is prepared for LightGlue once."""
    from pipeline.footprint.search import FootprintSearch, expected_zoom_order
    from pipeline.tile_sources import open_tile_source

    row = read_manifest(tiny / "queries.parquet", "queries").iloc[0]
    search = FootprintSearch(
        open_tile_source(tiny / "tiles"), SearchSettings(max_keypoints=64, photo_px=128, window_px=256, offset_zooms=2)
    )
    calls, prepared = [], []
    extract, prepare = search._extract, search.matcher.prepare
    search._extract = lambda rgb: calls.append(rgb.shape) or extract(rgb)
    search.matcher.prepare = lambda feats, *a: prepared.append(1) or prepare(feats, *a)
    photo = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    pairs = search.candidates(photo, row.center_lon, row.center_lat, 400.0)
    first = next(pairs)
    assert (first.rotation_deg, len(calls)) == (0, 2)  # one window and the photo as it is, not its four turns
    tried = [(first.window.zoom, first.rotation_deg)] + [(c.window.zoom, c.rotation_deg) for c in pairs]
    order = expected_zoom_order(search.settings.zooms, row.center_lat, 400.0)
    quarter = [(z, d) for z, d in tried if d % 90 == 0]
    assert len(quarter) == 80 and len(tried) == 112  # every window of the tiny world has imagery
    assert [z for z, _ in tried] == [z for z in order[:2] for _ in range(16)] * 2 + [
        z for z in order[2:] for _ in range(16)
    ]
    assert tried[32:64] == [(z, d) for z in order[:2] for _ in range(4) for d in (45, 135, 225, 315)]
    assert len(calls) == len(prepared) == 20 + 8  # 20 windows, 8 turns of the photo: each extracted and prepared once


def test_candidates_matched_in_mixed_precision_refinement_in_float32(tiny, monkeypatch):
    """``half``: the candidate search's LightGlue in mixed precision where the device has it (bfloat16 on a CPU
    with native bfloat16, float16 on CUDA); refinement, whose inliers meet the calibrated threshold, in float32."""
    from pipeline.footprint import search as S
    from pipeline.tile_sources import open_tile_source

    source = open_tile_source(tiny / "tiles")
    monkeypatch.setattr(S, "cpu_has_native_bf16", lambda: False)
    plain = S.FootprintSearch(source)
    assert not plain.half_precision() and plain.half_precision("cuda") and not plain.matcher.conf["mp"]
    monkeypatch.setattr(S, "cpu_has_native_bf16", lambda: True)
    assert not S.FootprintSearch(source, SearchSettings(half=False)).half_precision()
    assert not S.FootprintSearch(source, SearchSettings(extractor="sift", calibration=None)).half_precision()
    search = S.FootprintSearch(source)
    assert search.half_precision() and search.matcher.conf["mp"]

    calls, refining = [], [False]
    matcher, refine = search.matcher, search.refine

    def spy_match(f0, f1, full_precision=False, screen=None):
        assert (screen is None) == refining[0]  # candidates are screened, refinement's matches are not
        calls.append((refining[0], full_precision))
        return matcher(f0, f1, full_precision=full_precision, screen=screen)

    def spy_prepare(feats, full_precision=False):
        calls.append((refining[0], full_precision))
        return matcher.prepare(feats, full_precision=full_precision)

    spy_match.prepare = spy_prepare

    def spy_refine(*args):
        refining[0] = True
        try:
            return refine(*args)
        finally:
            refining[0] = False

    search.matcher, search.refine = spy_match, spy_refine
    row = read_manifest(tiny / "queries.parquet", "queries").iloc[0]
    photo = np.ascontiguousarray(cv2.imread(str(tiny / row.image_path))[..., ::-1])
    result = search.localize(photo, row.center_lon, row.center_lat, Catalogue.from_row(row))
    assert result.status == "localized", result.reason
    assert all(full == in_refine for in_refine, full in calls), calls  # float32 exactly when refining
    assert {c for c in calls} == {(False, False), (True, True)}  # both kinds of call happened


def test_screen_ends_pairs_that_match_nothing_and_keeps_the_others_as_they_were(tiny):
    """With the screen (``screen_inliers``) most of a photo's pairs end after LightGlue's second layer; every pair
    that matters (15 inliers or more) has exactly the inliers and homography it has unscreened."""
    from pipeline.footprint.search import FootprintSearch
    from pipeline.tile_sources import open_tile_source

    source = open_tile_source(tiny / "tiles")
    row = read_manifest(tiny / "queries.parquet", "queries").iloc[0]
    photo = np.ascontiguousarray(cv2.imread(str(tiny / row.image_path))[..., ::-1])
    small = dict(max_keypoints=512, photo_px=384, window_px=512, rotations=[0, 90])  # 5 zooms x 4 windows x 2
    runs = [
        list(
            FootprintSearch(source, SearchSettings(screen_inliers=n, **small)).candidates(
                photo, row.center_lon, row.center_lat, row.focal_length_mm
            )
        )
        for n in (0, 6)
    ]
    assert len(runs[0]) == len(runs[1]) == 40
    good = [(a, b) for a, b in zip(*runs) if a.inliers >= 15]
    assert good and all(a.inliers == b.inliers and np.array_equal(a.to_mercator, b.to_mercator) for a, b in good)
    ended = [b for a, b in zip(*runs) if a.to_mercator is not None and b.to_mercator is None]
    assert len(ended) > 20 and all(b.inliers < 6 for b in ended), len(ended)  # most pairs match nothing: they end
    with pytest.raises(ValueError, match="screen_layer = 8: LightGlue has 9 layers"):
        FootprintSearch(source, SearchSettings(screen_layer=8))


def test_overlay_shows_the_imagery_a_footprint_stands_for(tiny, tmp_path):
    """The by-eye check: through the true footprint the imagery looks like the photo; through a footprint
    shifted by half its width it does not. Photos without a footprint get no PNG."""
    from pipeline.footprint.overlay import overlay, write_overlays
    from pipeline.tile_sources import open_tile_source

    source = open_tile_source(tiny / "tiles")
    q = read_manifest(tiny / "queries.parquet", "queries").set_index("photo_id")
    t = read_manifest(tiny / "truth.parquet", "truth", geometry=False).set_index("photo_id")
    pid = t.index[t["localizable"]][0]
    corners = np.array([[t.at[pid, f"{c}_lon"], t.at[pid, f"{c}_lat"]] for c in ("tl", "tr", "br", "bl")])
    photo = np.ascontiguousarray(cv2.imread(str(tiny / q.at[pid, "image_path"]))[..., ::-1])

    def likeness(c):
        panels = overlay(photo, c, source, long_side=256)
        w = panels.shape[1] // 3
        a, b = (
            cv2.GaussianBlur(cv2.cvtColor(p, cv2.COLOR_RGB2GRAY).astype(np.float32), (0, 0), 2)
            for p in (panels[:, :w], panels[:, w : 2 * w])
        )
        return float(np.corrcoef(a.ravel(), b.ravel())[0, 1]), panels

    right, panels = likeness(corners)
    width = corners[1, 0] - corners[0, 0]
    wrong, _ = likeness(corners + [width / 2, 0])
    assert panels.dtype == np.uint8 and panels.shape[1] % 3 == 0 and max(panels.shape[0], panels.shape[1] // 3) == 256
    assert right > 0.5 and right > wrong + 0.3, (right, wrong)

    other = t.index[~t.index.isin([pid])][0]
    fp = pd.DataFrame(
        [
            {
                "photo_id": pid,
                "status": "localized",
                **{f"{c}_{k}": t.at[pid, f"{c}_{k}"] for c in ("tl", "tr", "br", "bl") for k in ("lon", "lat")},
            },
            {"photo_id": other, "status": "not_localized"},
        ]
    )
    written = write_overlays(fp, tiny / "queries.parquet", source, tmp_path / "png", [pid, other], long_side=128)
    assert [p.name for p in written] == [f"{pid}.png"]
    h, w3 = cv2.imread(str(written[0])).shape[:2]
    assert w3 % 3 == 0 and max(h, w3 // 3) == 128


def test_an_overlay_across_the_antimeridian_shows_imagery_on_both_sides(tmp_path):
    """A footprint straddling lon 180 (corners at 179.8 and -179.8) gets the imagery of both sides in its
    panel, not the one side its first corner is on and black beyond lon 180."""
    from pipeline.footprint.overlay import overlay
    from pipeline.imagery import RasterTileSource

    try:
        from imagery_fixtures import seam_rasters, smooth_rgb
    except ImportError:  # tests collected as a package
        from tests.imagery_fixtures import seam_rasters, smooth_rgb
    textures = dict(east=smooth_rgb(1, 64, 64), west=smooth_rgb(2, 64, 64))
    source = RasterTileSource(seam_rasters(tmp_path, 1000.0, 64, 64, **textures))
    corners = np.array([[179.8, 0.15], [-179.8, 0.15], [-179.8, -0.15], [179.8, -0.15]])
    photo = np.full((60, 80, 3), 128, np.uint8)
    panels = overlay(photo, corners, source, long_side=128)
    imagery = panels[:, panels.shape[1] // 3 : 2 * panels.shape[1] // 3]
    assert (imagery.max(axis=2) > 0).mean() > 0.99


@pytest.mark.parametrize(
    "photo_id, name",
    [("ISS064-E-513", "ISS064-E-513"), ("a/../../b", "a_______b~"), ("..", "__~"), ("x\\y:z", "x_y_z~")],
)
def test_an_overlay_file_stays_in_its_folder_whatever_the_photo_id(photo_id, name):
    from pipeline.footprint.overlay import safe_file_name

    got = safe_file_name(photo_id)
    assert got == name if not name.endswith("~") else (got.startswith(name) and len(got) == len(name) + 8)
    assert len({safe_file_name(p) for p in ("ISS/1", "ISS_1", "ISS:1", "a..b", "a__b")}) == 5  # one file each


def test_a_footprint_far_from_what_its_catalogue_predicts_is_refused(tiny):
    """The true footprint of a sample photo, refined and weighed: accepted under its own catalogue; refused as
    implausible when the catalogue's lens is 4x longer (16x less area predicted than found)."""
    from dataclasses import replace

    from pipeline.footprint.search import Candidate, FootprintSearch
    from pipeline.geometry.windows import Window
    from pipeline.tile_sources import open_tile_source

    q = read_manifest(tiny / "queries.parquet", "queries")
    t = read_manifest(tiny / "truth.parquet", "truth", geometry=False).set_index("photo_id")
    row = q[t.loc[q["photo_id"], "localizable"].to_numpy()].iloc[0]
    truth = t.loc[row.photo_id]
    photo = np.ascontiguousarray(cv2.imread(str(tiny / row.image_path))[..., ::-1])
    h, w = photo.shape[:2]
    corners = np.array(
        [
            [truth.tl_lon, truth.tl_lat],
            [truth.tr_lon, truth.tr_lat],
            [truth.br_lon, truth.br_lat],
            [truth.bl_lon, truth.bl_lat],
        ]
    )
    cand = Candidate(Window(10, 0, 0, 4), 0, 100, hg.photo_to_mercator(corners, w, h))
    search = FootprintSearch(open_tile_source(tiny / "tiles"))
    cat = Catalogue.from_row(row)
    own = search.decide(photo, cand, row.center_lon, row.center_lat, cat)
    assert own.accepted and abs(own.evidence.area_ratio) < 0.2, own.reason
    longer = search.decide(photo, cand, row.center_lon, row.center_lat, replace(cat, focal_mm=cat.focal_mm * 4))
    assert not longer.accepted and longer.corners_lonlat is None
    assert (
        longer.reason.startswith("implausible for its catalogue: the footprint's area is 1") and "6x" in longer.reason
    )
