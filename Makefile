# Two commands (see README): `make demo` runs the main job, `make test` runs every check.
# `make install-service` puts the systemd unit and config in place on a board (see README).
PYTHON ?= python3
VENV   ?= .venv
SHARED ?= $(abspath ../shared)
BIN    := $(VENV)/bin

# install-service: the edged the unit starts, and where the files go (DESTDIR = staging root).
PREFIX     ?= /opt/edged
EDGED_BIN  ?= $(PREFIX)/venv/bin/edged
DESTDIR    ?=
UNITDIR    ?= /etc/systemd/system
SYSCONFDIR ?= /etc

.PHONY: demo test test-no-shared test-arm64 lint typecheck install install-dev install-service clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e .
	touch $@

# x86: the convert extra too (torch CPU; tests/test_convert.py skips without it, as on arm64).
comma := ,
DEV_EXTRAS := $(if $(filter x86_64,$(shell uname -m)),dev$(comma)convert,dev)

$(VENV)/.installed-dev: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[$(DEV_EXTRAS)]'
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

# The suite as a fresh clone runs it: no ../shared (tests needing real models skip, one line
# each) and no pytest cache. .ci/run runs it after `make test` so that case cannot regress.
test-no-shared: $(VENV)/.installed-dev
	EDGED_SHARED_DIR=/nonexistent/shared $(BIN)/pytest -p no:cacheprovider tests

# arm64 (aarch64) under qemu-user: a cached Debian arm64 root, the main path on Cortex-A72 and
# -A76 with the equality figures against this machine, the tests marked arm64 (docs/arm64.md).
# Needs root (or sudo) for debootstrap/chroot; the root is cached in /var/cache/edged-arm64.
test-arm64: $(VENV)/.installed-dev
	EDGED_SHARED_DIR=$(SHARED) VENV=$(VENV) .ci/arm64/job.sh

# No venv prerequisite: on a board edged lives in its own venv (EDGED_BIN), not in .venv.
install-service:
	DESTDIR='$(DESTDIR)' EDGED_BIN='$(EDGED_BIN)' UNITDIR='$(UNITDIR)' SYSCONFDIR='$(SYSCONFDIR)' \
		tools/install-service.sh

clean:
	rm -rf $(VENV) demo-out .pytest_cache .mypy_cache .ruff_cache
