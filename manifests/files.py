"""Writing files so that a crash never leaves a half-written one: temporary file, then rename."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path


def _create_temporary(path: Path) -> Path:
    """Create an empty, uniquely named file beside ``path`` and return its path.

    It is created with mode 0o666 less the process umask, as ``open()`` would create
    ``path`` itself (``tempfile.mkstemp`` would give 0o600, leaving every manifest,
    picture and cached feature file unreadable to the other users of a shared cluster).
    """
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"could not create a temporary file beside {path}")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was.
    The file gets the permissions any newly created file would get (0o666 less the umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temporary(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def printable(text: str) -> str:
    """``text`` as valid Unicode: bytes of a file name that are not UTF-8 (which Python keeps as lone surrogates,
    ``os.fsdecode``) written as ``\\xNN``. For what is written as text (manifests, configs, messages); keep the
    original to open the file."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
