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

.PHONY: demo test lint bench clean

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
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(DEV_STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/lowbit bench quantizers

clean:
	rm -rf $(VENV) build *.egg-info
