# Two commands for a fresh machine: `make dev` runs Switchboard, `make test` tests it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: install dev test lint format bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed

dev: install  ## migrate the embedded database, start a simulator if needed, serve everything
	$(BIN)/switchboard dev

test: install  ## the whole suite against a real PostgreSQL (found or started) and SQLite
	scripts/with-postgres.sh $(BIN)/pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: install  ## gateway overhead vs the upstream, in one run (see bench/README.md)
	scripts/with-postgres.sh $(BIN)/python -m bench.bench_gateway

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .switchboard
