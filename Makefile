# The two front-door commands: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8443

.PHONY: run test lint typecheck unit deps system-deps bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(VENV)/.installed $@

run: $(VENV)/.installed
	$(BIN)/sslclm serve --host $(HOST) --port $(PORT)

# Debian packages used by the real-component tests; installed only when root and missing.
system-deps:
	@./scripts/system-deps.sh nginx-light libnginx-mod-mail pebble haproxy golang-go golang-github-smallstep-certificates-dev gcc libc6-dev chromium

deps: $(VENV)/.installed-dev system-deps

lint: deps
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: deps
	$(BIN)/mypy

test: deps lint typecheck
	$(BIN)/python -m pytest

bench: $(VENV)/.installed-dev
	$(BIN)/python -m bench.inventory

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
