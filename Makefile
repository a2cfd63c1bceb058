# Two commands for a fresh machine with Python 3.11+: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test lint docs bench

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,example]'
	touch $@

## Serve the example app on http://127.0.0.1:8000 (embedded nats-server unless NATS_URL is set).
run: $(VENV)/.installed
	$(BIN)/python -m example_app

## Lint, type-check (mypy strict), build the documentation site (strict) and run every test: unit, contract,
## integration, end to end.
test: lint docs
	$(BIN)/python -m pytest

## Build the documentation site into site/ (`$(BIN)/mkdocs serve` to read it while writing); --strict fails
## on a broken link or an API reference that no longer resolves.
docs: $(VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

## Benchmark against raw nats-py (see bench/README.md).
bench: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[test,example,bench]'
	@command -v wrk >/dev/null || apt-get install -y wrk || (apt-get update && apt-get install -y wrk) \
		|| echo "warning: could not install wrk: the HTTP scenario falls back to bench/loadgen.py" >&2
	$(BIN)/python bench/bench.py --rounds 5

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
