import subprocess
import sys

import pytest

from pipeline.config import ConfigError, dumps_toml, load_toml
from stages import STAGES, get_stage
from stages.cli import main


def _run(*args):
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_the_registered_stages():
    top = _run("--help")
    assert top.returncode == 0 and "run" in top.stdout and "inspect" in top.stdout
    run = _run("run", "--help")
    assert run.returncode == 0
    for name in STAGES:
        assert name in run.stdout
    stage = _run("run", "index", "--help")
    assert stage.returncode == 0 and "--tiles" in stage.stdout and "--overwrite" in stage.stdout


def test_unknown_stage_lists_valid_ones(capsys):
    with pytest.raises(SystemExit) as err:
        main(["run", "nosuchstage"])
    assert err.value.code == 2
    assert "index" in capsys.readouterr().err


def test_failure_is_one_clear_line_and_nonzero(tmp_path, capsys):
    code = main(["run", "index", "--workdir", str(tmp_path), "-q"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("error: no tile source at") and "--tiles" in err


def test_inspect_of_a_missing_file(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "nope.parquet")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_config_precedence_and_unknown_keys(tmp_path):
    """defaults < the file's top level < its [index] table < --set < options; an unknown key is named with a close
    one and the valid ones, before any work."""
    from stages.cli import build_parser, settings_from_args

    path = tmp_path / "c.toml"
    path.write_text("min_valid = 0.1\nblock_px = 4\n[index]\nzooms = [10]\nblock_px = 6\n")

    def settings(*argv):
        args = build_parser().parse_args(["run", "index", "--config", str(path), *argv])
        return settings_from_args(get_stage("index"), args)

    s = settings()
    assert (s.zooms, s.min_valid, s.block_px, s.size_tiles) == ((10,), 0.1, 6, 4)
    s = settings("--set", "block_px=3", "--set", "zooms=8-9", "--zooms", "11")
    assert (s.zooms, s.block_px) == ((11,), 3)
    with pytest.raises(
        ConfigError,
        match="unknown --set key 'zoom' \\(did you mean 'zooms'\\?\\); valid keys: "
        "block_px, min_valid, out, size_tiles, tiles, year, zooms",
    ):
        settings("--set", "zoom=3")
    path.write_text("[index]\nmin_vaild = 0.2\n")
    with pytest.raises(ConfigError, match="unknown config file .*c.toml key 'min_vaild' \\(did you mean 'min_valid'"):
        settings()
    # what we save can be read back
    path.write_text(dumps_toml({"a": 'x"y', "b": [1, 2], "c": 0.25, "d": True}, "s"))
    assert load_toml(path, "s") == {"a": 'x"y', "b": [1, 2], "c": 0.25, "d": True}


def test_bad_toml_is_named(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("zooms = [")
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        load_toml(path)


@pytest.mark.parametrize(
    "toml, message",
    [
        ('zooms = "8-30"', "zooms must be integers 0-24"),
        ("rotations = [0, 22.5]", "key 'rotations' must be a list of integers, got [0, 22.5]"),
        ('contrast = "sharpen"', '''key 'contrast' = "sharpen": choose from "none", "clahe"'''),
        ("refine_iterations = 0", "refine_iterations = 0: an integer of at least 1"),
        ("limit = 0", "limit = 0: must be at least 1"),
        ('batch_size = "4"', "key 'batch_size' must be an integer"),
    ],
)
def test_a_bad_footprints_config_is_one_line_before_any_work(tmp_path, capsys, toml, message):
    (tmp_path / "c.toml").write_text(f"[footprints]\n{toml}\n")
    (tmp_path / "q.csv").write_text("photo_id,image_path,center_lat,center_lon\n")
    code = main(
        [
            "run",
            "footprints",
            "--workdir",
            str(tmp_path),
            "--queries",
            str(tmp_path / "q.csv"),
            "--config",
            str(tmp_path / "c.toml"),
            "-q",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: ") and message in err and err.count("\n") == 1


def test_os_errors_are_one_line_naming_the_file_and_the_way_out():
    import errno

    from stages.cli import os_error_message

    full = OSError(errno.ENOSPC, "No space left on device", "/data/fp.parquet.parts/3/part-00012.parquet")
    msg = os_error_message(full)
    assert msg.startswith("/data/fp.parquet.parts/3/part-00012.parquet: No space left on device; free some space")
    assert "resumes" in msg
    assert (
        os_error_message(OSError(errno.EIO, "Input/output error"))
        == "Input/output error; run again with -v for the details"
    )


def test_an_unwritable_geojson_ends_in_one_line_not_a_traceback(tmp_path, capsys):
    import pandas as pd

    from manifests import QUERIES, write_manifest

    q = write_manifest(
        pd.DataFrame({"photo_id": ["a"], "image_path": ["a.jpg"], "center_lat": [1.0], "center_lon": [2.0]}),
        tmp_path / "q.parquet",
        QUERIES,
    )
    (tmp_path / "f").write_text("")
    assert main(["inspect", str(q), "--geojson", str(tmp_path / "f" / "q.geojson")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(tmp_path / "f") in err and "Traceback" not in err


def test_a_misspelled_config_table_is_an_error_not_ignored(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[footprint]\nbatch_size = 8\n")
    assert main(["run", "footprints", "--workdir", str(tmp_path), "--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "unknown table [footprint]" in err and "[footprints]" in err


def test_a_glob_the_shell_expanded_gets_a_hint(tmp_path, capsys):
    for name in ("a.tif", "b.tif", "c.tif"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(SystemExit) as e:
        main(["run", "index", "--tiles", str(tmp_path / "a.tif"), str(tmp_path / "b.tif"), str(tmp_path / "c.tif")])
    assert e.value.code == 2
    assert "quote it" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, usage, hint",
    [
        (
            ["run", "footprints", "--batchsize", "4"],
            "usage: python -m pipeline run footprints",
            "did you mean --batch-size?",
        ),
        (["run", "pairs", "--iuo", "0.2"], "usage: python -m pipeline run pairs", "did you mean --iou?"),
        (["inspect", "x.parquet", "--geojsn", "o"], "usage: python -m pipeline inspect", "did you mean --geojson?"),
        (["run", "index", "--bogus"], "usage: python -m pipeline run index", "run index --help lists the options"),
    ],
)
def test_an_unknown_option_gets_its_commands_usage_and_a_close_name(argv, usage, hint, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(usage) and hint in err


def test_inspect_refuses_options_it_would_ignore(tmp_path, capsys):
    import pandas as pd

    from manifests import QUERIES, write_manifest

    q = write_manifest(
        pd.DataFrame({"photo_id": ["a"], "image_path": ["a.jpg"], "center_lat": [1.0], "center_lon": [2.0]}),
        tmp_path / "q.parquet",
        QUERIES,
    )
    assert main(["inspect", str(q), "--photo", "a"]) == 1
    assert "only work with --overlay" in capsys.readouterr().err
    assert main(["inspect", str(q), "--overlay", str(tmp_path / "ov"), "--queries", str(q), "--tiles", "x"]) == 1
    assert "needs a footprints manifest" in capsys.readouterr().err and not (tmp_path / "ov").exists()
    from manifests import FOOTPRINTS

    fp = write_manifest(
        pd.DataFrame({"photo_id": ["a"], "status": ["error"], "reason": ["unreadable"]}),
        tmp_path / "fp.parquet",
        FOOTPRINTS,
    )
    assert main(["inspect", str(fp), "--overlay", str(tmp_path / "ov"), "--queries", str(q), "--tiles", "x"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: --tiles:")  # one line, not the summary then a traceback hint


def test_out_of_range_seed_and_block_size_are_one_line(tmp_path, capsys):
    assert main(["run", "sample", "--size", "tiny", "--seed", "-1", "--workdir", str(tmp_path / "w")]) == 1
    assert "seed = -1: must lie in [0, 2**32)" in capsys.readouterr().err
    assert (
        main(["run", "index", "--tiles", str(tmp_path), "--block-px", "0", "--out", str(tmp_path / "db.parquet")]) == 1
    )
    assert "block_px = 0: must be at least 1" in capsys.readouterr().err


def test_set_values_are_toml_and_bare_text_stays_text():
    from pipeline.config import ConfigError, parse_settings

    assert parse_settings(["a=0", "b = [10, 11]", "c=none", "d=2.5", "e=true", 'f="x=y"']) == {
        "a": 0,
        "b": [10, 11],
        "c": "none",
        "d": 2.5,
        "e": True,
        "f": "x=y",
    }
    with pytest.raises(ConfigError, match="write KEY=VALUE"):
        parse_settings(["screen_inliers"])
