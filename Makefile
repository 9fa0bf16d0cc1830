# Two commands (see README): `make demo` runs the main job, `make test` runs every check.
PYTHON ?= python3
VENV   ?= .venv
SHARED ?= $(abspath ../shared)
BIN    := $(VENV)/bin

.PHONY: demo test lint typecheck install install-dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	$(BIN)/edged demo --output demo-out

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check edged tests tools benchmarks
	$(BIN)/ruff format --check edged tests tools benchmarks

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

test: $(VENV)/.installed-dev
	$(BIN)/ruff check edged tests tools benchmarks
	$(BIN)/mypy
	EDGED_SHARED_DIR=$(SHARED) $(BIN)/pytest tests

clean:
	rm -rf $(VENV) demo-out .pytest_cache .mypy_cache .ruff_cache
