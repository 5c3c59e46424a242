# Two entry points on a fresh machine: `make demo` (the main job) and `make test` (the test suite).
# Both create a virtual environment in .venv with the CPU build of PyTorch, taken from PyTorch's index of CPU
# builds (TORCH_INDEX) or, where that index cannot be reached, from pip's default index. Set TORCH_SPEC to
# choose another version and TORCH_INDEX for another build, e.g. on a GPU machine:
#   make test TORCH_SPEC='torch>=2.2' TORCH_INDEX=https://download.pytorch.org/whl/cu126
# `make demo` installs what the demo needs (the package and its `plots` extra); `make test` adds the tools.
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
VENV := .venv
BIN := $(VENV)/bin
TORCH_STAMP := $(VENV)/.torch
RUNTIME := $(VENV)/.installed
DEV := $(VENV)/.installed-dev
# the library: what a researcher imports into their own training loop (mypy --strict; never imports kernel_reg.app)
LIBRARY := $(addprefix src/kernel_reg/,penalties attacks spectral lipschitz models.py deformations.py tensors.py \
	guard.py arguments.py distributed.py progress.py deprecation.py)

.PHONY: setup test demo lint docs FORCE

setup: $(RUNTIME)

# rewritten only when TORCH_SPEC or TORCH_INDEX changes, so that a change reinstalls torch
$(TORCH_STAMP): FORCE
	@mkdir -p $(VENV)
	@echo '$(TORCH_SPEC) $(TORCH_INDEX)' | cmp -s - $@ || echo '$(TORCH_SPEC) $(TORCH_INDEX)' > $@

$(RUNTIME): pyproject.toml $(TORCH_STAMP)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --timeout 30 --retries 1 --index-url $(TORCH_INDEX) '$(TORCH_SPEC)' \
		|| $(BIN)/python -m pip install -q '$(TORCH_SPEC)'
	$(BIN)/python -m pip install -q -e '.[plots]'
	touch $@

$(DEV): $(RUNTIME)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

lint: $(DEV)
	$(BIN)/ruff check src tests bench scripts examples
	$(BIN)/ruff format --check src tests bench scripts examples
	$(BIN)/mypy
	$(BIN)/mypy --strict $(LIBRARY)
	$(BIN)/lint-imports
	$(BIN)/vulture src/kernel_reg --min-confidence 80  # dead code: unused imports, variables, unreachable code

docs: $(DEV)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir build/site

test: lint docs
	$(BIN)/python -m pytest -q

demo: $(RUNTIME)
	$(BIN)/kernel-reg demo
