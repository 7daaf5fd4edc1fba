"""The simulated ISS camera, the sample workspace and its ground truth."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pandas as pd
import pytest
from pyproj import Geod

import stages.sample as sample_stage
from manifests import read_manifest
from manifests.inspect import inspect_manifest
from pipeline.geometry.mercator import lonlat_to_mercator
from pipeline.geometry.windows import windows_containing
from pipeline.simulate.camera import (
    camera_looking_at,
    central_angle_for_tilt,
    ecef_to_lonlat,
    geodetic_to_ecef,
    off_nadir_deg,
)
from pipeline.simulate.render import render_view
from pipeline.simulate.sample import GLOBE, SIZES, split_boxes
from pipeline.world import ProceduralWorld
from stages.cli import main

GEOD = Geod(ellps="WGS84")
FILES = ("queries.parquet", "truth.parquet", "database.parquet", "regions.geojson", "tiles/world.toml")


# -- the camera ------------------------------------------------------------------------------


def test_ecef_round_trip():
    rng = np.random.default_rng(0)
    lon, lat = rng.uniform(-180, 180, 1000), rng.uniform(-89, 89, 1000)
    lon2, lat2 = ecef_to_lonlat(geodetic_to_ecef(lon, lat, 0.0))
    assert np.abs(lon2 - lon).max() < 1e-9 and np.abs(lat2 - lat).max() < 1e-9


def test_nadir_camera_sees_the_pinhole_footprint():
    # 400 mm lens, 36 mm sensor, 410 km up: about 410 * 36 / 400 = 36.9 km across
    cam, nadir = camera_looking_at(10.0, 45.0, 0.0, 0.0, 0.0, 410e3, 400.0, 768, 512)
    assert nadir == pytest.approx((10.0, 45.0), abs=1e-9)
    c = cam.corners()
    g = cam.cast(c[:, 0], c[:, 1])
    assert g.hit.all()
    top = GEOD.inv(g.lon[0], g.lat[0], g.lon[1], g.lat[1])[2]
    side = GEOD.inv(g.lon[1], g.lat[1], g.lon[2], g.lat[2])[2]
    assert top == pytest.approx(410e3 * 36 / 400, rel=2e-3)
    assert side == pytest.approx(410e3 * 24 / 400, rel=2e-3)
    # roll 0, nadir: north up, so the top-left corner is north-west of the bottom-right one
    assert g.lat[0] > g.lat[2] and g.lon[0] < g.lon[2]
    centre = cam.cast(np.array([384.0]), np.array([256.0]))
    assert centre.lon[0] == pytest.approx(10.0, abs=1e-7) and centre.lat[0] == pytest.approx(45.0, abs=1e-7)


def test_tilted_camera_aims_at_its_target():
    cam, nadir = camera_looking_at(5.0, 46.0, 40.0, 120.0, 33.0, 415e3, 800.0, 640, 427)
    g = cam.cast(np.array([320.0]), np.array([213.5]))
    assert GEOD.inv(5.0, 46.0, g.lon[0], g.lat[0])[2] < 1.0  # metres
    assert off_nadir_deg(cam, nadir) == pytest.approx(40.0, abs=0.3)
    az = GEOD.inv(nadir[0], nadir[1], 5.0, 46.0)[0] % 360
    assert az == pytest.approx(120.0, abs=0.5)
    assert math.cos(math.radians(40.0)) > g.cos_vza[0] > math.cos(math.radians(50.0))  # slanted at the ground


def test_limb_camera_sees_space_above_the_horizon():
    with pytest.raises(ValueError, match="horizon"):
        central_angle_for_tilt(75.0, 410e3)
    cam, _ = camera_looking_at(5.0, 46.0, 65.0, 0.0, 0.0, 410e3, 50.0, 300, 200)
    u, v = np.meshgrid(np.arange(300) + 0.5, np.arange(200) + 0.5)
    hit = cam.cast(u, v).hit
    assert not hit[0].any() and hit[-1].all()  # space at the top, the Earth at the bottom


def test_render_view_matches_the_ground_under_a_nadir_camera():
    world = ProceduralWorld((4.0, 45.0, 6.0, 47.0), seed=1)
    cam, _ = camera_looking_at(5.0, 46.0, 0.0, 0.0, 0.0, 410e3, 600.0, 96, 64)
    view = render_view(cam, world)
    assert view.valid.all() and view.rgb.std() > 5
    # the pixel size of the render is the photo's ground sampling (in Mercator metres)
    gsd_ground = 410e3 * (36 / 96) / 600
    assert view.render_pixel_m == pytest.approx(gsd_ground / math.cos(math.radians(46.0)), rel=0.02)


def test_a_view_across_the_antimeridian_is_one_continuous_render():
    """A camera looking at lon 180 sees both sides of it at its own resolution, not a render of the whole
    map's width (its rays' longitudes jump from 180 to -180)."""
    world = ProceduralWorld((-180.0, -18.0, 180.0, -16.0), seed=25)
    cam, _ = camera_looking_at(179.99, -17.0, 0.0, 0.0, 0.0, 410e3, 600.0, 96, 64)
    view = render_view(cam, world)
    hits = cam.cast(*np.meshgrid(np.arange(96) + 0.5, np.arange(64) + 0.5))
    assert (hits.lon < 0).any() and (hits.lon > 0).any()  # the photo straddles the antimeridian
    assert view.valid.all() and view.rgb.std() > 5
    gsd_ground = 410e3 * (36 / 96) / 600
    assert view.render_pixel_m == pytest.approx(gsd_ground / math.cos(math.radians(17.0)), rel=0.02)


# -- the workspace -----------------------------------------------------------------------------


def test_tiny_workspace_has_every_manifest(tiny):
    for name in FILES:
        assert (tiny / name).is_file(), name
    for name in ("queries.parquet", "truth.parquet", "database.parquet"):
        assert "rows" in inspect_manifest(tiny / name)
    q = read_manifest(tiny / "queries.parquet", "queries")
    t = read_manifest(tiny / "truth.parquet", "truth")
    db = read_manifest(tiny / "database.parquet", "database")
    assert len(q) == len(t) == SIZES["tiny"].photos
    assert list(q["photo_id"]) == list(t["photo_id"]) and list(q["split"]) == list(t["split"])
    assert set(t["reason"]) == {"ok", "limb", "night", "wrong_label", "clouds"}
    assert set(t["split"]) == {"train", "eval"}
    assert sorted(db["zoom"].unique()) == [8, 9, 10, 11, 12]
    for p in q["image_path"]:
        img = cv2.imread(str(tiny / p))
        assert img is not None and img.shape == (341, 512, 3)
    # localizable footprints lie inside their split's part of the region; labels inside them
    boxes = split_boxes(SIZES["tiny"].region, SIZES["tiny"].eval_fraction)
    for row in t.itertuples():
        if row.reason == "limb":
            assert row.geometry is None and pd.isna(row.tl_lat)
            continue
        w, s, e, n = boxes[row.split]
        minx, miny, maxx, maxy = row.geometry.bounds
        assert w < minx and maxx < e and s < miny and maxy < n, row.photo_id
        from shapely.geometry import Point

        inside = row.geometry.contains(Point(row.center_lon, row.center_lat))
        assert inside == (row.reason != "wrong_label"), row.photo_id
    regions = json.loads((tiny / "regions.geojson").read_text())
    assert {f["properties"]["split"] for f in regions["features"]} == {"train", "eval"}


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64) - a.mean()
    b = b.astype(np.float64) - b.mean()
    return float((a * b).sum() / math.sqrt((a * a).sum() * (b * b).sum()))


def _grey(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)


def _half(rgb: np.ndarray) -> np.ndarray:
    g = _grey(rgb)
    return cv2.resize(g, (g.shape[1] // 2, g.shape[0] // 2), interpolation=cv2.INTER_AREA)


def test_truth_footprint_and_homography_reproduce_the_photo(tiny):
    """The world north-up over the true footprint, warped by the homography of the true corners,
    is the photo before appearance effects (normalized cross-correlation > 0.9).

    Compared at half resolution: the ground is curved, so for an oblique photo of a large
    footprint the true mapping bends up to about a pixel away from any homography (the centre
    of a 54 deg tilt, 5000 km2 footprint sits 1.3 px off; that alone costs 0.1 of NCC at full
    resolution on this detailed imagery)."""
    truth = read_manifest(tiny / "truth.parquet", "truth", geometry=False)
    checked = 0
    for row in truth[truth["reason"] != "limb"].itertuples():
        cam, _ = camera_looking_at(
            row.target_lon,
            row.target_lat,
            row.tilt_deg,
            row.azimuth_deg,
            row.roll_deg,
            row.altitude_km * 1e3,
            row.focal_length_mm,
            row.width,
            row.height,
        )
        world = ProceduralWorld(GLOBE, seed=0, year=row.world_year)
        clean = render_view(cam, world).rgb
        lon = np.array([row.tl_lon, row.tr_lon, row.br_lon, row.bl_lon])
        lat = np.array([row.tl_lat, row.tr_lat, row.br_lat, row.bl_lat])
        x, y = lonlat_to_mercator(lon, lat)
        xmin, xmax, ymin, ymax = x.min(), x.max(), y.min(), y.max()
        res = max(xmax - xmin, ymax - ymin) / 640
        nx, ny = int(math.ceil((xmax - xmin) / res)), int(math.ceil((ymax - ymin) / res))
        north_up = world.render((xmin, ymax - ny * res, xmin + nx * res, ymax), nx, ny).rgb
        dst = np.column_stack([(x - xmin) / res, (ymax - y) / res]).astype(np.float32)
        H = cv2.getPerspectiveTransform(cam.corners().astype(np.float32), dst)  # photo -> north-up pixels
        # OpenCV puts pixel centres at integers, our corner convention at half-integers
        half = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
        H = np.linalg.inv(half) @ H @ half
        warped = cv2.warpPerspective(
            north_up, H, (row.width, row.height), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        )
        ncc = _ncc(_half(clean), _half(warped))
        print(
            row.photo_id,
            row.reason,
            f"tilt {row.tilt_deg:.0f} f {row.focal_length_mm:.0f} NCC {ncc:.3f} "
            f"(full resolution {_ncc(_grey(clean), _grey(warped)):.3f})",
        )
        assert ncc > 0.9, (row.photo_id, ncc)
        # and a footprint shifted by a fifth of its width does not fit
        shifted = cv2.warpPerspective(
            north_up,
            np.array([[1, 0, nx / 5], [0, 1, 0], [0, 0, 1]]) @ H,
            (row.width, row.height),
            flags=cv2.WARP_INVERSE_MAP,
        )
        assert _ncc(_half(clean), _half(shifted)) < 0.7
        checked += 1
    assert checked >= 5


def test_same_seed_same_bytes_and_resume(tiny, tmp_path, monkeypatch):
    # an interrupted run (killed after the first batches) resumes to the same bytes
    out = tmp_path / "again"
    monkeypatch.setattr(sample_stage, "BATCH", 3)
    real = sample_stage._render
    calls = {"n": 0}

    def dying(args):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        return real(args)

    monkeypatch.setattr(sample_stage, "_render", dying)
    assert main(["run", "sample", "--size", "tiny", "--workdir", str(out), "--workers", "1", "-q"]) == 130
    assert not (out / "queries.parquet").exists()
    parts = list((out / "queries.parquet.parts").rglob("batch*.pkl"))
    assert len(parts) == 2
    monkeypatch.setattr(sample_stage, "_render", real)
    assert main(["run", "sample", "--size", "tiny", "--workdir", str(out), "--workers", "1", "-q"]) == 0
    for name in FILES:
        assert (out / name).read_bytes() == (tiny / name).read_bytes(), name
    for p in sorted((tiny / "photos").iterdir()):
        assert (out / "photos" / p.name).read_bytes() == p.read_bytes(), p.name
    assert not (out / "queries.parquet.parts").exists()


def test_other_seed_other_photos(tiny, tmp_path):
    out = tmp_path / "seed1"
    assert main(["run", "sample", "--size", "tiny", "--seed", "1", "--photos", "3", "--workdir", str(out), "-q"]) == 0
    a = read_manifest(out / "truth.parquet", "truth", geometry=False)
    b = read_manifest(tiny / "truth.parquet", "truth", geometry=False)
    assert len(a) == 3 and not np.allclose(a["target_lat"], b["target_lat"][:3])


def test_preview_panel_of_a_footprint_across_lon_180_is_the_footprint_not_the_world():
    from types import SimpleNamespace

    from pipeline.simulate.preview import _truth_panel

    world = ProceduralWorld((-180.0, -18.0, 180.0, -16.0), seed=25)
    row = SimpleNamespace(
        tl_lon=179.8,
        tl_lat=-16.8,
        tr_lon=-179.8,
        tr_lat=-16.8,
        br_lon=-179.8,
        br_lat=-17.2,
        bl_lon=179.8,
        bl_lat=-17.2,
        center_lon=179.99,
        center_lat=-17.0,
    )
    panel = _truth_panel(world, row, 100)
    assert panel.shape[0] == 100 and panel.shape[1] < 150  # 0.4 x 0.4 deg and the margin, not 2.6 worlds
    assert panel.std() > 5


def test_preview_contact_sheet(tiny, tmp_path):
    png = tmp_path / "sheet.png"
    assert main(["run", "sample", "--size", "tiny", "--workdir", str(tiny), "--preview", str(png), "-q"]) == 0
    sheet = cv2.imread(str(png))
    assert sheet is not None and sheet.shape[0] > 5 * 300 and sheet.shape[1] > 1000
    # photos on the left of each pair are not blank
    assert sheet[:300, :400].std() > 10


def test_photos_are_matchable_and_far_windows_are_not(tiny):
    """A clean nadir photo against the database window containing it: >= 100 inliers with
    ALIKED + LightGlue; against a window 1.5 deg away: < 15."""
    from pipeline.matching import build_extractor, build_matcher, match_pair
    from pipeline.tile_sources import open_tile_source

    db = open_tile_source(tiny / "tiles")
    lon, lat = 3.5, 45.5  # farmland and forest in the tiny region
    cam, _ = camera_looking_at(lon, lat, 0.0, 0.0, 0.0, 410e3, 427.0, 640, 427)  # ~54 m/px, as zoom 11
    photo = render_view(cam, ProceduralWorld(GLOBE, seed=0, year=2)).rgb  # another season

    def nearest(lon, lat, zoom):
        x, y = lonlat_to_mercator(lon, lat)
        return min(
            windows_containing(lon, lat, zoom),
            key=lambda w: (x - sum(w.bounds_mercator()[0::2]) / 2) ** 2 + (y - sum(w.bounds_mercator()[1::2]) / 2) ** 2,
        )

    ext, matcher = build_extractor("aliked", max_keypoints=1024), build_matcher("aliked")
    _, n_in, _, _ = match_pair(photo, db.read_window(nearest(lon, lat, 11)).rgb, ext, matcher)
    far = ProceduralWorld(GLOBE, seed=0, year=0).read_window(nearest(lon + 1.5, lat - 0.3, 11)).rgb
    _, n_far, _, _ = match_pair(photo, far, ext, matcher)
    assert n_in >= 100, n_in
    assert n_far < 15, n_far


def test_sample_refuses_a_changed_config(tiny):
    assert main(["run", "sample", "--size", "tiny", "--seed", "5", "--workdir", str(tiny), "-q"]) == 1


def test_bad_size_is_a_usage_error(tmp_path):
    with pytest.raises(SystemExit):
        main(["run", "sample", "--size", "huge", "--workdir", str(tmp_path)])
