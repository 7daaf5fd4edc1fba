"""``python -m pipeline``: the command line (:mod:`stages.cli`).

The entry point only: the one file under ``pipeline/`` that names the stages. The library itself never
imports them (tests/test_layers.py checks both).
"""

from stages.cli import main

raise SystemExit(main())
