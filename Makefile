# Every target installs what it needs first: a venv in .venv with the package in editable mode.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint typecheck unit e2e kind-e2e bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Envoy + EPP + 4 simulated vLLM servers on 127.0.0.1; prints how to send a request. Ctrl-C stops it.
run: install
	$(BIN)/epp run

## The whole suite: lint, types, unit and end-to-end tests.
test: install lint typecheck
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check epp tests bench e2e
	$(BIN)/ruff format --check epp tests bench e2e

typecheck: install
	$(BIN)/mypy

unit: install
	$(BIN)/pytest -q tests/unit

e2e: install
	$(BIN)/pytest -q tests/integration

## Deploy on a kind cluster through a real gateway (needs Docker, kind, helm; says so and exits 0 without).
kind-e2e:
	e2e/kind/run.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
