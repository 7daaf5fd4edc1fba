import json
import subprocess
import sys

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import rasterio
from rasterio.transform import from_origin

import pipeline.database as database
from manifests import DATABASE, read_manifest
from pipeline.geometry.geodesy import area_km2, window_polygon
from pipeline.geometry.windows import Window, window_origins
from pipeline.tile_sources import open_tile_source
from stages import get_stage
from stages.base import StageError


class Killed(Exception):
    """Stands for a run killed half way."""


@pytest.fixture()
def half_raster(tmp_path):
    """A seeded 1.5 deg x 1.5 deg RGB GeoTIFF in EPSG:4326 whose western third is nodata."""
    rng = np.random.default_rng(7)
    data = rng.integers(1, 255, size=(3, 300, 300), dtype=np.uint8)
    data[:, :, :100] = 0
    path = tmp_path / "img.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=300,
        height=300,
        count=3,
        dtype="uint8",
        nodata=0,
        crs="EPSG:4326",
        transform=from_origin(10.0, 45.5, 1.5 / 300, 1.5 / 300),
    ) as ds:
        ds.write(data)
    return path


def _conf(tiles, out, **kw):
    stage = get_stage("index")
    return stage, stage.resolve(stage.settings_class(tiles=str(tiles), out=str(out), **kw), out.parent)


def test_kept_windows_are_those_at_least_half_valid(half_raster, tmp_path):
    stage, conf = _conf(half_raster, tmp_path / "db.parquet", zooms=[11, 12])
    stage.execute(conf)
    df = read_manifest(tmp_path / "db.parquet", DATABASE)
    source = open_tile_source(str(half_raster))
    kept = set(df.tile_id)
    # brute force: render every candidate window at full resolution and measure its validity
    for zoom in (11, 12):
        xs, ys = window_origins(source.bounds_mercator, zoom, 4)
        for x in xs:
            for y in ys:
                w = Window(zoom, int(x), int(y))
                frac = source.render(w.bounds_mercator(), 256, 256).mask.mean()
                if abs(frac - 0.5) > 0.03:  # the index measures validity on a coarse mask
                    assert (w.tile_id in kept) == (frac >= 0.5), (w.tile_id, frac)
    assert len(kept) > 0
    row = df.iloc[0]
    w = Window.from_tile_id(row.tile_id)
    assert row.area_km2 == pytest.approx(area_km2(window_polygon(w)), rel=1e-6)
    assert (row.tl_lat, row.tl_lon) == pytest.approx(tuple(w.corners_lonlat()[0][::-1]))
    assert row.geometry.exterior.is_ccw


def test_imagery_across_lon_180_gets_the_window_across_it(tmp_path):
    """Two rasters meeting at lon 180 (64 km each side, 64 km tall, on the equator): at zoom 11 (windows of
    78 km, stride 39 km) the window centred on the seam is whole imagery, the two either side of it two thirds."""
    try:
        from imagery_fixtures import seam_rasters
    except ImportError:  # tests collected as a package
        from tests.imagery_fixtures import seam_rasters
    (tmp_path / "tif").mkdir()
    seam_rasters(tmp_path / "tif", 1000.0, 64, 64)
    stage, conf = _conf(tmp_path / "tif", tmp_path / "db.parquet", zooms=[11])
    stage.execute(conf)
    df = gpd.read_parquet(tmp_path / "db.parquet").set_index("tile_id")
    assert sorted(df.index) == ["11_0_1022", "11_2044_1022", "11_2046_1022"]
    across = df.loc["11_2046_1022"]
    assert (across.tl_lon, across.tr_lon, across.br_lon, across.bl_lon) == (
        179.6484375,
        -179.6484375,
        -179.6484375,
        179.6484375,
    )
    assert df.loc["11_2044_1022"].tr_lon == 180.0 and df.loc["11_0_1022"].tl_lon == -180.0  # exact edges
    assert across.geometry.geom_type == "MultiPolygon" and len(across.geometry.geoms) == 2
    assert sorted(p.bounds[0] for p in across.geometry.geoms) == [-180.0, 179.6484375]
    expected = area_km2(window_polygon(Window(11, 2046, 1022)))
    assert across.area_km2 == pytest.approx(expected, rel=1e-6)
    assert df.area_km2.max() - df.area_km2.min() < 1e-6  # one band of latitude: one area
    geo = json.loads(pq.read_schema(tmp_path / "db.parquet").metadata[b"geo"])
    assert "MultiPolygon" in geo["columns"]["geometry"]["geometry_types"]  # what GeoParquet readers are told


def test_a_run_stopped_between_its_output_and_its_config_is_found_up_to_date(half_raster, tmp_path, monkeypatch):
    """--overwrite with new settings, killed after the new database replaced the old but before its config did:
    the config saved as .pending just before the replacement describes the database there, so the same command
    takes it and finds the database up to date, and the old settings are refused (before, both were refused and
    only --overwrite, redoing all the work, got out of it)."""
    import stages.base as base

    out = tmp_path / "db.parquet"
    cfg = tmp_path / "db.parquet.config.toml"
    stage, conf = _conf(half_raster, out, zooms=[11])
    stage.execute(conf)
    old_db, old_cfg = out.read_bytes(), cfg.read_text()
    real = base.Stage.take_pending_config
    calls = []

    def killed_after_the_output(self, path):
        calls.append(path)
        if len(calls) == 2:  # the first call is the check before the run, the second comes after the output
            raise KeyboardInterrupt
        return real(self, path)

    monkeypatch.setattr(base.Stage, "take_pending_config", killed_after_the_output)
    stage, new = _conf(half_raster, out, zooms=[11], min_valid=0.9)
    with pytest.raises(KeyboardInterrupt):
        stage.execute(new, overwrite=True)
    monkeypatch.setattr(base.Stage, "take_pending_config", real)
    assert out.read_bytes() != old_db and cfg.read_text() == old_cfg  # the new database beside the old config
    assert (tmp_path / "db.parquet.config.toml.pending").is_file()
    assert "up to date" in stage.execute(new)
    assert "min_valid = 0.9" in cfg.read_text() and not (tmp_path / "db.parquet.config.toml.pending").exists()
    with pytest.raises(StageError, match=r"changed: min_valid"):
        stage.execute(conf)
    # killed before the output was replaced: the pending config describes nothing there and is dropped
    (tmp_path / "db.parquet.config.toml.pending").write_text(old_cfg)
    assert "up to date" in stage.execute(new) and not (tmp_path / "db.parquet.config.toml.pending").exists()
    assert "min_valid = 0.9" in cfg.read_text()


def test_rerun_skips_changed_config_refuses_overwrite_redoes(half_raster, tmp_path):
    out = tmp_path / "db.parquet"
    stage, conf = _conf(half_raster, out, zooms=[11])
    stage.execute(conf)
    mtime = out.stat().st_mtime_ns
    assert "up to date" in stage.execute(conf)
    assert out.stat().st_mtime_ns == mtime
    _, changed = _conf(half_raster, out, zooms=[11, 12])
    with pytest.raises(StageError, match=r"changed: zooms.*--overwrite"):
        stage.execute(changed)
    stage.execute(changed, overwrite=True)
    assert set(read_manifest(out, DATABASE).zoom) == {11, 12}


def test_the_work_is_announced_and_a_database_far_too_large_is_warned_of(half_raster, tmp_path, monkeypatch, caplog):
    """Before any window is examined: how many there are over all zooms (the bars only show one zoom's),
    and a warning when it is far beyond a retrieval database (a typo such as --zooms 13-24)."""
    source = open_tile_source(str(half_raster))
    counts = [database.count_candidate_windows(source, z, 4) for z in (11, 12)]
    monkeypatch.setattr("stages.index.MANY_WINDOWS", sum(counts) - 1)
    stage, conf = _conf(half_raster, tmp_path / "db.parquet", zooms=[11, 12])
    with caplog.at_level("INFO", logger="stages.index"):
        stage.execute(conf)
    assert (
        f"{sum(counts):,} candidate windows to examine (zoom 11: {counts[0]:,}, zoom 12: {counts[1]:,})" in caplog.text
    )
    assert [r.levelname for r in caplog.records if "far more than" in r.getMessage()] == ["WARNING"]
    monkeypatch.setattr("stages.index.MANY_WINDOWS", sum(counts))
    caplog.clear()
    stage.execute(conf, overwrite=True)
    assert "far more than" not in caplog.text


def test_interrupted_run_resumes_to_the_same_manifest(half_raster, tmp_path, monkeypatch):
    stage, conf = _conf(half_raster, tmp_path / "full.parquet", zooms=[10, 11, 12])
    stage.execute(conf)
    expected = pq.read_table(tmp_path / "full.parquet")

    real = database.iter_database_windows
    calls, die = [], [True]

    def dying(source, zoom, *a, **k):
        calls.append(zoom)
        if zoom == 12 and die[0]:
            raise Killed  # the run dies during the last zoom
        yield from real(source, zoom, *a, **k)

    monkeypatch.setattr("stages.index.iter_database_windows", dying)
    stage, conf = _conf(half_raster, tmp_path / "db.parquet", zooms=[10, 11, 12])
    with pytest.raises(Killed):
        stage.execute(conf)
    assert not (tmp_path / "db.parquet").exists()  # nothing half-written
    calls.clear()
    die[0] = False
    stage.execute(conf)
    assert calls == [12]  # zooms 10 and 11 were not redone
    assert pq.read_table(tmp_path / "db.parquet").equals(expected)
    assert not (tmp_path / "db.parquet.parts").exists()


def test_index_real_sample_from_the_command_line(real_sample, tmp_path):
    out = tmp_path / "db.parquet"
    # zoom 13 too: ISS056-E-181034's mosaic (28 m/px, 29 km) is smaller than half a zoom-12 window
    cmd = [
        sys.executable,
        "-m",
        "pipeline",
        "run",
        "index",
        "--tiles",
        str(real_sample / "mosaics"),
        "--out",
        str(out),
        "--zooms",
        "8-13",
        "-q",
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    gdf = gpd.read_parquet(out)
    assert gdf.crs.to_string() == "OGC:CRS84"
    assert set(gdf.zoom) == {8, 9, 10, 11, 12, 13}
    assert gdf.geometry.is_valid.all() and (gdf.geometry.geom_type == "Polygon").all()
    # every localizable truth footprint's centre is covered by windows (at the zooms its mosaic fills)
    truth = pd.read_csv(real_sample / "truth.csv")
    for _, t in truth[truth.localizable].iterrows():
        lat = np.mean([t.tl_lat, t.tr_lat, t.br_lat, t.bl_lat])
        lon = np.mean([t.tl_lon, t.tr_lon, t.br_lon, t.bl_lon])
        assert gdf.contains(gpd.points_from_xy([lon], [lat], crs="OGC:CRS84")[0]).sum() >= 4, t.photo_id
    ins = subprocess.run(
        [sys.executable, "-m", "pipeline", "inspect", str(out), "--geojson", str(tmp_path / "db.geojson")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ins.returncode == 0, ins.stderr
    assert "kind: database" in ins.stdout and f"rows: {len(gdf)}" in ins.stdout and "CRS OGC:CRS84" in ins.stdout
    back = gpd.read_file(tmp_path / "db.geojson")
    assert len(back) == len(gdf)
    assert back.geometry.iloc[0].equals_exact(gdf.geometry.iloc[0], 1e-9)
