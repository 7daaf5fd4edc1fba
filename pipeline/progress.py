"""Logging set-up and progress bars (count, rate, time left) for long work."""

from __future__ import annotations

import logging
import sys

from tqdm.auto import tqdm

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def setup_logging(verbosity: int = 0) -> None:
    """-v: debug; default info; -q (negative): warnings only."""
    level = logging.DEBUG if verbosity > 0 else logging.INFO if verbosity == 0 else logging.WARNING
    logging.basicConfig(level=level, format=LOG_FORMAT, datefmt="%H:%M:%S", stream=sys.stderr, force=True)
    for noisy in ("rasterio", "distributed", "fiona", "pyogrio", "matplotlib", "faiss"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def quiet_distributed() -> None:
    """Dask's scheduler and nanny log every worker's start and stop at INFO; importing ``distributed`` sets
    its loggers back to INFO, so call this after that import: they then log only what -v asks for."""
    level = logging.getLogger().getEffectiveLevel()
    logging.getLogger("distributed").setLevel(level if level <= logging.DEBUG else max(level, logging.WARNING))


def progress(iterable=None, total: int | None = None, desc: str = "", unit: str = "it", disable: bool | None = None):
    """A tqdm progress bar on stderr: items done, rate and time left.

    Disabled automatically when logging is quieter than INFO. Redrawn every 0.5 s on a terminal, every
    30 s when stderr goes to a file or a pipe (a batch job's log keeps a line per half minute, not thousands).
    """
    if disable is None:
        disable = not logging.getLogger().isEnabledFor(logging.INFO)
    try:
        tty = sys.stderr.isatty()
    except (AttributeError, ValueError):
        tty = False
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        disable=disable,
        dynamic_ncols=True,
        smoothing=0.1,
        file=sys.stderr,
        mininterval=0.5 if tty else 30.0,
    )


def leave_out(bar, seconds: float) -> None:
    """Leave ``seconds`` of other work (a validation, a clustering) out of ``bar``'s clock, so that its rate and
    time left are those of its own items. tqdm's ``unpause`` does the same from the last redraw, which would also
    drop the items done since."""
    if not bar.disable:
        bar.start_t += seconds
        bar.last_print_t += seconds
