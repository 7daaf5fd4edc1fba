"""Errors for bad manifests and inputs: each names the file, the row and the column, and the fix."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Problem:
    """One problem in one place of an input file.

    ``row`` is the 0-based data row (None for whole-file problems such as a missing column);
    messages show it 1-based, and for CSV files also the line number (header = line 1).
    """

    message: str
    row: int | None = None
    column: str | None = None
    photo_id: str | None = None

    def where(self, path: Path | str | None = None) -> str:
        parts = []
        if path is not None:
            parts.append(str(path))
        if self.row is not None:
            row = f"row {self.row + 1}"
            if path is not None and str(path).lower().endswith(".csv"):
                row += f" (line {self.row + 2})"
            if self.photo_id:
                row += f" [photo_id {self.photo_id}]"
            parts.append(row)
        if self.column is not None:
            parts.append(f"column {self.column!r}")
        return ", ".join(parts)

    def format(self, path: Path | str | None = None) -> str:
        where = self.where(path)
        return f"{where}: {self.message}" if where else self.message


class ManifestError(ValueError):
    """An input or manifest file that cannot be used as it is.

    ``str(err)`` is one clear line per problem (at most ``MAX_SHOWN``), naming file, row and
    column, and saying what to do.
    """

    MAX_SHOWN = 10

    def __init__(self, path: Path | str | None, problems: list[Problem] | Problem | str):
        if isinstance(problems, str):
            problems = [Problem(problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.path = path
        self.problems = list(problems)
        lines = [p.format(path) for p in self.problems[: self.MAX_SHOWN]]
        if len(self.problems) > self.MAX_SHOWN:
            lines.append(f"... and {len(self.problems) - self.MAX_SHOWN} more problems of the same kind")
        super().__init__("\n".join(lines))
