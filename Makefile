# Two commands for a fresh machine: `make dev` runs Switchboard, `make test` tests it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
# The suite runs in parallel processes (pytest-xdist): most tests wait on sockets and
# subprocesses. `make test TEST_WORKERS=0` runs it in one process.
TEST_WORKERS ?= auto
# `make dev PORT=8081`: where the quick start serves (default: SWITCHBOARD_PORT, else 8080).
PORT ?=

export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: install dev test lint format docs bench clean chart-tools vercel-ai

# Two stamps: `make dev` needs only the base package; tests, lint and CI need every extra.
# Installing every extra also satisfies the base, so `make dev` after `make test` installs
# nothing, while `make test` after `make dev` adds the extras.
EXTRAS := dev,flows,notebooks,bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(BIN)/.installed-base: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(BIN)/.installed-all: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[$(EXTRAS)]'
	touch $@ $(BIN)/.installed-base

install: $(BIN)/.installed-all  ## everything: the package and every extra (what CI uses)

dev: $(BIN)/.installed-base  ## migrate the embedded database, start a simulator if needed, serve everything
	$(BIN)/switchboard dev $(if $(PORT),--port $(PORT))

test: install chart-tools vercel-ai  ## the whole suite against a real PostgreSQL (found or started) and SQLite
	scripts/with-postgres.sh $(BIN)/pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

# The Helm chart's checkers (deploy/helm/tools.txt: Helm's SDK, Kubernetes' schemas, checkov,
# prefect-kubernetes), for tests/deploy: a virtual environment of their own, outside the
# repository (~/.cache/switchboard/chart-tools-<hash of the pins>), made once per machine
# and set of pins; after that this is a check that it exists.
chart-tools:
	@$(PYTHON) deploy/helm/tools.py install

# The Vercel AI SDK for tests/functions/openai/test_vercel_ai.py: Node (Debian's nodejs and
# npm, installed with apt when missing) and the npm packages pinned in
# tests/functions/openai/vercel_ai/package-lock.json, installed once per lockfile outside
# the repository (~/.cache/switchboard/vercel-ai-<hash>); after that a check that it exists.
vercel-ai:
	@$(PYTHON) tests/functions/openai/vercel_ai/tools.py install

# The docs are built strictly here, so CI (which runs `make lint`) fails on a broken link.
lint: install docs
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

docs: install  ## the reference in docs/ as a site in build/docs (a broken link or anchor fails)
	$(BIN)/mkdocs build

# `make bench BENCH_ARGS='--against /tmp/base --against-cli functions.core.cli'`: beside a
# checkout of an earlier commit, in the same run.
BENCH_ARGS ?=
bench: install  ## gateway overhead vs the upstream, in one run (see bench/README.md)
	scripts/with-postgres.sh $(BIN)/python -m bench.bench_gateway $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .switchboard
