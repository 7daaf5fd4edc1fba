"""Typed settings (pipeline/settings.py) and stages that keep nothing between runs (stages/base.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.config import ConfigError
from stages import STAGES, get_stage
from stages.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def _stage_parser(name: str):
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["run"]
    return next(a for a in sub._actions if a.dest == "stage").choices[name]


@pytest.mark.parametrize("name", list(STAGES))
def test_help_lists_every_setting_with_its_default(name):
    """Every setting a user may give is an option, generated from the dataclass: its help says its default."""
    keys = STAGES[name].settings_class.user_keys()
    options = {a.dest: a for a in _stage_parser(name)._actions if a.dest in keys}
    assert set(options) == set(keys)
    for key, action in options.items():
        assert "default" in action.help, (key, action.help)
        assert action.default is None  # not given: --config and --set stay in force
    text = _stage_parser(name).format_help()
    assert all(a.option_strings[0] in text for a in options.values())


@pytest.mark.parametrize(
    "toml, message",
    [
        (
            "screen_inlier = 3",
            "key 'screen_inlier' (did you mean 'screen_inliers'?); valid keys: batch_size, calibration",
        ),
        ("half = 1", "key 'half' must be a boolean, got 1; write it as the default is written: half = true"),
        ('rotations = "0, 90"', "key 'rotations' must be a list of integers, got '0, 90'"),
    ],
)
def test_a_bad_settings_file_is_refused_before_any_work(tmp_path, capsys, toml, message):
    """Refused when the file is read: no sample workspace is made, no worker started."""
    (tmp_path / "c.toml").write_text(f"[footprints]\n{toml}\n")
    code = main(["run", "footprints", "--workdir", str(tmp_path / "w"), "--config", str(tmp_path / "c.toml"), "-q"])
    err = capsys.readouterr().err
    assert code == 1 and message in err and f"config file {tmp_path / 'c.toml'}" in err
    assert not (tmp_path / "w").exists()


def test_the_saved_settings_of_the_previous_version_are_still_up_to_date():
    """The record beside an output and the parts folder of an interrupted run, for every stage's defaults, as
    the version before typed settings wrote them (acbf333, tests/data/records-acbf333.json): the same, so its
    outputs stay up to date and its interrupted runs resume."""
    old = json.loads((ROOT / "tests" / "data" / "records-acbf333.json").read_text())
    workdir = Path("/nonexistent-workspace")
    assert set(old) <= set(STAGES)  # stages added since have no earlier outputs
    for name in old:
        stage = STAGES[name]
        settings = stage.resolve(stage.settings_class(), workdir)
        assert stage.record(settings)[name] == old[name]["record"], name
        assert stage.parts_dir(settings).name == old[name]["parts"], name


def test_settings_are_values():
    """Frozen, compared by value, checked whenever made (replace too)."""
    s = get_stage("index").settings_class(zooms=[11, 10])
    assert s.zooms == (10, 11) and s == get_stage("index").settings_class(zooms="10-11")
    with pytest.raises(AttributeError):
        s.zooms = (9,)
    with pytest.raises(ConfigError, match="min_valid = 2.0: must lie in \\[0, 1\\]"):
        s.replace(min_valid=2)


def _run_in_process(tiny: Path, out: Path) -> None:
    """Two stages, and each of them twice with other settings, in this process: index from two threads at once,
    then footprints twice (other zooms, other photos, other workspaces)."""
    index = get_stage("index")
    settings = [
        index.settings_class(tiles=str(tiny / "tiles"), out=str(out / "db-a.parquet"), zooms=(9,)),
        index.settings_class(tiles=str(tiny / "tiles"), out=str(out / "db-b.parquet"), zooms=(10, 11), min_valid=0.9),
    ]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda s: index.execute(s, workdir=out), settings))
    fp = get_stage("footprints")
    for k, (zooms, limit) in enumerate([((11,), 2), ((10, 11), 1)]):
        s = fp.settings_class.from_layers(
            (
                {
                    **FAST,
                    "queries": str(tiny / "queries.parquet"),
                    "tiles": str(tiny / "tiles"),
                    "out": str(out / f"fp-{k}.parquet"),
                    "zooms": zooms,
                    "limit": limit,
                },
                "test",
            )
        )
        fp.execute(s, workdir=out / f"w{k}")


FAST = {
    "max_keypoints": 128,
    "photo_px": 256,
    "window_px": 256,
    "refine_px": 256,
    "refine_keypoints": 256,
    "refine_surroundings_keypoints": 512,
    "rotations": [0],
    "workers": 1,
    "calibration": "none",
    "min_inliers": 15,
}
"""A search small enough to run four times in a test (the outputs are compared, not judged)."""


def _run_in_processes(tiny: Path, out: Path) -> None:
    def cli(*args):
        done = subprocess.run(
            [sys.executable, "-m", "pipeline", "run", *args, "-q"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr

    cli("index", "--tiles", str(tiny / "tiles"), "--out", str(out / "db-a.parquet"), "--zooms", "9")
    cli(
        "index",
        "--tiles",
        str(tiny / "tiles"),
        "--out",
        str(out / "db-b.parquet"),
        "--zooms",
        "10-11",
        "--min-valid",
        "0.9",
    )
    sets = [x for k, v in FAST.items() for x in ("--set", f"{k}={json.dumps(v)}")]
    for k, (zooms, limit) in enumerate([("11", "2"), ("10-11", "1")]):
        cli(
            "footprints",
            "--queries",
            str(tiny / "queries.parquet"),
            "--tiles",
            str(tiny / "tiles"),
            "--out",
            str(out / f"fp-{k}.parquet"),
            "--zooms",
            zooms,
            "--limit",
            limit,
            "--workdir",
            str(out / f"w{k}"),
            *sets,
        )


def test_stages_run_twice_in_one_process_as_in_separate_ones(tiny, tmp_path):
    here, apart = tmp_path / "here", tmp_path / "apart"
    _run_in_process(tiny, here)
    _run_in_processes(tiny, apart)
    for name in ("db-a", "db-b", "fp-0", "fp-1"):
        a, b = pq.read_table(here / f"{name}.parquet"), pq.read_table(apart / f"{name}.parquet")
        if "elapsed_s" in a.column_names:  # seconds differ from run to run
            a, b = a.drop(["elapsed_s"]), b.drop(["elapsed_s"])
        assert a.equals(b), name
        saved = [(d / f"{name}.parquet.config.toml").read_text().replace(str(d), "OUT") for d in (here, apart)]
        assert saved[0].split("[inputs]")[0] == saved[1].split("[inputs]")[0], name  # the same settings recorded
    assert pq.read_table(here / "db-a.parquet").num_rows != pq.read_table(here / "db-b.parquet").num_rows
    assert pq.read_table(here / "fp-0.parquet").num_rows == 2 and pq.read_table(here / "fp-1.parquet").num_rows == 1
