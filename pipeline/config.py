"""Configs on disk: TOML files read (``--config``) and written beside outputs, fingerprints of settings and files.

A stage's settings (:mod:`pipeline.settings`) are saved next to its output as ``<output>.config.toml``, a flat
table of TOML values (str, int, float, bool, lists of them); running the stage again with the same settings
skips the work, with different ones it refuses unless ``--overwrite`` is given (as glue-factory does).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from manifests.files import printable


class ConfigError(ValueError):
    """A config file or option that cannot be used; the message says which key and why."""


def load_toml(
    path: str | os.PathLike, section: str | None = None, sections: Iterable[str] | None = None
) -> dict[str, Any]:
    """Read a TOML config. Keys may sit at the top level or in a ``[section]`` table (which wins).

    ``sections``: the table names that may appear (the stages); another one (``[footprint]``) is an
    error rather than a table silently ignored."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found; pass an existing TOML file to --config") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    if sections is not None:
        sections = list(sections)
        unknown = [k for k, v in data.items() if isinstance(v, dict) and k not in sections]
        if unknown:
            raise ConfigError(
                f"{path}: unknown table [{unknown[0]}]; tables are named after the stages: "
                + ", ".join(f"[{s}]" for s in sections)
            )
    flat = {k: v for k, v in data.items() if not isinstance(v, dict)}
    if section and isinstance(data.get(section), dict):
        flat.update(data[section])
    return flat


def parse_settings(items: Iterable[str]) -> dict[str, Any]:
    """``["screen_inliers=0", "zooms=[10, 11]", "contrast=none"]`` -> a dict of TOML values; a value that is not
    TOML (bare text) is kept as a string. Raises ConfigError for an item without ``=``."""
    out: dict[str, Any] = {}
    for item in items:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ConfigError(f"--set {item!r}: write KEY=VALUE, e.g. --set screen_inliers=0")
        try:
            out[key] = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            out[key] = value.strip()
    return out


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int,)):
        return str(v)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return _toml_string(str(v))


def _toml_string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped, other characters as they are
    (JSON's escapes of characters beyond U+FFFF are surrogate pairs, which TOML refuses); see :func:`printable`."""
    out = []
    for ch in printable(text):
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def dumps_toml(conf: dict[str, Any], section: str | None = None) -> str:
    """Serialize a flat config as TOML (under ``[section]`` when given)."""
    lines = [f"[{section}]"] if section else []
    lines += [f"{k} = {_toml_value(v)}" for k, v in conf.items() if v is not None]
    return "\n".join(lines) + "\n"


def config_path(output: str | os.PathLike) -> Path:
    """Where a stage output's effective config is kept."""
    output = Path(output)
    return output.with_name(output.name + ".config.toml")


def fingerprint(conf: dict[str, Any]) -> str:
    """A short stable hash of a config (for part-file names)."""
    blob = json.dumps(conf, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    # as written to and read back from TOML: tuples are lists, file names not in UTF-8 are escaped (printable)
    norm = lambda v: list(v) if isinstance(v, tuple) else (printable(v) if isinstance(v, str) else v)  # noqa: E731
    return [k for k in keys if norm(old.get(k)) != norm(new.get(k))]


def output_identity(path: str | os.PathLike, edge_bytes: int = 1 << 20) -> dict[str, Any]:
    """Which file an output is: its size and a hash of its first and last ``edge_bytes`` (a Parquet file's footer,
    with every row group's offsets and statistics, is at its end). Kept in the config beside the output, it tells
    a config from an output written by another run (one stopped between writing the two). Copies match; times
    are not used, as a copy changes them."""
    h = hashlib.blake2b(digest_size=12)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        h.update(f.read(edge_bytes))
        if size > edge_bytes:
            f.seek(max(edge_bytes, size - edge_bytes))
            h.update(f.read())
    return {"size": size, "digest": h.hexdigest()}


def files_fingerprint(paths: list[str | os.PathLike]) -> str:
    """Identity of input files by name, size and modification time (cheap, no reading)."""
    h = hashlib.sha256()
    for p in sorted(str(p) for p in paths):
        try:
            st = os.stat(p)
            h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))  # any file name
        except OSError:
            h.update(f"{p}|missing\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:16]
