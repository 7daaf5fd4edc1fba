"""Pairs: vectorized overlap on the ellipsoid, and the IoU join against a brute-force reference."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from shapely.geometry import Polygon, box

from pipeline.geometry.geodesy import area_km2, footprint_polygon, iou, window_polygon
from pipeline.geometry.mercator import lonlat_to_mercator
from pipeline.geometry.overlap import (
    box_area_km2_mercator,
    clip_to_boxes,
    densify_lonlat,
    mercator_polygon_area_km2,
)
from pipeline.geometry.windows import Window, window_origins
from pipeline.pairs import Database, footprint_rings, join


def test_window_area_is_the_closed_form_box_area():
    w = Window(9, 260, 170)
    b = np.array([w.bounds_mercator()])
    ring = mercator_polygon_area_km2(b[:, [0, 2, 2, 0]], b[:, [3, 3, 1, 1]], np.array([4]))
    assert ring[0] == pytest.approx(box_area_km2_mercator(b)[0], rel=1e-12)
    assert ring[0] == pytest.approx(area_km2(window_polygon(w)), rel=1e-6)  # pyproj.Geod, densified


def test_footprint_area_matches_the_geodesic_area():
    c = np.array([[4.0, 46.0], [5.2, 46.3], [5.0, 45.1], [3.9, 45.2]])
    lon, lat = densify_lonlat(c[None, :, 0], c[None, :, 1], 16)
    x, y = lonlat_to_mercator(lon, lat)
    assert mercator_polygon_area_km2(x, y, np.array([64]))[0] == pytest.approx(area_km2(footprint_polygon(c)), rel=1e-5)


def test_clipping_matches_shapely():
    rng = np.random.default_rng(1)
    ring = np.array([[0.0, 0.0], [10.0, 1.0], [12.0, 9.0], [3.0, 11.0], [-1.0, 5.0]])
    poly = Polygon(ring)
    boxes = np.column_stack([rng.uniform(-3, 10, 40), rng.uniform(-3, 10, 40)])
    boxes = np.column_stack([boxes, boxes + rng.uniform(0.5, 8, (40, 2))])
    xs, ys, n = clip_to_boxes(np.tile(ring[:, 0], (40, 1)), np.tile(ring[:, 1], (40, 1)), np.full(40, 5), boxes)
    for k in range(40):
        ref = poly.intersection(box(*boxes[k])).area
        got = Polygon(np.column_stack([xs[k, : n[k]], ys[k, : n[k]]])).area if n[k] >= 3 else 0.0
        assert got == pytest.approx(ref, abs=1e-9)


def _database(bounds_lonlat: list[tuple], zooms: range, size: int = 4) -> Database:
    zs, xs, ys = [], [], []
    for west, south, east, north in bounds_lonlat:
        x0, y1 = lonlat_to_mercator(west, north)
        x1, y0 = lonlat_to_mercator(east, south)
        for z in zooms:
            ox, oy = window_origins((x0, y0, x1, y1), z, size)
            gx, gy = np.meshgrid(ox, oy)
            zs.append(np.full(gx.size, z))
            xs.append(gx.ravel())
            ys.append(gy.ravel())
    return Database.from_columns(np.concatenate(zs), np.concatenate(xs), np.concatenate(ys), size)


def _quad(lon, lat, width_km, height_km, angle_deg, skew=0.15, rng=None):
    """A photo-like footprint: a rotated, slightly trapezoidal quad around (lon, lat)."""
    rng = rng or np.random.default_rng(0)
    a = math.radians(angle_deg)
    local = np.array([[-1, 1 + skew], [1, 1 - skew], [1, -1], [-1, -1]]) * [width_km / 2, height_km / 2]
    local = local * (1 + rng.uniform(-0.05, 0.05, (4, 2)))
    rot = local @ np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
    dlat = rot[:, 1] / 111.32
    dlon = rot[:, 0] / (111.32 * np.cos(np.radians(lat + dlat)))
    return np.column_stack([(lon + dlon + 180.0) % 360.0 - 180.0, lat + dlat])


CASES = {
    # name: (lon, lat, width km, height km, angle, database boxes, zooms)
    "ordinary": (4.3, 45.6, 60, 45, 20, [(2, 44, 7, 47)], range(8, 13)),
    "tiny 40 km2": (4.3, 45.6, 7, 6, 33, [(4, 45.3, 4.6, 45.9)], range(8, 15)),
    "antimeridian": (179.8, -17.0, 90, 70, 125, [(177, -19, 180, -15), (-180, -19, -177, -15)], range(7, 12)),
    "near 85 deg": (20.0, 84.6, 40, 30, 70, [(15, 83.5, 25, 85.05)], range(7, 11)),
    "huge 1.3M km2": (10.0, 5.0, 1200, 1100, 10, [(0, -6, 21, 16)], range(5, 9)),
}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", list(CASES))
def test_join_agrees_with_brute_force(name, seed):
    """Each case three times: the footprint turned, resized and moved at random (seeded)."""
    lon, lat, w, h, angle, regions, zooms = CASES[name]
    rng = np.random.default_rng(seed)
    if seed:
        scale = rng.uniform(0.8, 1.2)
        w, h, angle = w * scale, h * scale, rng.uniform(0, 360)
        lon, lat = lon + rng.uniform(-0.1, 0.1), min(lat + rng.uniform(-0.1, 0.1), 84.7)
    corners = _quad(lon, lat, w, h, angle, rng=rng)
    db = _database(regions, zooms)
    rings = footprint_rings(corners[None, :, 0], corners[None, :, 1])
    poly = footprint_polygon(corners)
    got = join(rings, db, 0.2)
    # brute force: every window of the database, its IoU on the ellipsoid (LAEA, densified)
    ref = {}
    for key in db.keys:
        z, x, y = int(key >> 56), int((key >> 28) & ((1 << 28) - 1)), int(key & ((1 << 28) - 1))
        v = iou(poly, window_polygon(Window(z, x, y, 4)))
        if v >= 0.2:
            ref[(z, x, y)] = v
    mine = {(int(r.zoom), int(r.x), int(r.y)): r.iou for r in got.itertuples()}
    near = {k for k, v in ref.items() if abs(v - 0.2) < 0.002} | {k for k, v in mine.items() if abs(v - 0.2) < 0.002}
    assert set(mine) - near == set(ref) - near, name
    assert len(ref) > 0, f"{name}: the case should produce pairs"
    if name == "antimeridian":  # the windows across lon 180 are in the database and pair with the footprint
        assert any(x == (1 << z) - 2 for z, x, _ in set(ref) - near), sorted(ref)
    for k in set(mine) & set(ref):
        assert mine[k] == pytest.approx(ref[k], rel=1.5e-4), (name, k)  # the README: at most 0.015 %
    assert rings.area_km2[0] == pytest.approx(area_km2(poly), rel=1e-4)


def _true_footprints(tiny, path) -> list[dict]:
    """A footprints manifest at ``path``: the tiny sample's true footprints, localized, and one photo not localized."""
    from manifests import FOOTPRINTS, read_manifest, write_manifest
    from pipeline.geometry.geodesy import corners_columns

    truth = read_manifest(tiny / "truth.parquet", "truth", geometry=False)
    truth = truth[truth.localizable].reset_index(drop=True)
    rows = []
    for t in truth.itertuples():
        c = np.array([[t.tl_lon, t.tl_lat], [t.tr_lon, t.tr_lat], [t.br_lon, t.br_lat], [t.bl_lon, t.bl_lat]])
        rows.append(
            {
                "photo_id": t.photo_id,
                "status": "localized",
                "inliers": 100,
                "geometry": footprint_polygon(c),
                **corners_columns(c),
            }
        )
    rows.append({"photo_id": "NOT-LOCALIZED", "status": "not_localized", "reason": "too few inliers", "geometry": None})
    write_manifest(pd.DataFrame(rows), path, FOOTPRINTS)
    return rows


def test_pairs_stage_on_the_tiny_sample(tiny, tmp_path):
    """`run pairs` on true footprints of the tiny sample: the brute-force pairs, exclusions counted."""
    from manifests import read_manifest
    from stages.cli import main

    rows = _true_footprints(tiny, tmp_path / "fp.parquet")
    args = [
        "run",
        "pairs",
        "--workdir",
        str(tiny),
        "--footprints",
        str(tmp_path / "fp.parquet"),
        "--workers",
        "1",
        "-q",
    ]
    assert main(args + ["--out", str(tmp_path / "pairs.parquet")]) == 0
    pairs = read_manifest(tmp_path / "pairs.parquet", "pairs")
    db = read_manifest(tiny / "database.parquet", "database", geometry=False)
    # brute force for every photo: all database windows, IoU on the ellipsoid
    expected = set()
    for r in rows[:-1]:
        c = np.array([[r[f"{k}_lon"], r[f"{k}_lat"]] for k in ("tl", "tr", "br", "bl")])
        poly = footprint_polygon(c)
        for w in db.itertuples():
            v = iou(poly, window_polygon(Window(w.zoom, w.x, w.y, w.size_tiles)))
            if v >= 0.2 + 1e-3:
                expected.add((r["photo_id"], w.tile_id))
    got = set(zip(pairs.photo_id, pairs.tile_id))
    assert expected and expected <= got
    assert all(v >= 0.2 for v in pairs.iou) and "NOT-LOCALIZED" not in set(pairs.photo_id)
    # the evaluation region (east quarter) and the queries' split agree on what to drop
    out = main(args + ["--out", str(tmp_path / "train.parquet"), "--exclude", str(tiny / "regions.geojson") + "#eval"])
    assert out == 0
    train = read_manifest(tmp_path / "train.parquet", "pairs")
    truth = read_manifest(tiny / "truth.parquet", "truth", geometry=False)
    evals = set(truth.photo_id[truth.localizable & (truth.split == "eval")])
    assert evals and not (set(train.photo_id) & evals) and set(train.photo_id) == set(pairs.photo_id) - evals


BAD_INPUTS = {
    # case: (options, what the one-line error says)
    "queries as database": (["--database", "{tiny}/queries.parquet"], "this is a queries manifest, not a database"),
    "footprints as database": (["--database", "{tmp}/fp.parquet"], "this is a footprints manifest, not a database"),
    "CSV as database": (["--database", "{tmp}/q.csv"], "q.csv: not a Parquet file"),
    "folder as database": (["--database", "{tmp}"], "is a folder; pass the database manifest file"),
    "malformed region file": (["--exclude", "{tmp}/bad.geojson"], "bad.geojson: not a region file GDAL can read"),
    "CSV as region file": (["--exclude", "{tmp}/q.csv"], "q.csv: no region in the file"),
    "region split absent": (["--exclude", "{tiny}/regions.geojson#test"], "has split 'test' (present: train, eval)"),
    "query split absent": (
        ["--exclude", "split:test"],
        "no query of {tiny}/queries.parquet has split 'test' (present: ",
    ),
    "one spec by --set": (
        ["--set", "exclude=split:test"],  # a string is one spec, not a list of letters
        "no query of {tiny}/queries.parquet has split 'test' (present: ",
    ),
    "a number by --set": (["--set", "exclude=5"], "'exclude' = 5: a list of specs"),
    "garbage queries": (
        ["--exclude", "split:eval", "--queries", "{tmp}/garbage.parquet"],
        "garbage.parquet: could not be read as a table",
    ),
    "empty queries CSV": (["--exclude", "split:eval", "--queries", "{tmp}/empty.csv"], "empty.csv: could not be read"),
    "footprints without corners": (
        ["--footprints", "{tmp}/nocorners.parquet"],
        "nocorners.parquet: no corner columns tl_lat, tl_lon, tr_lat, tr_lon, br_lat, br_lon, bl_lat, bl_lon",
    ),
}


@pytest.mark.parametrize("only_unlocalized", [False, True])
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_pairs_stage_refuses_bad_inputs(tiny, tmp_path, capsys, case, only_unlocalized):
    """Each bad input ends in one line naming it, before any work, also when no footprint is localized (the
    database and the exclusions are checked all the same)."""
    from stages.cli import main

    fp = tmp_path / "fp.parquet"
    _true_footprints(tiny, fp)
    if only_unlocalized:
        df = pd.read_parquet(fp).assign(status="not_localized", geometry=None)  # no footprint, as the stage writes
        df[[c for c in df.columns if c[:3] in ("tl_", "tr_", "br_", "bl_")]] = None
        df.to_parquet(fp)
    pd.read_parquet(tiny / "queries.parquet").head(2).to_csv(tmp_path / "q.csv", index=False)
    (tmp_path / "bad.geojson").write_text("{bad json")
    (tmp_path / "garbage.parquet").write_bytes(b"PAR1 not really")
    (tmp_path / "empty.csv").touch()
    pd.DataFrame({"photo_id": ["P-E-1"], "status": ["localized"]}).to_parquet(tmp_path / "nocorners.parquet")
    options, message = BAD_INPUTS[case]
    options = [o.format(tiny=tiny, tmp=tmp_path) for o in options]
    out = tmp_path / "out" / "p.parquet"
    args = ["run", "pairs", "--workdir", str(tiny), "--footprints", str(fp), "--out", str(out)]
    assert main(args + options + ["-q"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message.format(tiny=tiny) in err and err.count("\n") == 1
    assert not out.exists()


def test_photo_rate_is_readable_for_slow_and_instant_runs():
    """The summary's rate: 1 photo in 2.1 s is 0.476 photos/s (it printed 0), and none for no time or no photo."""
    from stages.pairs import photo_rate

    assert photo_rate(1, 2.1) == ", 0.476 photos/s"
    assert photo_rate(45, 1.0) == ", 45 photos/s"
    assert photo_rate(250_000, 10.0) == ", 25,000 photos/s"
    assert photo_rate(0, 3.0) == photo_rate(10, 0.0) == ""


def test_a_database_typo_beside_an_existing_output_is_the_typo(tiny, tmp_path, capsys):
    """Inputs are checked before the output's settings are compared: a mistyped --database next to an
    existing pairs manifest says "not found", not "made with different settings, pass --overwrite"."""
    from stages.cli import main

    fp = tmp_path / "fp.parquet"
    _true_footprints(tiny, fp)
    args = [
        "run",
        "pairs",
        "--workdir",
        str(tiny),
        "--footprints",
        str(fp),
        "--out",
        str(tmp_path / "p.parquet"),
        "--workers",
        "1",
        "-q",
    ]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args + ["--database", str(tmp_path / "databse.parquet")]) == 1
    err = capsys.readouterr().err
    assert "database manifest not found" in err and "different settings" not in err
