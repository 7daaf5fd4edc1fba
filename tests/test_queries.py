import os
import shutil

import pandas as pd
import pytest

from manifests import ManifestError, parse_earthloc_name, read_queries


@pytest.fixture()
def folder(tmp_path):
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (tmp_path / name).write_bytes(b"\xff\xd8\xff")
    return tmp_path


def _csv(folder, rows, columns=("photo_id", "image_path", "center_lat", "center_lon")):
    path = folder / "queries.csv"
    pd.DataFrame(rows, columns=list(columns)).to_csv(path, index=False)
    return path


def test_reads_real_sample_queries(real_sample):
    df, rejected = read_queries(real_sample / "queries.csv")
    assert len(df) == 8 and rejected.empty
    assert df.photo_id.iloc[0] == "ISS051-E-43872"
    assert df.image_path.iloc[0].endswith("photos/ISS051-E-43872.jpg")
    assert df.focal_length_mm.iloc[0] == 1150.0


def test_good_csv_resolves_relative_paths(folder):
    df, rejected = read_queries(_csv(folder, [["ISS001-E-1", "a.jpg", 10.0, 20.0]]))
    assert rejected.empty
    assert df.image_path.iloc[0] == str((folder / "a.jpg").resolve())


def test_missing_required_column(folder):
    path = _csv(folder, [["ISS001-E-1", "a.jpg", 10.0]], columns=("photo_id", "image_path", "center_lat"))
    with pytest.raises(ManifestError) as err:
        read_queries(path)
    assert "queries.csv" in str(err.value) and "column 'center_lon'" in str(err.value)
    assert "required column is missing" in str(err.value)


def test_duplicate_photo_id_names_both_rows(folder):
    path = _csv(
        folder, [["ISS001-E-1", "a.jpg", 10, 20], ["ISS001-E-2", "b.jpg", 10, 20], ["ISS001-E-1", "c.jpg", 10, 20]]
    )
    with pytest.raises(ManifestError) as err:
        read_queries(path)
    msg = str(err.value)
    assert "row 3 (line 4)" in msg and "first seen in row 1" in msg and "column 'photo_id'" in msg


@pytest.mark.parametrize(
    "lat,lon,column,fragment",
    [
        (float("nan"), 20.0, "center_lat", "missing or NaN"),
        (10.0, 200.0, "center_lon", "outside [-180, 180]"),
        (-91.0, 20.0, "center_lat", "outside [-90, 90]"),
        ("north", 20.0, "center_lat", "not a number"),
    ],
)
def test_bad_coordinates_name_row_and_column(folder, lat, lon, column, fragment):
    path = _csv(folder, [["ISS001-E-1", "a.jpg", 10, 20], ["ISS001-E-2", "b.jpg", lat, lon]])
    with pytest.raises(ManifestError) as err:
        read_queries(path)
    msg = str(err.value)
    assert f"row 2 (line 3) [photo_id ISS001-E-2], column '{column}'" in msg and fragment in msg
    assert msg.count("\n") == 0  # exactly one problem reported


def test_missing_image_file(folder):
    path = _csv(folder, [["ISS001-E-1", "a.jpg", 10, 20], ["ISS001-E-2", "nope.jpg", 10, 20]])
    with pytest.raises(ManifestError, match=r"row 2 .*column 'image_path'.*nope.jpg' does not exist"):
        read_queries(path)


def test_collect_mode_keeps_good_rows(folder):
    path = _csv(
        folder, [["ISS001-E-1", "a.jpg", 10, 20], ["ISS001-E-2", "nope.jpg", 10, 20], ["ISS001-E-3", "c.jpg", 95, 20]]
    )
    df, rejected = read_queries(path, on_error="collect")
    assert df.photo_id.tolist() == ["ISS001-E-1"]
    assert rejected.photo_id.tolist() == ["ISS001-E-2", "ISS001-E-3"]
    assert rejected.column.tolist() == ["image_path", "center_lat"]


def test_parquet_queries(folder):
    path = folder / "q.parquet"
    pd.DataFrame(
        {
            "photo_id": ["ISS001-E-1"],
            "image_path": ["a.jpg"],
            "center_lat": [1.0],
            "center_lon": [2.0],
            "tilt_deg": [20.0],
        }
    ).to_parquet(path)
    df, _ = read_queries(path)
    assert df.tilt_deg.iloc[0] == 20.0 and df.center_lon.iloc[0] == 2.0


def test_earthloc_names():
    row = parse_earthloc_name("@-10.3@40.4@-11.3@43.3@39@140@50@ISS064-E-513@.jpg")
    assert row == {
        "photo_id": "ISS064-E-513",
        "center_lat": -10.3,
        "center_lon": 40.4,
        "nadir_lat": -11.3,
        "nadir_lon": 43.3,
        "tilt_deg": 39.0,
        "focal_length_mm": 140.0,
        "cloud_pct": 50.0,
    }
    row = parse_earthloc_name(
        "@20.15@-103.57@20.31@-102.95@20.99@-103.22@20.83@-103.84@ISS068-E-30124@20221216@20.5@-106.6@5382@105.8@.jpg"
    )
    assert (row["photo_id"], row["center_lat"], row["center_lon"]) == ("ISS068-E-30124", 20.5, -106.6)
    with pytest.raises(ValueError, match="no photo id"):
        parse_earthloc_name("@1@2@3@.jpg")


def test_earthloc_folder(real_sample, tmp_path):
    shutil.copy(
        real_sample / "photos" / "ISS064-E-513.jpg", tmp_path / "@-10.3@40.4@-11.3@43.3@39@140@50@ISS064-E-513@.jpg"
    )
    df, _ = read_queries(tmp_path)
    assert df.photo_id.tolist() == ["ISS064-E-513"] and df.center_lat.iloc[0] == -10.3
    (tmp_path / "holiday.jpg").write_bytes(b"")
    with pytest.raises(ManifestError, match="holiday.jpg"):
        read_queries(tmp_path)
    # a stage collects it as one bad row and goes on with the others (one misnamed file stopped them all)
    df, rejected = read_queries(tmp_path, on_error="collect")
    assert df.photo_id.tolist() == ["ISS064-E-513"]
    assert rejected.photo_id.tolist() == ["holiday.jpg"] and rejected.column.tolist() == ["file name"]
    assert "rename it as @lat@lon@" in rejected.reason.iloc[0] and "center_lat" not in rejected.reason.iloc[0]
    # a name whose bytes are not UTF-8 (a Latin-1 camera export): one bad row too, its name escaped as text
    os.remove(tmp_path / "holiday.jpg")
    (tmp_path / os.fsdecode(b"caf\xe9.jpg")).write_bytes(b"")
    df, rejected = read_queries(tmp_path, on_error="collect")
    assert df.photo_id.tolist() == ["ISS064-E-513"] and rejected.photo_id.tolist() == ["caf\\xe9.jpg"]
    assert "is not valid UTF-8" in rejected.reason.iloc[0]


def test_spreadsheet_exports_are_read_and_wrong_headers_are_shown(tmp_path):
    """Spaces after the commas, a semicolon-separated export with upper-case names: read as meant.
    Columns under other names: the error lists the ones found."""
    (tmp_path / "spaces.csv").write_text("photo_id, image_path, center_lat, center_lon\na, x.jpg, 1.5, 2.0\n")
    (tmp_path / "semi.csv").write_text("PHOTO_ID;Image_Path;center_lat;center_lon\na;x.jpg;1.5;2.0\n")
    for name in ("spaces.csv", "semi.csv"):
        q, rejected = read_queries(tmp_path / name, check_images=False)
        assert q.iloc[0].photo_id == "a" and q.iloc[0].center_lat == 1.5 and q.iloc[0].center_lon == 2.0
        assert q.iloc[0].image_path == str(tmp_path / "x.jpg") and rejected.empty
    (tmp_path / "other.csv").write_text("id,path,lat,lon\na,x.jpg,1,2\n")
    with pytest.raises(ManifestError, match="found: 'id', 'path', 'lat', 'lon'"):
        read_queries(tmp_path / "other.csv", check_images=False)
