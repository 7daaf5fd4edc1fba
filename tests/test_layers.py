"""The layers run one way: manifests < pipeline (the library) < stages < the command line (stages/cli.py).

Walks every module's imports (relative ones resolved, those inside functions too) and imports the whole
library in a fresh interpreter, so that no path, static or dynamic, reaches up a layer."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINT = ROOT / "pipeline" / "__main__.py"
"""``python -m pipeline``: the entry point, not library code; the one file under pipeline/ that names the stages."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in it, as absolute names."""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names}
    return out


def modules(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if p != ENTRY_POINT)


def offenders(package: str, forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{p.relative_to(ROOT)} imports {m}"
        for p in modules(package)
        for m in sorted(imported(p))
        if m in forbidden or m.startswith(tuple(f + "." for f in forbidden))
    ]


@pytest.mark.parametrize("package", ["pipeline", "manifests"])
def test_the_library_never_imports_the_stages_or_the_command_line(package):
    assert modules(package)
    assert offenders(package, ("stages",)) == []


def test_manifests_sit_below_the_pipeline():
    """The manifests' schemas, I/O and file writing are the bottom: corner columns and the like are read from
    there by the geometry and the database, never the other way."""
    assert offenders("manifests", ("pipeline",)) == []


def test_imagery_does_not_reach_up_into_the_procedural_world():
    bad = [
        o
        for o in offenders("pipeline", ("pipeline.world", "pipeline.tile_sources"))
        if o.startswith("pipeline/imagery/")
    ]
    assert bad == []


def test_stages_never_import_the_command_line():
    assert [o for o in offenders("stages", ("stages.cli",)) if not o.startswith("stages/cli.py")] == []


def test_the_entry_point_is_the_only_file_under_pipeline_that_names_the_stages():
    assert imported(ENTRY_POINT) == {"stages.cli", "stages.cli.main"}


def test_importing_the_whole_library_loads_no_stage():
    """The dynamic check: every library module imported in a fresh interpreter, and no ``stages`` module
    among those loaded."""
    names = [module_name(p) for package in ("manifests", "pipeline") for p in modules(package)]
    code = (
        "import importlib, sys\n"
        f"for n in {names!r}:\n    importlib.import_module(n)\n"
        "print(sorted(m for m in sys.modules if m == 'stages' or m.startswith('stages.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
