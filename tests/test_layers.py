"""The layers run one way: manifests < pipeline (the library) < stages < the command line (stages/cli.py).

Walks every module's imports (relative ones resolved, those inside functions too), the entry point
``pipeline/__main__.py`` included, and imports the whole library in a fresh interpreter, so that no path,
static or dynamic, reaches up a layer."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


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
    return sorted((ROOT / package).rglob("*.py"))


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


def test_python_m_pipeline_reaches_the_command_line_through_the_package_metadata():
    """``pipeline/__main__.py`` names no stage: it runs the ``astroloc`` console script that pyproject.toml
    declares (stages.cli:main), and ``python -m pipeline`` is the command line."""
    assert not [m for m in imported(ROOT / "pipeline" / "__main__.py") if m.split(".")[0] == "stages"]
    assert 'astroloc = "stages.cli:main"' in (ROOT / "pyproject.toml").read_text()
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert done.returncode == 0 and "sample" in done.stdout and "describe" in done.stdout


def test_importing_the_whole_library_loads_no_stage():
    """The dynamic check: every library module imported in a fresh interpreter, and no ``stages`` module
    among those loaded."""
    names = [
        module_name(p) for package in ("manifests", "pipeline") for p in modules(package) if p.name != "__main__.py"
    ]  # importing the entry point runs the program
    code = (
        "import importlib, sys\n"
        f"for n in {names!r}:\n    importlib.import_module(n)\n"
        "print(sorted(m for m in sys.modules if m == 'stages' or m.startswith('stages.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
