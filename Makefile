# Two commands: `make demo` (the main job) and `make test` (the whole suite).
# Both create .venv on first use. torch is pinned (override: make demo TORCH=2.5.1).
PYTHON ?= python3
TORCH ?= 2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.lowbit-torch-$(TORCH)
DEV_STAMP := $(VENV)/.lowbit-dev-$(TORCH)
DEMO_ARGS ?=
PYTEST_ARGS ?=

.PHONY: demo test lint bench gpu-check clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==$(TORCH)"
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(DEV_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

demo: $(STAMP)
	$(BIN)/lowbit demo $(DEMO_ARGS)

test: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	$(BIN)/mkdocs build --strict --quiet --site-dir .site

lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/lowbit bench quantizers

# GPU checks (docs/gpu.md): tests/gpu with its CUDA half required (LOWBIT_REQUIRE_CUDA=1 turns
# the no-CUDA skip into a failure), then a short GPU benchmark. Needs a CUDA build of torch in
# .venv (the pinned CPU wheel has none).
gpu-check: $(DEV_STAMP)
	LOWBIT_REQUIRE_CUDA=1 $(BIN)/python -m pytest tests/gpu -rs -p no:cacheprovider $(PYTEST_ARGS)
	$(BIN)/python benchmarks/bench_gpu.py

clean:
	rm -rf $(VENV) build *.egg-info
