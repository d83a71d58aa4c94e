# Two entry points (see README): `make demo` runs the pipeline on the bundled corpus,
# `make test` runs the test suite. Both create .venv and install ctxvec into it first.
#
# Two installs into the one .venv, each with its stamp: `make demo` installs what the pipeline
# needs (ctxvec and the CPU build of FAISS, `.[cpu]`), `make test` everything the tests import
# (`.[dev]`, which holds `cpu` and the other extras it tests). The dev install leaves both stamps;
# pip keeps what is already there, so `make test` after `make demo` adds only the test tools.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO_STAMP := $(VENV)/.ctxvec-demo
DEV_STAMP  := $(VENV)/.ctxvec-dev

.PHONY: setup setup-demo demo test test-all lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(DEMO_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[cpu]"
	touch $@

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@ $(DEMO_STAMP)

setup-demo: $(DEMO_STAMP)

setup: $(DEV_STAMP)

demo: setup-demo
	$(BIN)/ctxvec run --config configs/demo.yaml

test: setup
	$(BIN)/python -m pytest -q

test-all: setup
	$(BIN)/python -m pytest -q -m ""

lint: setup
	$(BIN)/ruff check src flows tests bench

clean:
	rm -rf $(VENV) .ctxvec .pytest_cache
