"""What every stage shares: settings, skipping finished work, refusing changed settings, resuming.

A stage is a thin object with no state of its own: a name, its settings class (a frozen dataclass,
:mod:`pipeline.settings`), the path of its main output, and ``run(run)`` that calls library code and
returns a one-screen summary. Everything that lives for one execution (the resolved settings, the
workspace, ``--overwrite``, the record saved beside the output, values worked out once) is in the
:class:`StageRun` that :meth:`Stage.execute` makes and hands to each step, so a stage may run twice in
one process, or from two threads, with nothing left over.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from manifests.files import atomic_output
from pipeline.config import (
    ConfigError,
    changed_keys,
    config_path,
    dumps_toml,
    files_fingerprint,
    fingerprint,
    output_identity,
)
from pipeline.settings import Settings

log = logging.getLogger(__name__)


class StageError(RuntimeError):
    """A stage cannot run as asked; the message says why and what to do."""


@dataclass
class StageRun:
    """One execution of a stage, made by :meth:`Stage.execute` and handed to each of its steps.

    ``settings``: resolved (absolute paths, defaults from the workspace); ``record``: what is saved beside the
    output (the settings' identity and the input files' fingerprint), set once the inputs exist; ``memo``: values
    worked out once per run (a parsed queries file)."""

    stage: Stage
    settings: Any
    workdir: Path
    overwrite: bool = False
    record: dict[str, Any] | None = None
    memo: dict[str, Any] = field(default_factory=dict)

    @property
    def output(self) -> Path:
        return self.stage.output(self.settings)

    def parts_dir(self) -> Path:
        return self.stage.parts_dir(self.settings)

    def before_replace(self, tmp: Path) -> None:
        """Give to the writer of the stage's output (``ManifestWriter(out, kind, before_replace=run.before_replace)``):
        ``tmp`` is the finished output about to replace ``out``. Saves the config that describes it, with its
        identity, as ``<config>.pending`` beside it."""
        if self.record is None:
            return
        with atomic_output(_pending_path(config_path(self.output))) as t:
            t.write_text(_config_text(self.record, tmp), encoding="utf-8")


URL_SETTINGS_KEPT = ("scheduler",)
"""Settings whose URLs are addresses, not files."""


def local_paths(settings: Any) -> Any:
    """``settings`` with ``file://`` URLs turned into paths; any other URL (``s3://``, ``gs://``, ``memory://``...)
    refused, naming the option: the stages write each output to a temporary file renamed into place and resume
    from the parts folder beside it, which object stores cannot do (docs/cluster.md, shared storage)."""
    import dataclasses
    import re
    from urllib.parse import unquote, urlsplit

    def one(key: str, value: Any) -> Any:
        if not isinstance(value, str) or not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", value):
            return value
        url = urlsplit(value)
        if url.scheme == "file" and url.netloc in ("", "localhost"):
            return unquote(url.path) + (f"#{url.fragment}" if url.fragment else "")
        raise StageError(
            f"--{key.replace('_', '-')} {value}: the stages read and write files, not {url.scheme}:// URLs (they "
            "write by renaming a temporary file and resume from parts folders, which object stores lack); mount "
            "the bucket as a file system every worker sees (s3fs, gcsfuse, mountpoint-s3) and pass its path"
        )

    changes = {}
    for f in dataclasses.fields(settings):
        if f.name in URL_SETTINGS_KEPT:
            continue
        v = getattr(settings, f.name)
        new = tuple(one(f.name, x) for x in v) if isinstance(v, tuple) else one(f.name, v)
        if new != v:
            changes[f.name] = new
    return dataclasses.replace(settings, **changes) if changes else settings


class Stage:
    """Base class of the stages registered in :mod:`stages`."""

    name: ClassVar[str] = ""
    help: ClassVar[str] = ""
    settings_class: ClassVar[type[Settings]] = Settings
    """The stage's settings: options, ``--config`` keys and ``--set`` come from its fields."""
    options: ClassVar[tuple[str, ...] | None] = None
    """The settings shown as the stage's own options, first in ``--help`` (None: all of them)."""

    def resolve(self, settings: Any, workdir: Path) -> Any:
        """Fill workspace-relative defaults (paths) into ``settings``; must give the same for resolved settings."""
        return settings

    def output(self, settings: Any) -> Path:
        raise NotImplementedError

    def input_files(self, settings: Any) -> list[Path]:
        """Files whose change must invalidate the output (names, sizes and times are compared)."""
        return []

    def prepare(self, run: StageRun) -> None:
        """Make default inputs that are missing (the sample workspace), before they are fingerprinted."""

    def check(self, run: StageRun) -> None:
        """Refuse inputs that cannot work (a missing file, a tile source that does not open), before the
        output's settings are compared: a typo is reported as a typo, not as changed settings."""

    def run(self, run: StageRun) -> str:
        raise NotImplementedError

    def primary(self) -> bool:
        """Whether this process writes the output and its config: always, but for one of several processes that
        run a stage together (``torchrun``: only the first)."""
        return True

    def up_to_date(self, run: StageRun) -> str:
        """What to add to the "up to date" line about the existing output (errors in it...); may refuse an
        output that cannot be read."""
        return ""

    # ---- the shared machinery -------------------------------------------------------------

    def parts_root(self, settings: Any) -> Path:
        """``<output>.parts/``: finished parts of interrupted runs, removed once the output is written."""
        out = self.output(settings)
        return out.with_name(out.name + ".parts")

    def parts_dir(self, settings: Any) -> Path:
        """Where an interrupted run keeps its finished parts, to resume without redoing them.

        One folder per identity, input files and partition (the settings marked ``partition``): a part is only
        ever reused for exactly the work it holds, so a resumed run neither loses nor duplicates rows when the
        batch size or the inputs changed in between."""
        key = {**self.record(settings), "partition": settings.partition()}
        return self.parts_root(settings) / fingerprint(key)

    def record(self, settings: Any) -> dict[str, Any]:
        """What is saved beside the output: ``{stage name: the settings' identity, "inputs": fingerprint}``."""
        return {
            self.name: settings.identity(),
            "inputs": {"fingerprint": files_fingerprint(self.input_files(settings))},
        }

    def changed_settings(self, run: StageRun, inputs: bool = True) -> list[str]:
        """What differs between ``run.record`` and the config saved beside the existing output: the changed keys,
        and "input files" when ``inputs`` and their fingerprint changed.

        A saved config of an older version is read the same way: its table holds the identity keys by the same
        names; a key that is runtime now is ignored in it."""
        out = run.output
        cfg = config_path(out)
        try:
            with open(cfg, "rb") as f:
                old = tomllib.load(f)
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise StageError(
                f"{cfg} is not valid TOML ({e}); it records the settings of {out}, so "
                "they cannot be compared: pass --overwrite to rebuild the output, or --out elsewhere"
            ) from None
        keys = self.settings_class.keys()
        old_conf = {k: v for k, v in old.get(self.name, {}).items() if not (k in keys and keys[k].meta["runtime"])}
        diff = changed_keys(old_conf, run.record[self.name])
        if inputs and old.get("inputs") != run.record["inputs"]:
            diff.append("input files")
        if "output" in old and out.is_file() and old["output"] != output_identity(out):
            diff.append(
                f"the output itself ({out.name} is not the file {cfg.name} was written for: changed or "
                "replaced since, or a run stopped between writing the two)"
            )
        return diff

    def execute(self, settings: Any, workdir: str | os.PathLike = "workspace", overwrite: bool = False) -> str:
        """Run unless the output is up to date; refuse a changed config without ``overwrite``.

        ``settings``: an instance of :attr:`settings_class`, resolved here against ``workdir``. The config is
        saved beside the output only once the output is written, with the output's identity
        (:func:`pipeline.config.output_identity`): a run that fails (with or without ``overwrite``) leaves the
        previous output and its config as they were. A stage whose writer calls :meth:`StageRun.before_replace`
        has the new config saved as ``<config>.pending`` just before its output is replaced: a run stopped
        between the two leaves it to be taken by the next (:meth:`take_pending_config`). Any other output its
        config does not describe is refused like changed settings."""
        if not isinstance(settings, self.settings_class):
            raise TypeError(
                f"{self.name}: settings must be {self.settings_class.__name__}, got {type(settings).__name__}"
            )
        run = StageRun(self, self.resolve(local_paths(settings), Path(workdir)), Path(workdir), overwrite)
        return self._execute(run)

    def _execute(self, run: StageRun) -> str:
        out = run.output
        cfg = config_path(out)
        check_output_path(out)
        if self.take_pending_config(out):
            log.info("%s: kept the config a run saved for %s before it stopped", self.name, out)
        self.prepare(run)
        self.check(run)
        if any(out.resolve() == f.resolve() for f in self.input_files(run.settings)):
            raise StageError(
                f"--out {out} is one of this stage's inputs; writing there would destroy it: "
                "pass --out with another path"
            )
        record = self.record(run.settings)
        if out.exists() and not run.overwrite:
            if not cfg.exists():
                raise StageError(
                    f"{out} exists but has no {cfg.name} beside it, so it may come from other "
                    "settings; pass --overwrite to rebuild it, or --out elsewhere"
                )
            run.record = record
            diff = self.changed_settings(run)
            if not diff:
                return (
                    f"{self.name}: {out} is up to date with this config and these inputs (nothing to do; "
                    f"pass --overwrite to redo it){self.up_to_date(run)}"
                )
            raise StageError(
                f"{out} was made with different settings (changed: {', '.join(diff)}); pass "
                "--overwrite to replace it, or --out to write elsewhere"
            )
        parts = self.parts_root(run.settings)  # with --overwrite too: parts for this very work stay valid
        start = time.perf_counter()
        run.record = record
        summary = self.run(run)  # replaces ``out`` atomically
        if not self.primary():
            return summary
        if not self.take_pending_config(out):
            with atomic_output(cfg) as tmp:  # a stop before this leaves the new output beside the old config: the
                # output's identity in the config tells them apart (changed_settings)
                tmp.write_text(_config_text(record, out), encoding="utf-8")
        if parts.exists() and out.exists():
            shutil.rmtree(parts, ignore_errors=True)
        return summary + f"\n  config: {cfg}\n  time: {time.perf_counter() - start:.1f} s"

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
        raise StageError(
            f"the output {out} is a folder; pass --out with a file path, such as {out / (out.name + '.parquet')}"
        )
    blocker = next((p for p in out.parents if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise StageError(f"cannot write {out}: {blocker} is a file, not a folder; pass --out with another path")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.name}.", suffix=".probe"):
            pass
    except OSError as e:
        raise StageError(
            f"cannot write {out}: {out.parent} does not take new files ({e.strerror or e}); "
            "pass --out with a path in a writable folder"
        ) from None


__all__ = ["ConfigError", "Stage", "StageError", "StageRun"]
