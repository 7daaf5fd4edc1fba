"""The command line: ``python -m pipeline run <stage> [options]`` and ``inspect <manifest>``.

A thin shell: parse, configure logging, hand over to a stage or to ``manifests.inspect``,
and turn expected errors into one clear message on stderr with a non-zero exit status.
"""

from __future__ import annotations

import argparse
import logging
import sys

from pipeline import __version__
from pipeline.config import ConfigError, load_toml, parse_settings
from pipeline.settings import add_arguments

from . import STAGES, get_stage
from .base import Stage, StageError

log = logging.getLogger("pipeline")

EXIT_USAGE = 2
EXIT_FAILED = 1


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default only when it has one (stage options default to None: the config's)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is argparse.SUPPRESS:
            return action.help or ""
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline",
        description="Localize astronaut photos of Earth: footprints, training pairs, retrieval models.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    parser.set_defaults(own_parser=parser)  # each command's parser replaces it: its usage goes with its errors

    run = sub.add_parser(
        "run", help="run a stage", description="Run one stage of the pipeline. Stages: " + ", ".join(STAGES) + "."
    )
    stages = run.add_subparsers(
        dest="stage",
        metavar="STAGE",
        required=True,
        title="stages",
        description="(python -m pipeline run STAGE --help for its options)",
    )
    for name, stage in STAGES.items():
        p = stages.add_parser(
            name,
            help=stage.help,
            description=stage.help[:1].upper() + stage.help[1:] + ".",
            formatter_class=_HelpFormatter,
        )
        common = p.add_argument_group("common options")
        common.add_argument("--workdir", default="workspace", help="workspace folder for default inputs and outputs")
        common.add_argument("--config", help=f"TOML file with this stage's settings (top level or a [{name}] table)")
        common.add_argument(
            "--set",
            action="append",
            default=None,
            metavar="KEY=VALUE",
            dest="set_values",
            help="one setting by its key (the option's name with underscores), as a --config file "
            "would hold it (a TOML value: 0, 2.5, true, [10, 11], or text); repeatable; wins "
            "over --config, loses to the options",
        )
        common.add_argument(
            "--overwrite",
            action="store_true",
            help="replace the output even if it is up to date or was made with other settings (the old one stays until the new one is written)",
        )
        common.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
        common.add_argument("-q", "--quiet", action="count", default=0, help="less logging, no progress bars")
        keys = stage.settings_class.user_keys()
        own = stage.options if stage.options is not None else tuple(keys)
        add_arguments(stage.settings_class, p.add_argument_group(f"{name} options"), own)
        rest = [k for k in keys if k not in own]
        if rest:
            add_arguments(
                stage.settings_class,
                p.add_argument_group(f"{name} settings (also --config keys and --set KEY=VALUE)"),
                rest,
            )
        p.set_defaults(own_parser=p)

    ins = sub.add_parser(
        "inspect",
        help="summarize a Parquet manifest",
        description="Print a manifest's kind, schema, row count and per-column summaries "
        "(for footprints: the status breakdown and an inlier histogram).",
    )
    ins.add_argument("path", help="a Parquet manifest (queries, database, footprints or pairs)")
    ins.add_argument("--geojson", metavar="OUT", help="also export the geometries to this GeoJSON file")
    ins.add_argument(
        "--overlay",
        metavar="DIR",
        help="footprints: write DIR/PHOTO_ID.png per localized photo, the "
        "photo beside the imagery under its footprint (needs --queries and --tiles)",
    )
    ins.add_argument("--queries", help="with --overlay: the queries the footprints came from")
    ins.add_argument("--tiles", help="with --overlay: the tile source they were found in")
    ins.add_argument("--photo", action="append", default=None, help="with --overlay: only this photo (repeatable)")
    ins.add_argument("-v", "--verbose", action="count", default=0)
    ins.add_argument("-q", "--quiet", action="count", default=0)
    ins.set_defaults(own_parser=ins)
    return parser


def unrecognized_message(parser: argparse.ArgumentParser, extra: list[str]) -> str:
    """The error for arguments ``parser`` (a command's own) does not know: a close option name, or the glob hint."""
    import difflib
    from pathlib import Path

    msg = f"unrecognized arguments: {' '.join(extra)}"
    if len(extra) > 1 and all(Path(x).exists() for x in extra):
        return msg + "; they look like the files of a glob the shell expanded: quote it, e.g. --tiles '/data/*.tif'"
    known = {o.lstrip("-"): o for a in parser._actions for o in a.option_strings if o.startswith("--")}
    close = [
        known[m]
        for x in extra
        if x.startswith("-")  # compared without the dashes every option shares
        for m in difflib.get_close_matches(x.split("=", 1)[0].lstrip("-"), known, n=1, cutoff=0.6)
    ]
    if close:
        return msg + f"; did you mean {' or '.join(dict.fromkeys(close))}? ({parser.prog} --help lists them all)"
    return msg + f"; {parser.prog} --help lists the options"


def _check_inspect_args(args) -> None:
    """Refuse ``inspect`` options that would be ignored or could not work, before printing anything."""
    from pathlib import Path

    from manifests.errors import ManifestError
    from manifests.io import detect_kind

    given = [f"--{k}" for k in ("queries", "tiles", "photo") if getattr(args, k)]
    if given and not args.overlay:
        raise ManifestError(
            args.path,
            f"{', '.join(given)} only work with --overlay DIR (they say where the photos "
            "and the imagery of the overlays are)",
        )
    if args.overlay and Path(args.path).is_file():
        try:
            kind = detect_kind(args.path)
        except Exception:  # not Parquet at all: inspect_manifest says so
            return
        if kind is not None and kind.name != "footprints":
            raise ManifestError(
                args.path,
                f"--overlay needs a footprints manifest (from `run footprints`); this is a {kind.name} manifest",
            )
    if args.overlay:
        if not (args.queries and args.tiles):
            raise ManifestError(args.path, "--overlay needs --queries (the photos) and --tiles (the imagery) as well")
        from pipeline.tile_sources import open_tile_source

        try:  # before the summary is printed: a wrong path is the one line the user sees
            open_tile_source(args.tiles)
        except (FileNotFoundError, ValueError, OSError) as e:
            raise StageError(f"--tiles: {e}") from None


def _overlays(args) -> None:
    """``inspect --overlay``: the by-eye check of a footprints manifest (:mod:`pipeline.footprint.overlay`)."""
    from manifests import read_manifest
    from pipeline.footprint.overlay import write_overlays
    from pipeline.tile_sources import open_tile_source

    fp = read_manifest(args.path, "footprints", geometry=False)
    written = write_overlays(fp, args.queries, open_tile_source(args.tiles), args.overlay, args.photo)
    print(f"overlays: {len(written)} PNG files in {args.overlay} (photo | imagery under its footprint | checkerboard)")


def os_error_message(e: OSError) -> str:
    """One line for an operating-system error: the file, what went wrong, and what to do."""
    import errno

    where = f"{e.filename}: " if e.filename else ""
    what = e.strerror or str(e)
    if e.filename2:
        what += f" (-> {e.filename2})"
    full = (
        "free some space, or write elsewhere (--out, --workdir); finished parts are kept, so the same command resumes"
    )
    hint = {
        errno.ENOSPC: full,
        errno.EDQUOT: full,
        errno.EACCES: "check the permissions, or choose another path",
        errno.EPERM: "check the permissions, or choose another path",
        errno.EROFS: "the file system is read-only: choose another path",
        errno.ENOENT: "check the path (a folder on the way may be missing)",
        errno.EISDIR: "a folder is where a file was expected: pass a file path",
        errno.ENOTDIR: "a file is where a folder was expected: check the path",
        errno.EEXIST: "it is in the way of a folder that had to be made: choose another path",
    }.get(e.errno, "run again with -v for the details")
    return f"{where}{what}; {hint}"


def settings_from_args(stage: Stage, args: argparse.Namespace):
    """The stage's settings: its defaults < ``--config`` (the top level, then its table) < ``--set`` < its options;
    each layer checked as it is read (an unknown key or a value of another kind is refused before any work)."""
    layers = []
    if getattr(args, "config", None):
        layers.append((load_toml(args.config, stage.name, sections=STAGES), f"config file {args.config}"))
    layers.append((parse_settings(getattr(args, "set_values", None) or []), "--set"))
    layers.append(({k: getattr(args, k, None) for k in stage.settings_class.user_keys()}, "option"))
    return stage.settings_class.from_layers(*layers)


def main(argv: list[str] | None = None) -> int:
    from manifests.errors import ManifestError
    from pipeline.geometry.mercator import LatitudeError
    from pipeline.progress import setup_logging

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        args.own_parser.error(unrecognized_message(args.own_parser, extra))
    setup_logging(args.verbose - args.quiet)
    try:
        if args.command == "inspect":
            from manifests.inspect import inspect_manifest

            _check_inspect_args(args)
            print(inspect_manifest(args.path, args.geojson))
            if args.overlay:
                _overlays(args)
            return 0
        stage = get_stage(args.stage)
        settings = settings_from_args(stage, args)
        print(stage.execute(settings, workdir=args.workdir, overwrite=args.overwrite))
        return 0
    except (ManifestError, ConfigError, StageError, LatitudeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:  # a file that cannot be read or written: the disk, not our code
        if args.verbose > 0:
            raise
        print(f"error: {os_error_message(e)}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted: finished parts are kept; run the same command again to resume", file=sys.stderr)
        return 130
