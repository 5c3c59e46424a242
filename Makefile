# Two entry points on a fresh machine: `make demo` (the main job) and `make test` (the test suite).
# Both create a virtual environment in .venv with the CPU build of PyTorch; set TORCH_SPEC to choose
# another build (e.g. TORCH_SPEC='torch>=2.2' on a GPU machine).
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test demo lint bench

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q '$(TORCH_SPEC)'
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

lint: setup
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q

demo: setup
	$(BIN)/kernel-reg demo
