"""The machinery every stage shares (stages/base.py), on a tiny stage that copies a file."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from manifests.files import atomic_output
from pipeline.config import ConfigError
from pipeline.settings import Settings, setting
from stages.base import Stage, StageError, StageRun, source_files


@dataclass(frozen=True)
class CopySettings(Settings):
    src: str = setting("", "the file to copy")
    out: str = setting("", "the copy")
    upper: bool = setting(False, "upper-case the copy")
    batch: int = setting(2, "lines per part", partition=True)
    workers: int | None = setting(None, "processes", runtime=True)


class Copy(Stage):
    """Copies ``src`` to ``out``; makes ``src`` when missing (as footprints makes the sample workspace)."""

    name = "copy"
    settings_class = CopySettings

    def __init__(self, fail: bool = False):
        self.fail, self.runs = fail, 0  # the test's own instruments, not run state

    def output(self, s):
        return Path(s.out)

    def input_files(self, s):
        return source_files(s.src)

    def prepare(self, run):
        if not Path(run.settings.src).exists():
            Path(run.settings.src).write_text("made by prepare\n")

    def run(self, run: StageRun):
        self.runs += 1
        run.parts_dir().mkdir(parents=True, exist_ok=True)
        if self.fail:
            raise RuntimeError("killed half way")
        text = Path(run.settings.src).read_text()
        with atomic_output(run.settings.out) as tmp:
            tmp.write_text(text.upper() if run.settings.upper else text)
        return "copied"


def _conf(tmp_path: Path, **kw) -> CopySettings:
    return CopySettings(**{"src": str(tmp_path / "src.txt"), "out": str(tmp_path / "out.txt"), **kw})


def test_an_input_made_by_the_run_itself_is_up_to_date_the_second_time(tmp_path):
    stage = Copy()
    assert stage.execute(_conf(tmp_path)).startswith("copied")
    assert "up to date" in stage.execute(_conf(tmp_path)) and stage.runs == 1
    assert not (tmp_path / "out.txt.parts").exists()  # removed once the output is written


def test_parts_are_keyed_by_config_inputs_and_partition(tmp_path):
    stage = Copy()
    (tmp_path / "src.txt").write_text("a\n")
    base = stage.parts_dir(_conf(tmp_path))
    assert stage.parts_dir(_conf(tmp_path, workers=8)) == base  # runtime only: same work, same parts
    assert stage.parts_dir(_conf(tmp_path, batch=3)) != base  # cut differently: other parts
    assert stage.parts_dir(_conf(tmp_path, upper=True)) != base
    (tmp_path / "src.txt").write_text("a longer input\n")
    assert stage.parts_dir(_conf(tmp_path)) != base


def test_a_failed_overwrite_keeps_the_old_output_and_its_config(tmp_path):
    (tmp_path / "src.txt").write_text("a\n")
    assert Copy().execute(_conf(tmp_path)).startswith("copied")
    with pytest.raises(RuntimeError):
        Copy(fail=True).execute(_conf(tmp_path, upper=True), overwrite=True)
    assert (tmp_path / "out.txt").read_text() == "a\n"
    assert "up to date" in Copy().execute(_conf(tmp_path))  # the config beside it still says how it was made
    assert Copy().execute(_conf(tmp_path, upper=True), overwrite=True).startswith("copied")
    assert (tmp_path / "out.txt").read_text() == "A\n"


def test_a_folder_input_is_identified_by_its_files(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "12").mkdir()  # an XYZ zoom folder: not a file
    assert source_files(tmp_path, image_folder=True) == [tmp_path / "a.jpg"]
    assert source_files(tmp_path) == [tmp_path / "a.jpg", tmp_path / "notes.txt"]
    assert source_files(tmp_path / "*.jpg") == [tmp_path / "a.jpg"]


@pytest.mark.parametrize(
    "key, value, kind",
    [("batch", "4", "an integer"), ("upper", "false", "a boolean"), ("upper", 1, "a boolean"), ("src", 3, "a string")],
)
def test_a_value_of_the_wrong_kind_is_named(key, value, kind):
    with pytest.raises(ConfigError, match=f"config file c.toml key '{key}' must be {kind}, got"):
        CopySettings.from_layers(({key: value}, "config file c.toml"))
    with pytest.raises(
        ConfigError,
        match="unknown --set key 'uper' \\(did you mean 'upper'\\?\\); valid keys: batch, out, src, upper, workers",
    ):
        CopySettings.from_layers(({"uper": True}, "--set"))


def _write_items(items: list, part: str) -> dict:
    """A task: fails for a batch holding "poison", else writes its items (a real Parquet part)."""
    import pandas as pd

    if "poison" in items:
        raise RuntimeError("this item always fails")
    with atomic_output(part) as tmp:
        pd.DataFrame({"item": items, "error": [""] * len(items)}).to_parquet(tmp)
    return {"photos": len(items), "ok": len(items)}


def test_a_batch_that_fails_for_good_is_rerun_item_by_item(tmp_path):
    """One item whose task always fails (as a photo that kills its worker) costs its own row, not the run."""
    import pandas as pd
    from dask.distributed import Client, LocalCluster

    from stages.cluster import gather_isolating

    work = [
        (str(tmp_path / f"batch{k}.parquet"), items)
        for k, items in enumerate([["a", "b"], ["c", "poison", "d"], ["poison"]])
    ]

    def failed_rows(item, e):
        return pd.DataFrame({"item": [item], "error": [f"{type(e).__name__}: {e}"]})

    def assemble(part, pieces):
        frames = [pd.read_parquet(p) if isinstance(p, str) else p for p in pieces]
        with atomic_output(part) as tmp:
            pd.concat(frames, ignore_index=True).to_parquet(tmp)

    with (
        LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):

        def submit(items, part, suffix):
            return client.submit(_write_items, items, part, key=f"t-{suffix}", pure=False)

        failed = gather_isolating(client, work, submit, failed_rows, assemble, "test", "ok")
    assert failed == ["poison: RuntimeError: this item always fails"] * 2
    batch1 = pd.read_parquet(tmp_path / "batch1.parquet")
    assert batch1["item"].tolist() == ["c", "poison", "d"]  # in the batch's order
    assert batch1["error"].tolist() == ["", "RuntimeError: this item always fails", ""]
    assert pd.read_parquet(tmp_path / "batch0.parquet")["item"].tolist() == ["a", "b"]
    assert pd.read_parquet(tmp_path / "batch2.parquet")["item"].tolist() == ["poison"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["batch0.parquet", "batch1.parquet", "batch2.parquet"]


def _sleep_and_write(items: list, part: str) -> dict:
    import time

    time.sleep(0.02)
    return _write_items(items, part)


def test_batches_are_submitted_a_window_at_a_time_and_the_bar_draws_per_interval(tmp_path, capsys):
    """At most ``in_flight`` tasks wait at once (not every batch of a 300k-photo run), all batches still
    run in order of submission, and the progress bar's running total does not draw a line per task."""
    import logging

    import pandas as pd
    from dask.distributed import Client, LocalCluster

    from stages.cluster import gather_isolating

    work = [(str(tmp_path / f"batch{k}.parquet"), [f"i{k}"]) for k in range(40)]
    submitted, waiting = [], []
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.INFO)  # the bar shows at INFO
    try:
        with (
            LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as cluster,
            Client(cluster) as client,
        ):

            def submit(items, part, suffix):
                waiting.append(sum(not f.done() for f in submitted))
                f = client.submit(_sleep_and_write, items, part, key=f"w-{suffix}", pure=False)
                submitted.append(f)
                return f

            failed = gather_isolating(
                client, work, submit, lambda item, e: None, lambda part, pieces: None, "test", "ok", in_flight=3
            )
    finally:
        root.setLevel(level)
    assert failed == [] and len(submitted) == 40
    assert max(waiting) <= 2  # a fourth is submitted only once one of three is gathered
    assert [pd.read_parquet(p)["item"].tolist() for p, _ in work] == [[f"i{k}"] for k in range(40)]
    drawn = capsys.readouterr().err.count("test:")
    assert 1 <= drawn <= 3, drawn  # not on stderr's terminal: the first and last lines, not one per task


def test_a_cancelled_task_stops_the_run_for_a_resume_and_is_not_run_item_by_item(tmp_path):
    """A lost scheduler connection cancels every future: that is no batch's fault, so no batch is rerun
    item by item (which sent 190k tasks to a dead connection); the run stops with how to go on."""
    from dask.distributed import Client, LocalCluster

    from stages.cluster import gather_isolating

    work = [(str(tmp_path / f"batch{k}.parquet"), items) for k, items in enumerate([["a"], ["b", "c"], ["d"]])]
    submitted = []
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):

        def submit(items, part, suffix):
            f = client.submit(_sleep_and_write, items, part, key=f"c-{suffix}", pure=False)
            if "b" in items:
                client.cancel(f)
            submitted.append(items)
            return f

        with pytest.raises(StageError, match="batch1.parquet's task was cancelled .*run the same command again"):
            gather_isolating(client, work, submit, lambda item, e: None, lambda part, pieces: None, "test", "ok")
    assert ["b"] not in submitted and ["c"] not in submitted  # not rerun one by one


def _closed(items, part):
    from distributed.comm.core import CommClosedError

    raise CommClosedError("in <TCP (closed) ConnectionPool.gather>: Stream is closed")


def test_a_connection_closed_while_fetching_a_result_stops_the_run_for_a_resume(tmp_path):
    """When the scheduler goes away, ``result()`` raises CommClosedError instead of CancelledError if the
    connection closes while the result is being fetched (seen in CI): the same stop, with how to go on, in both
    gathers, and no batch rerun item by item. (The task raises the error here: ``result()`` re-raises it.)"""
    from dask.distributed import Client, LocalCluster

    from stages.cluster import gather, gather_isolating

    work = [(str(tmp_path / "batch0.parquet"), ["a", "b"])]
    submitted = []
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):

        def submit(items, part, suffix):
            submitted.append(items)
            return client.submit(_closed, items, part, key=f"x-{suffix}", pure=False)

        with pytest.raises(StageError, match="batch0.parquet's task was cancelled .*run the same command again"):
            gather_isolating(client, work, submit, lambda item, e: None, lambda part, pieces: None, "test", "ok")
        with pytest.raises(StageError, match="connection to the Dask scheduler was lost.*run the same command"):
            gather([submit(["c"], "c", "c")], 1, "test", "ok")
    assert submitted == [["a", "b"], ["c"]]  # nothing rerun one by one


def test_an_unwritable_output_is_refused_before_any_work(tmp_path):
    stage = Copy()
    (tmp_path / "a_file").write_text("")
    with pytest.raises(StageError, match="is a folder; pass --out with a file path"):
        stage.execute(_conf(tmp_path, out=str(tmp_path)))
    with pytest.raises(StageError, match="a_file is a file, not a folder"):
        stage.execute(_conf(tmp_path, out=str(tmp_path / "a_file" / "sub" / "out.txt")))
    assert stage.runs == 0 and not (tmp_path / "src.txt").exists()  # refused before prepare, too
    # a folder that does not exist yet is made, and the probe leaves nothing behind
    assert stage.execute(_conf(tmp_path, out=str(tmp_path / "new" / "out.txt"))).startswith("copied")
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["out.txt", "out.txt.config.toml"]


def test_inputs_are_checked_before_the_settings_are_compared(tmp_path):
    """A typo in an input beside an existing output is reported as the typo (``check``), not as
    "changed settings, pass --overwrite"; an output that is an input is refused even with --overwrite."""

    class Checked(Copy):
        def prepare(self, run):  # makes no inputs
            pass

        def check(self, run):
            if not Path(run.settings.src).exists():
                raise StageError(f"no such input {run.settings.src}")

    stage = Checked()
    (tmp_path / "src.txt").write_text("a\n")
    stage.execute(_conf(tmp_path))
    with pytest.raises(StageError, match="no such input"):
        stage.execute(_conf(tmp_path, src=str(tmp_path / "typo.txt")))
    with pytest.raises(StageError, match="is one of this stage's inputs"):
        stage.execute(_conf(tmp_path, out=str(tmp_path / "src.txt")), overwrite=True)
    assert (tmp_path / "src.txt").read_text() == "a\n"


def test_a_port_that_is_not_a_dask_scheduler_is_refused_not_waited_on():
    """Dask's Client waits forever on a live port that never answers its handshake (a web server, the
    dashboard): the probe gives up after its deadline with what to pass; a real scheduler passes."""
    import socket
    import threading

    from distributed import LocalCluster

    from stages.cluster import probe_scheduler

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = f"tcp://127.0.0.1:{server.getsockname()[1]}"
        accepted = []  # keep the connection open: a silent service, not a closed one
        threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True).start()
        with pytest.raises(StageError, match="did not answer as a Dask scheduler in 1 s"):
            probe_scheduler(address, timeout=1)
    with pytest.raises(StageError, match="cannot reach the Dask scheduler"):  # nothing listens any more
        probe_scheduler(address, timeout=1)
    with LocalCluster(n_workers=0, processes=False, protocol="tcp", dashboard_address=":0") as cluster:
        probe_scheduler(cluster.scheduler_address, timeout=5)


def test_the_default_worker_count_fits_the_memory(caplog):
    from stages.cluster import local_worker_count

    gb = 2**30
    assert local_worker_count(None, 2, 24 * gb, 5 * gb) == 2  # this machine: one per core
    assert local_worker_count(None, 16, 24 * gb, None) == 16  # no bound given (pairs)
    assert not caplog.records
    assert local_worker_count(None, 16, 32 * gb, 5 * gb) == 6  # 16 workers would get 2 GB each
    assert "6 workers, not 16" in caplog.text and "--workers overrides" in caplog.text
    assert local_worker_count(None, 4, 2 * gb, 5 * gb) == 1  # at least one
    caplog.clear()
    assert local_worker_count(16, 16, 32 * gb, 5 * gb) == 16  # asked for: kept, with a warning
    assert "--workers 16: 2.0 GB of memory each" in caplog.text


def test_an_output_its_config_does_not_describe_is_refused_not_up_to_date(tmp_path, monkeypatch):
    """A run stopped after replacing the output but before writing its config (a full disk, a kill) leaves the
    new output beside the old config: the old settings must not find it "up to date"."""
    import stages.base as base

    (tmp_path / "src.txt").write_text("a\n")
    assert Copy().execute(_conf(tmp_path)).startswith("copied")
    real = base.atomic_output

    def full_disk(path):
        if str(path).endswith(".config.toml"):
            raise OSError(28, "No space left on device", str(path))
        return real(path)

    monkeypatch.setattr(base, "atomic_output", full_disk)
    with pytest.raises(OSError, match="No space left"):
        Copy().execute(_conf(tmp_path, upper=True), overwrite=True)
    monkeypatch.setattr(base, "atomic_output", real)
    assert (tmp_path / "out.txt").read_text() == "A\n"  # the new output, beside the old config
    with pytest.raises(StageError, match=r"changed: the output itself \(out.txt is not the file out.txt.config.toml"):
        Copy().execute(_conf(tmp_path))
    assert Copy().execute(_conf(tmp_path), overwrite=True).startswith("copied")
    assert "up to date" in Copy().execute(_conf(tmp_path))
    os.utime(tmp_path / "out.txt", (1e9, 1e9))  # as a copy would: other times, the same bytes
    assert "up to date" in Copy().execute(_conf(tmp_path))


@pytest.mark.parametrize("name", ["\U0001f6f0 iss", "caf" + "\udce9"])  # beyond U+FFFF; a byte not in UTF-8
def test_any_path_survives_the_config_beside_the_output(tmp_path, name):
    """Paths are written to the TOML config and compared with the next run's: an emoji (JSON would write a
    surrogate pair, which TOML refuses) and a file name that is not UTF-8 both read back as the same settings."""
    d = tmp_path / name
    d.mkdir()
    (d / "src.txt").write_text("a\n")
    stage = Copy()
    assert stage.execute(_conf(d)).startswith("copied")
    assert "up to date" in stage.execute(_conf(d)) and stage.runs == 1
    with pytest.raises(StageError, match="changed: upper"):
        stage.execute(_conf(d, upper=True))
