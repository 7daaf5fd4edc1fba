"""Typed settings: one frozen dataclass per stage, and one for the footprint search.

Each setting is declared once, as a field made by :func:`setting`: its type (the annotation), its
default, its help text and its kind: part of the output's **identity** (a change makes an existing
output out of date) or **runtime** (how the work runs: workers, batch sizes, caches; ignored when
outputs are compared). From the dataclass come

- the command-line options, with their defaults in ``--help`` (:func:`add_arguments`),
- the keys a ``--config`` table and ``--set`` may hold, checked when they are read
  (:meth:`Settings.from_layers`): an unknown key is refused with the valid ones, a value of
  another kind with the key, the value and how to write it,
- the record saved beside an output (:meth:`Settings.identity`: a flat table, as before),
- the checks of ranges and combinations, in each class's :meth:`Settings.check`, run whenever
  an instance is made, so settings that exist are valid.

A field may hold a group (:func:`group`): another Settings class whose fields appear flat beside
the others (the footprint stage's settings hold the search's). Keys are unique across groups.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .config import ConfigError

IDENTITY = "identity"
RUNTIME = "runtime"


def setting(
    default: Any,
    help: str,
    *,
    runtime: bool = False,
    partition: bool = False,
    derived: bool = False,
    flag: str | None = None,
    parse: Callable[[Any], Any] | None = None,
    choices: Iterable[Any] | None = None,
    repeat: bool = False,
    metavar: str | None = None,
) -> Any:
    """A settings field.

    ``runtime``: does not change the output (ignored when an existing output is compared).
    ``partition``: a runtime setting that decides how the work is cut into part files (parts of an
    interrupted run are reused only under the same ones).
    ``derived``: filled in by the stage (a calibration's fingerprint), not by the user: no option, no
    config key, but part of the identity.
    ``flag``: the option's name (default ``--`` and the key with dashes). ``parse``: turns text (an
    option's value, ``"8-12"`` in a file) into the value; raises ValueError. ``choices``: the values
    allowed. ``repeat``: a tuple option given once per item (``--exclude A --exclude B``).
    """
    meta = {
        "help": help,
        "runtime": runtime or partition,
        "partition": partition,
        "derived": derived,
        "flag": flag,
        "parse": parse,
        "choices": tuple(choices) if choices is not None else None,
        "repeat": repeat,
        "metavar": metavar,
    }
    return field(default=default, metadata=meta)


def group(cls: type[Settings], exclude: Iterable[str] = ()) -> Any:
    """A field holding another Settings class, whose keys sit flat beside this class's own; ``exclude``: its keys
    that this class declares itself (with its own meaning) or sets (the footprint stage's calibration)."""
    return field(default_factory=cls, metadata={"group": cls, "exclude": tuple(exclude)})


@dataclass(frozen=True)
class Key:
    """One flat key of a Settings class: where it lives (``path``: group fields, then the field) and its field."""

    name: str
    path: tuple[str, ...]
    field: dataclasses.Field
    type: Any

    @property
    def meta(self) -> Mapping[str, Any]:
        return self.field.metadata

    @property
    def default(self) -> Any:
        return self.field.default


@dataclass(frozen=True)
class Settings:
    """Base of the settings classes. Subclasses are ``@dataclass(frozen=True)`` with :func:`setting` fields and
    may override :meth:`check`."""

    section: ClassVar[str] = "settings"
    """What the checks call these settings in messages (``footprint option``...)."""

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            if "group" in f.metadata:
                continue
            value = getattr(self, f.name)
            object.__setattr__(self, f.name, _coerce(f.name, value, hints[f.name], f))
        self.check()

    def check(self) -> None:
        """Ranges and combinations; raise :class:`ConfigError` through :meth:`need`."""

    def need(self, ok: bool, key: str, what: str) -> None:
        """Refuse this instance unless ``ok``: "<section> <key> = <value>: <what>"."""
        if not ok:
            raise ConfigError(f"{self.section} {key} = {_show(getattr(self, key))}: {what}")

    # -- keys ------------------------------------------------------------------------------------
    @classmethod
    def keys(cls) -> dict[str, Key]:
        """Every flat key, groups included, in declaration order (a class's own fields before its groups')."""
        out: dict[str, Key] = {}
        hints = _hints(cls)
        for f in dataclasses.fields(cls):
            if "group" in f.metadata:
                continue
            out[f.name] = Key(f.name, (f.name,), f, hints[f.name])
        for f in dataclasses.fields(cls):
            if "group" not in f.metadata:
                continue
            for name, k in f.metadata["group"].keys().items():
                if name in f.metadata["exclude"]:
                    continue
                if name in out:
                    raise TypeError(f"{cls.__name__}: key {name!r} of group {f.name} is declared twice; exclude it")
                out[name] = Key(name, (f.name, *k.path), k.field, k.type)
        return out

    @classmethod
    def user_keys(cls) -> dict[str, Key]:
        """The keys a user may set (options, --config, --set): all but the derived ones."""
        return {n: k for n, k in cls.keys().items() if not k.meta["derived"]}

    # -- reading -----------------------------------------------------------------------------------
    @classmethod
    def checked_values(cls, values: Mapping[str, Any], source: str) -> dict[str, Any]:
        """``values`` (flat keys; None: not given) checked against the keys and their kinds; an unknown key or a
        value of another kind is a ConfigError naming ``source``, the key and what to write."""
        keys = cls.user_keys()
        out = {}
        for name, value in values.items():
            if value is None:
                continue
            if name not in keys:
                close = difflib.get_close_matches(name, keys, n=1, cutoff=0.75)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"unknown {source} key {name!r}{hint}; valid keys: {', '.join(sorted(keys))}")
            out[name] = _coerce(name, value, keys[name].type, keys[name].field, source)
        return out

    @classmethod
    def from_layers(cls, *layers: tuple[Mapping[str, Any], str]) -> Settings:
        """Defaults < each (values, source) layer in turn; every layer checked as it is read, then the whole."""
        flat: dict[str, Any] = {}
        for values, source in layers:
            flat.update(cls.checked_values(values, source))
        return cls.from_flat(flat)

    @classmethod
    def from_flat(cls, flat: Mapping[str, Any]) -> Settings:
        """An instance from flat keys (unset ones keep their defaults). Derived keys are accepted here (the stage
        sets them); unknown ones are a ConfigError."""
        keys = cls.keys()
        unknown = sorted(set(flat) - set(keys))
        if unknown:
            raise ConfigError(f"unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(keys))}")
        nested: dict[str, Any] = {}
        for name, value in flat.items():
            d = nested
            for p in keys[name].path[:-1]:
                d = d.setdefault(p, {})
            d[keys[name].path[-1]] = value
        return cls._build(nested)

    @classmethod
    def _build(cls, nested: Mapping[str, Any]) -> Settings:
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name not in nested:
                continue
            v = nested[f.name]
            kwargs[f.name] = f.metadata["group"]._build(v) if "group" in f.metadata else v
        return cls(**kwargs)

    def replace(self, **flat: Any) -> Settings:
        """A copy with some flat keys changed (groups' keys too); checked like any instance."""
        return type(self).from_flat({**self.flat(), **flat})

    # -- writing -----------------------------------------------------------------------------------
    def flat(self) -> dict[str, Any]:
        """Every key's value, flat (groups' excluded keys left out)."""
        out = {}
        for name, k in self.keys().items():
            v: Any = self
            for p in k.path:
                v = getattr(v, p)
            out[name] = v
        return out

    def identity(self) -> dict[str, Any]:
        """What the output is made from: the non-runtime keys that have a value, lists for tuples (as TOML keeps
        them). Saved beside the output as the stage's table; compared on the next run."""
        keys = self.keys()
        return {
            n: (list(v) if isinstance(v, tuple) else v)
            for n, v in self.flat().items()
            if not keys[n].meta["runtime"] and v is not None
        }

    def partition(self) -> dict[str, Any]:
        keys = self.keys()
        return {n: v for n, v in self.flat().items() if keys[n].meta["partition"]}


def add_arguments(
    cls: type[Settings], parser: argparse.ArgumentParser | argparse._ArgumentGroup, only: Iterable[str] | None = None
) -> None:
    """One option per user key of ``cls`` (or those in ``only``), its help ending with its default and kind. Each
    option's ``dest`` is its key and its default None (not given), so the options layer over --config and --set."""
    keys = cls.user_keys()
    for name in only if only is not None else keys:
        k = keys[name]
        m = k.meta
        flag = m["flag"] or "--" + name.replace("_", "-")
        help_ = m["help"]
        if "default" not in help_:  # a default worked out from the workspace is told in the help itself
            default = k.default if isinstance(k.default, str) else _show(k.default)
            help_ += f" (default: {default if k.default not in (None, ()) else 'none'})"
        if m["runtime"]:
            help_ += " [runtime: does not change the output]"
        help_ = help_.replace("%", "%%")
        base, optional = _unwrap(k.type)
        kw: dict[str, Any] = {"dest": name, "default": None, "help": help_}
        if base is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif _is_tuple(base):
            item = typing.get_args(base)[0]
            if m["repeat"]:
                kw.update(action="append", type=item, metavar=m["metavar"] or name.upper())
            else:  # a list in one value: "8-12" (the field parses it), "0,90", "[0, 90]" or "a,b"
                kw.update(type=str if m["parse"] else _list_text(item), metavar=m["metavar"] or name.upper())
        else:
            kw["type"] = base if base in (int, float, str) and not m["parse"] else str
            if m["choices"]:
                kw["choices"] = [c for c in m["choices"] if c is not None]
            else:
                kw["metavar"] = m["metavar"] or name.upper()
        parser.add_argument(flag, **kw)


# -- kinds ---------------------------------------------------------------------------------------------

_KIND = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap(tp: Any) -> tuple[Any, bool]:
    """(the type without ``| None``, whether None is allowed)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else tp), len(args) < len(typing.get_args(tp))
    return tp, False


def _is_tuple(tp: Any) -> bool:
    return typing.get_origin(tp) is tuple


def _kind_name(tp: Any) -> str:
    base, optional = _unwrap(tp)
    if _is_tuple(base):
        item = typing.get_args(base)[0]
        return "a list of " + {bool: "booleans", int: "integers", float: "numbers", str: "strings"}.get(item, "values")
    return _KIND.get(base, str(base))


def _scalar(value: Any, tp: Any) -> tuple[bool, Any]:
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if tp is str:
        return isinstance(value, str), value
    return True, value


def _coerce(name: str, value: Any, tp: Any, f: dataclasses.Field, source: str | None = None) -> Any:
    """``value`` as the field's type (a list as a tuple, an integer as a float), parsed from text by the field's
    ``parse``; a ConfigError naming the key otherwise."""
    where = f"{source} key" if source else "key"
    base, optional = _unwrap(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where} {name!r} must be {_kind_name(tp)}, got nothing")
    parse = f.metadata.get("parse")
    if parse is not None and not (isinstance(value, tuple) and _is_tuple(base)):
        try:
            value = parse(value)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{where} {name!r} = {_show(value)}: {e}") from None
    if _is_tuple(base):
        item = typing.get_args(base)[0]
        if isinstance(value, (list, tuple)):
            checked = [_scalar(v, item) for v in value]
            if all(ok for ok, _ in checked):
                return tuple(v for _, v in checked)
        ok = False
    else:
        ok, value2 = _scalar(value, base)
        if ok:
            value = value2
    if not ok:
        default = f.default if f.default is not dataclasses.MISSING else None
        how = (
            f"write it as the default is written: {name} = {_show(default)}"
            if default not in (None, ())
            else "in TOML a string is quoted, a number or a boolean is not"
        )
        raise ConfigError(f"{where} {name!r} must be {_kind_name(tp)}, got {value!r}; {how}")
    choices = f.metadata.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(
            f"{where} {name!r} = {_show(value)}: choose from " + ", ".join(_show(c) for c in choices if c is not None)
        )
    return value


def _list_text(item: Any) -> Callable[[str], list]:
    """An option's text as a list: ``"0,90"``, ``"[0, 90]"`` or ``"a,b"``; items that are not of the kind stay
    text, for the kind check to name."""

    def parse(text: str) -> list:
        out = []
        for v in text.strip().strip("[]").split(","):
            v = v.strip().strip("'\"")
            if not v:
                continue
            try:
                out.append(item(v) if item in (int, float) else v)
            except ValueError:
                out.append(v)
        return out

    return parse


def _show(v: Any) -> str:
    """A value as TOML writes it."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_show(x) for x in v) + "]"
    if isinstance(v, str):
        return f'"{v}"'
    return repr(v)


__all__ = ["IDENTITY", "RUNTIME", "ConfigError", "Key", "Settings", "add_arguments", "group", "setting"]
