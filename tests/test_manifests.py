import json

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import shapely

from manifests import (
    DATABASE,
    FOOTPRINTS,
    PAIRS,
    QUERIES,
    ManifestError,
    ManifestWriter,
    read_manifest,
    write_manifest,
)


def _footprints() -> pd.DataFrame:
    square = shapely.Polygon([(10, 10), (10, 11), (11, 11), (11, 10)])  # clockwise on purpose
    split = shapely.MultiPolygon([shapely.box(179.5, -1, 180, 1), shapely.box(-180, -1, -179.5, 1)])
    return pd.DataFrame(
        {
            "photo_id": ["ISS001-E-1", "ISS001-E-2", "ISS001-E-3"],
            "status": ["localized", "localized", "not_localized"],
            "reason": [None, None, "too few inliers"],
            "geometry": [square, split, None],
            "tl_lat": [11.0, 1.0, None],
            "tl_lon": [10.0, 179.5, None],
            "inliers": [120, 80, 4],
            "homography": [list(np.eye(3).ravel()), list(np.eye(3).ravel()), None],
        }
    )


def test_footprints_are_geoparquet_that_geopandas_reads(tmp_path):
    path = write_manifest(_footprints(), tmp_path / "footprints.parquet", FOOTPRINTS)
    gdf = gpd.read_parquet(path)
    assert gdf.crs.to_string() == "OGC:CRS84"
    assert gdf.geometry.iloc[0].equals(shapely.box(10, 10, 11, 11))
    assert gdf.geometry.iloc[0].exterior.is_ccw  # re-oriented counter-clockwise
    assert gdf.geometry.iloc[1].geom_type == "MultiPolygon"
    assert all(p.exterior.is_ccw for p in gdf.geometry.iloc[1].geoms)
    assert gdf.geometry.iloc[2] is None
    geo = json.loads(pq.read_schema(path).metadata[b"geo"])
    col = geo["columns"]["geometry"]
    assert geo["version"] == "1.1.0"
    assert col["covering"]["bbox"]["xmin"] == ["bbox", "xmin"]
    assert col["orientation"] == "counterclockwise"
    assert sorted(col["geometry_types"]) == ["MultiPolygon", "Polygon"]
    bbox = pq.read_table(path, columns=["bbox"]).column("bbox").to_pylist()
    assert bbox[1] == {"xmin": -180, "ymin": -1, "xmax": 180, "ymax": 1} and bbox[2] is None
    # the bbox covering column lets readers filter without decoding geometries
    sel = gpd.read_parquet(path, bbox=(9, 9, 12, 12))
    assert list(sel.photo_id) == ["ISS001-E-1"]


def test_read_back_round_trip_and_types(tmp_path):
    path = write_manifest(_footprints(), tmp_path / "f.parquet", FOOTPRINTS)
    df = read_manifest(path, FOOTPRINTS)
    assert list(df.columns) == FOOTPRINTS.schema.names
    assert df.inliers.tolist() == [120, 80, 4]
    assert np.allclose(df.homography.iloc[0], np.eye(3).ravel())
    assert pq.read_schema(path).field("inliers").type == "int32"


def test_validation_names_file_row_and_column(tmp_path):
    df = _footprints()
    df.loc[1, "status"] = "done"
    path = tmp_path / "bad.parquet"
    write_manifest(df, path, FOOTPRINTS)
    with pytest.raises(ManifestError) as err:
        read_manifest(path, FOOTPRINTS)
    msg = str(err.value)
    assert "bad.parquet" in msg and "row 2" in msg and "'status'" in msg and "ISS001-E-2" in msg
    assert "one of localized, not_localized, error" in msg


def test_a_localized_row_needs_its_corners_and_only_it_has_them(tmp_path):
    df = _footprints()
    df.loc[0, ["tl_lat", "tl_lon"]] = None  # localized, no footprint
    df.loc[2, ["tl_lat", "tl_lon"]] = [5.0, 5.0]  # not_localized, with corners
    path = write_manifest(df, tmp_path / "f.parquet", FOOTPRINTS)
    with pytest.raises(ManifestError) as err:
        read_manifest(path, FOOTPRINTS)
    msg = str(err.value)
    assert "row 1" in msg and "ISS001-E-1" in msg and "localized row without its footprint's corners" in msg
    assert "row 3" in msg and "ISS001-E-3" in msg and "corners on a row that is not localized" in msg
    assert "ISS001-E-2" not in msg


def test_missing_column_names_the_stage_that_makes_it(tmp_path):
    path = tmp_path / "pairs.parquet"
    pd.DataFrame({"photo_id": ["a"], "tile_id": ["1_2_3"]}).to_parquet(path)
    with pytest.raises(ManifestError, match=r"column 'iou'.*run pairs"):
        read_manifest(path, PAIRS)


def test_failed_write_leaves_nothing_behind(tmp_path):
    path = tmp_path / "db.parquet"
    with pytest.raises(RuntimeError):
        with ManifestWriter(path, DATABASE):
            raise RuntimeError("killed half way")
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_previous_file(tmp_path):
    path = write_manifest(_footprints(), tmp_path / "f.parquet", FOOTPRINTS)
    before = path.read_bytes()
    with pytest.raises(ValueError):
        write_manifest(pd.DataFrame({"photo_id": ["x"], "bogus": [1]}), path, FOOTPRINTS)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["f.parquet"]


def test_before_replace_sees_the_finished_file_and_its_failure_replaces_nothing(tmp_path):
    path = write_manifest(_footprints(), tmp_path / "f.parquet", FOOTPRINTS)
    seen = []

    def check(tmp):
        seen.append((len(pq.read_table(tmp)), len(pq.read_table(path))))  # the new file whole, the old in place
        if len(seen) == 2:
            raise OSError("disk full")

    write_manifest(_footprints().head(1), path, FOOTPRINTS, before_replace=check)
    assert seen == [(1, 3)] and len(pq.read_table(path)) == 1
    after = path.read_bytes()
    with pytest.raises(OSError, match="disk full"):
        write_manifest(_footprints(), path, FOOTPRINTS, before_replace=check)
    assert seen[1] == (3, 1)
    assert path.read_bytes() == after and [p.name for p in tmp_path.iterdir()] == ["f.parquet"]


def test_inspect_footprints_shows_statuses_inliers_and_exports_geojson(tmp_path):
    from manifests.inspect import inspect_manifest

    path = write_manifest(_footprints(), tmp_path / "f.parquet", FOOTPRINTS)
    text = inspect_manifest(path, tmp_path / "f.geojson")
    assert "kind: footprints" in text and "rows: 3" in text
    assert "localized             2  (66.7 %)" in text and "not_localized         1  (33.3 %)" in text
    assert "inliers histogram:" in text and "too few inliers" in text
    back = gpd.read_file(tmp_path / "f.geojson")
    assert len(back) == 2 and back.crs.to_epsg() == 4326  # RFC 7946: always WGS84 lon/lat
    assert back.geometry.iloc[0].equals(gpd.read_parquet(path).geometry.iloc[0])
    assert back.geometry.iloc[1].geom_type == "MultiPolygon"  # split at lon 180, as stored
    assert "crs" not in json.loads((tmp_path / "f.geojson").read_text())  # RFC 7946 removed the member


def test_geojson_of_queries_is_their_weak_labels_and_pairs_are_refused(tmp_path):
    """Queries have no polygon: each photo's weak label becomes a point. Pairs have no geometry at
    all: a clear refusal that says what to export instead, not a geopandas traceback."""
    from manifests.inspect import inspect_manifest

    q = write_manifest(
        pd.DataFrame(
            {
                "photo_id": ["a", "b"],
                "image_path": ["a.jpg", "b.jpg"],
                "center_lat": [45.0, -10.5],
                "center_lon": [7.0, 40.25],
            }
        ),
        tmp_path / "q.parquet",
        QUERIES,
    )
    text = inspect_manifest(q, tmp_path / "q.geojson")
    assert "wrote 2 features" in text
    back = gpd.read_file(tmp_path / "q.geojson")
    assert back.crs.to_epsg() == 4326 and list(back.photo_id) == ["a", "b"]
    assert back.geometry.iloc[1].equals(shapely.Point(40.25, -10.5))
    assert json.loads((tmp_path / "q.geojson").read_text())["name"] == "q"  # not the temporary file's name
    p = write_manifest(
        pd.DataFrame(
            {
                "photo_id": ["a"],
                "tile_id": ["1_0_0"],
                "iou": [0.5],
                "zoom": [1],
                "intersection_km2": [1.0],
                "photo_area_km2": [2.0],
                "tile_area_km2": [2.0],
            }
        ),
        tmp_path / "p.parquet",
        PAIRS,
    )
    with pytest.raises(ManifestError, match="no geometry to export.*footprints, database"):
        inspect_manifest(p, tmp_path / "p.geojson")
    assert not (tmp_path / "p.geojson").exists()
    with pytest.raises(ManifestError, match="is a folder"):
        inspect_manifest(tmp_path)


def test_streamed_batches_form_full_row_groups(tmp_path):
    path = tmp_path / "p.parquet"
    with ManifestWriter(path, PAIRS, row_group_size=100) as w:
        for i in range(25):
            w.write(
                pd.DataFrame(
                    {
                        "photo_id": [f"p{i}"] * 10,
                        "tile_id": ["1_0_0"] * 10,
                        "iou": [0.5] * 10,
                        "zoom": [1] * 10,
                        "intersection_km2": [1.0] * 10,
                        "photo_area_km2": [2.0] * 10,
                        "tile_area_km2": [2.0] * 10,
                    }
                )
            )
    meta = pq.ParquetFile(path).metadata
    assert meta.num_rows == 250 and meta.num_row_groups == 3


def test_geojson_of_a_footprints_file_resaved_without_geoparquet_metadata(tmp_path):
    """``DataFrame.to_parquet`` keeps the WKB column but drops the ``geo`` metadata; the export still works."""
    from manifests.inspect import inspect_manifest

    path = write_manifest(_footprints(), tmp_path / "f.parquet", FOOTPRINTS)
    plain = tmp_path / "plain.parquet"
    pd.read_parquet(path).query("status == 'localized'").to_parquet(plain)
    assert b"geo" not in (pq.read_schema(plain).metadata or {})
    assert "wrote 2 features" in inspect_manifest(plain, tmp_path / "p.geojson")
    back = gpd.read_file(tmp_path / "p.geojson")
    assert back.crs.to_epsg() == 4326
    assert back.geometry.iloc[0].equals(gpd.read_parquet(path).geometry.iloc[0])
