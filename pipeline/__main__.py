"""``python -m pipeline``: the command line the package declares as its ``astroloc`` console script
(``stages.cli:main``, in pyproject.toml), found through the installed package's metadata.

The binding lives in the packaging, one layer above everything: no module under pipeline/ names the stages,
and the library never depends on them (tests/test_layers.py). The README's commands install the package first.
"""

import sys
from importlib.metadata import entry_points

scripts = list(entry_points(group="console_scripts", name="astroloc"))
if not scripts:
    sys.exit(
        "error: the astroloc-pipeline package is not installed, and its command line is declared in its metadata; "
        "run `make install` (or `pip install -e .`) first"
    )
raise SystemExit(scripts[0].load()())
