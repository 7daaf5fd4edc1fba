"""What every stage shares: config merging, skipping finished work, refusing changed configs.

A stage is a thin object: a name, a ``default_conf``, its command-line options (each one a
config key), the path of its main output, and ``run(conf)`` that calls library code and
returns a one-screen summary.
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import shutil
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

from pipeline.config import (
    ConfigError,
    changed_keys,
    config_path,
    dumps_toml,
    files_fingerprint,
    fingerprint,
    load_toml,
    merge,
    output_identity,
    parse_settings,
)
from pipeline.files import atomic_output

log = logging.getLogger(__name__)


class StageError(RuntimeError):
    """A stage cannot run as asked; the message says why and what to do."""


class Stage:
    """Base class of the stages registered in :mod:`stages`."""

    name: str = ""
    help: str = ""
    default_conf: dict[str, Any] = {}
    runtime_keys: tuple[str, ...] = ()
    """Config keys that do not change the output (workers, scheduler...): ignored when comparing."""
    option_types: dict[str, type] = {}
    """The kind of each key whose default is None (``limit``: int), so a config file's ``limit = "1"`` is
    refused with the key's name rather than failing deep in the stage."""
    partition_keys: tuple[str, ...] = ()
    """Runtime keys that decide how the work is cut into part files (batch size, chunk): parts of an
    interrupted run are reused only under the same ones."""
    _running: tuple[Path, dict[str, Any]] | None = None
    """While :meth:`execute` runs the stage: (its output, the settings record), for :meth:`before_replace`."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add the stage's options; each option's ``dest`` is a config key and its default None."""

    def resolve(self, conf: dict[str, Any], workdir: Path) -> dict[str, Any]:
        """Fill workspace-relative defaults (paths) into ``conf``."""
        return conf

    def output(self, conf: dict[str, Any]) -> Path:
        raise NotImplementedError

    def input_files(self, conf: dict[str, Any]) -> list[Path]:
        """Files whose change must invalidate the output (names, sizes and times are compared)."""
        return []

    def prepare(self, conf: dict[str, Any]) -> None:
        """Make default inputs that are missing (the sample workspace), before they are fingerprinted."""

    def check(self, conf: dict[str, Any]) -> None:
        """Refuse inputs that cannot work (a missing file, a tile source that does not open), before the
        output's settings are compared: a typo is reported as a typo, not as changed settings."""

    def run(self, conf: dict[str, Any]) -> str:
        raise NotImplementedError

    def up_to_date(self, conf: dict[str, Any]) -> str:
        """What to add to the "up to date" line about the existing output (errors in it...); may refuse an
        output that cannot be read."""
        return ""

    # ---- the shared machinery -------------------------------------------------------------

    def parts_root(self, conf: dict[str, Any]) -> Path:
        """``<output>.parts/``: finished parts of interrupted runs, removed once the output is written."""
        out = self.output(conf)
        return out.with_name(out.name + ".parts")

    def parts_dir(self, conf: dict[str, Any]) -> Path:
        """Where an interrupted run keeps its finished parts, to resume without redoing them.

        One folder per config, input files and partition (``partition_keys``): a part is only ever
        reused for exactly the work it holds, so a resumed run neither loses nor duplicates rows
        when the batch size or the inputs changed in between."""
        key = {**self._record(conf), "partition": {k: conf[k] for k in self.partition_keys}}
        return self.parts_root(conf) / fingerprint(key)

    def config_from_args(self, args: argparse.Namespace) -> dict[str, Any]:
        if getattr(args, "config", None):
            from stages import STAGES

            file_conf = load_toml(args.config, self.name, sections=STAGES)
        else:
            file_conf = {}
        cli = {k: getattr(args, k) for k in self.default_conf if getattr(args, k, None) is not None}
        conf = merge(self.default_conf, file_conf, source=f"config file {args.config}", types=self.option_types)
        sets = {k: v for k, v in parse_settings(getattr(args, "set_values", None) or []).items() if v is not None}
        merge(self.default_conf, sets, source="--set", types=self.option_types)  # checked against the defaults' kinds
        conf.update(sets)
        merge(self.default_conf, cli, source="option", types=self.option_types)  # options against the defaults' kinds
        conf.update(cli)  # (a file's zooms = "8-12" and --zooms 12 are both right; the option wins)
        return self.resolve(conf, Path(args.workdir))

    def _record(self, conf: dict[str, Any]) -> dict[str, Any]:
        comparable = {k: v for k, v in conf.items() if k not in self.runtime_keys and v is not None}
        return {self.name: comparable, "inputs": {"fingerprint": files_fingerprint(self.input_files(conf))}}

    def changed_settings(self, conf: dict[str, Any], record: dict[str, Any], inputs: bool = True) -> list[str]:
        """What differs between ``record`` (``_record(conf)``) and the config saved beside the existing
        output: the changed keys, and "input files" when ``inputs`` and their fingerprint changed."""
        cfg = config_path(self.output(conf))
        try:
            with open(cfg, "rb") as f:
                old = tomllib.load(f)
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise StageError(f"{cfg} is not valid TOML ({e}); it records the settings of {self.output(conf)}, so "
                             "they cannot be compared: pass --overwrite to rebuild the output, or --out elsewhere") from None
        # keys that are runtime now may have been recorded by an older version
        old_conf = {k: v for k, v in old.get(self.name, {}).items() if k not in self.runtime_keys}
        diff = changed_keys(old_conf, record[self.name])
        if inputs and old.get("inputs") != record["inputs"]:
            diff.append("input files")
        out = self.output(conf)
        if "output" in old and out.is_file() and old["output"] != output_identity(out):
            diff.append(f"the output itself ({out.name} is not the file {cfg.name} was written for: changed or "
                        "replaced since, or a run stopped between writing the two)")
        return diff

    def execute(self, conf: dict[str, Any], overwrite: bool = False) -> str:
        """Run unless the output is up to date; refuse a changed config without ``overwrite``.

        The config is saved beside the output only once the output is written, with the output's identity
        (:func:`pipeline.config.output_identity`): a run that fails (with or without ``overwrite``) leaves the
        previous output and its config as they were. A stage whose writer calls :meth:`before_replace` has the
        new config saved as ``<config>.pending`` just before its output is replaced: a run stopped between the
        two leaves it to be taken by the next (:meth:`take_pending_config`). Any other output its config does
        not describe is refused like changed settings."""
        out = self.output(conf)
        cfg = config_path(out)
        check_output_path(out)
        if self.take_pending_config(out):
            log.info("%s: kept the config a run saved for %s before it stopped", self.name, out)
        self.prepare(conf)
        self.check(conf)
        if any(out.resolve() == f.resolve() for f in self.input_files(conf)):
            raise StageError(f"--out {out} is one of this stage's inputs; writing there would destroy it: "
                             "pass --out with another path")
        record = self._record(conf)
        if out.exists() and not overwrite:
            if not cfg.exists():
                raise StageError(f"{out} exists but has no {cfg.name} beside it, so it may come from other "
                                 "settings; pass --overwrite to rebuild it, or --out elsewhere")
            diff = self.changed_settings(conf, record)
            if not diff:
                return f"{self.name}: {out} is up to date with this config and these inputs (nothing to do; " \
                       f"pass --overwrite to redo it){self.up_to_date(conf)}"
            raise StageError(f"{out} was made with different settings (changed: {', '.join(diff)}); pass "
                             "--overwrite to replace it, or --out to write elsewhere")
        parts = self.parts_root(conf)  # with --overwrite too: parts for this very work stay valid
        start = time.perf_counter()
        self._running = (out, record)
        try:
            summary = self.run(conf)  # replaces ``out`` atomically
        finally:
            self._running = None
        if not self.take_pending_config(out):
            with atomic_output(cfg) as tmp:  # a stop before this leaves the new output beside the old config: the
                # output's identity in the config tells them apart (changed_settings)
                tmp.write_text(_config_text(record, out), encoding="utf-8")
        if parts.exists() and out.exists():
            shutil.rmtree(parts, ignore_errors=True)
        return summary + f"\n  config: {cfg}\n  time: {time.perf_counter() - start:.1f} s"

    def before_replace(self, tmp: Path) -> None:
        """Give to the writer of the stage's output (``ManifestWriter(out, kind, before_replace=self.before_replace)``):
        ``tmp`` is the finished output about to replace ``out``. Saves the config that describes it, with its
        identity, as ``<config>.pending`` beside it."""
        if self._running is None:  # run() called on its own, not by execute()
            return
        out, record = self._running
        with atomic_output(_pending_path(config_path(out))) as t:
            t.write_text(_config_text(record, tmp), encoding="utf-8")

    def take_pending_config(self, out: Path) -> bool:
        """Make ``<config>.pending`` the config of ``out`` if it describes the output there now (a run replaced
        the output, then stopped or finished); drop it if not (a run stopped before replacing the output).
        Returns whether it was taken."""
        cfg = config_path(out)
        pending = _pending_path(cfg)
        if not pending.is_file():
            return False
        try:
            with open(pending, "rb") as f:
                saved = tomllib.load(f)
            taken = out.is_file() and saved.get("output") == output_identity(out)
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
            taken = False
        if taken:
            os.replace(pending, cfg)
        else:
            pending.unlink(missing_ok=True)
        return taken


def _pending_path(cfg: Path) -> Path:
    return cfg.with_name(cfg.name + ".pending")


def _config_text(record: dict[str, Any], output: Path) -> str:
    """The config file's text: the settings and input fingerprint, and the identity of ``output`` (a file)."""
    saved = {**record, "output": output_identity(output)} if output.is_file() else record
    return "".join(dumps_toml(v, k) + "\n" for k, v in saved.items())


def source_files(path: str | Path, image_folder: bool = False) -> list[Path]:
    """The files whose names, sizes and times identify an input given as a path: the file itself,
    a folder's files (rasters beside each other; for ``image_folder``, its images; an XYZ tile
    folder's zoom folders have none), or a glob's matches."""
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        files = (f for f in p.iterdir() if f.is_file())
        if image_folder:
            files = (f for f in files if f.suffix.lower() in (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp"))
        return sorted(files)
    return sorted(Path(f) for f in glob.glob(str(path)))


def check_output_path(out: Path) -> None:
    """Fail in a second, not after hours of work, when ``out`` cannot be written: a folder in its
    place, a file where its folder should be, or a location that refuses new files."""
    if out.is_dir():
        raise StageError(f"the output {out} is a folder; pass --out with a file path, such as "
                         f"{out / (out.name + '.parquet')}")
    blocker = next((p for p in out.parents if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise StageError(f"cannot write {out}: {blocker} is a file, not a folder; pass --out with another path")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.name}.", suffix=".probe"):
            pass
    except OSError as e:
        raise StageError(f"cannot write {out}: {out.parent} does not take new files ({e.strerror or e}); "
                         "pass --out with a path in a writable folder") from None


def require(cond: bool, message: str) -> None:
    if not cond:
        raise StageError(message)


__all__ = ["ConfigError", "Stage", "StageError", "require"]
