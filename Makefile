# Forja: `make run` sets up and runs the main job, `make test` sets up and runs the tests.
# Setup is idempotent: it creates .venv once and reinstalls only when pyproject.toml changes.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
# CPU-only machines take the CPU build of torch (a plain `torch` requirement pulls a multi-GB CUDA build).
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
PYTEST_ARGS ?=
# The suite in TEST_WORKERS processes (pytest-xdist), each taking a whole test file at a time, so that
# a module's servers start once. In one process the suite kept 2 cores 54% busy on average (vmstat):
# many tests wait on servers and child processes. TEST_WORKERS=0 runs it in this process.
TEST_WORKERS ?= 2
XDIST := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

.PHONY: setup run test test-fast lint bench ui clean-venv

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@if ! $(BIN)/python -c "import torch" 2>/dev/null; then \
	  if command -v nvidia-smi >/dev/null 2>&1; then \
	    $(BIN)/python -m pip install "torch==$(TORCH_VERSION)"; \
	  else \
	    $(BIN)/python -m pip install --quiet --no-deps --no-index "torch==$(TORCH_VERSION)" 2>/dev/null \
	    || $(BIN)/python -m pip install "torch==$(TORCH_VERSION)" --index-url $(TORCH_CPU_INDEX); \
	  fi; \
	fi
	$(BIN)/python -m pip install --quiet -e ".[dev,hf,dask,stack,s3]"
	$(BIN)/python scripts/fetch_llama_converter $(VENV)/llama-convert  # for tests/test_hf.py
	$(BIN)/python -m forja.stores  # migrated empty Prefect and MLflow databases: new homes start warm
	touch $@

run: setup
	$(BIN)/forja run

test: setup
	$(BIN)/python -m pytest -m "not gpu" $(XDIST) $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -m "not gpu and not slow" $(XDIST) $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: setup
	$(BIN)/forja bench train

ui: setup
	$(BIN)/forja ui

clean-venv:
	rm -rf $(VENV)
