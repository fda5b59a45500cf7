# Two commands on a fresh machine: `make demo` and `make test`.
# Another Python: `make test PYTHON=python3.12 VENV=.venv-3.12`; all supported ones: `make test-pythons`.
# Development installs come from the committed lock (uv.lock, one file for every supported Python):
# a fresh clone installs what was tested. `make lock` refreshes it; `make test-latest` runs the suite
# against the newest versions pyproject.toml allows, to see drift before users do.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The Pythons pyproject.toml supports (requires-python >= 3.10), for `make test-pythons`.
PYTHONS ?= 3.10 3.11 3.12 3.13
SKIP_PYTHONS ?=
# The suite waits on servers, subprocesses and timeouts far more than it computes (about a third
# of one core): its files run on this many pytest-xdist workers (one file per worker at a time,
# so module fixtures stay shared). TEST_WORKERS=0 runs it in this process.
TEST_WORKERS ?= 3
PYTEST := -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

# uv installs from the lock; it is itself pinned and bootstrapped from the package index with pip,
# once per machine, into a small venv of its own.
UV_VERSION ?= 0.13.9
UV_HOME ?= $(HOME)/.cache/async_task_system/uv-$(UV_VERSION)
UV := $(UV_HOME)/bin/uv
export UV_PYTHON_DOWNLOADS := never
# Byte-compile at install, as pip does: the tests start many interpreters, and a session may run with
# PYTHONDONTWRITEBYTECODE set (litellm alone then takes ~9 s to import instead of ~1 s).
export UV_COMPILE_BYTECODE := 1

.PHONY: demo test pytest test-pythons test-latest lint format bench clean phoenix peer-test proto lock

$(UV):
	test -x $(UV_HOME)/bin/python || $(PYTHON) -m venv $(UV_HOME)
	$(UV_HOME)/bin/python -m pip install -q --disable-pip-version-check 'uv==$(UV_VERSION)'

$(STAMP): pyproject.toml uv.lock | $(UV)
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync -q --locked --extra dev --python $(PYTHON)
	touch $(STAMP)

# Refresh uv.lock to the newest versions pyproject.toml allows (commit it after `make test` passes),
# and the Phoenix server's own lock.
lock: $(UV)
	$(UV) lock --upgrade
	$(UV) pip compile -q --universal --python-version 3.11 --upgrade \
	  requirements/phoenix.in -o requirements/phoenix.txt

# The suite against the newest allowed versions, in its own venv, without touching uv.lock.
LATEST_VENV ?= .venv-latest
test-latest: $(UV) phoenix
	rm -rf $(LATEST_VENV)
	$(UV) venv -q --python $(PYTHON) $(LATEST_VENV)
	$(UV) pip install -q --python $(LATEST_VENV)/bin/python --upgrade -e '.[dev]'
	$(LATEST_VENV)/bin/python $(PYTEST)

# The Phoenix server (tracing end-to-end test) lives in its own venv: it needs openai>=3, which
# conflicts with litellm's pin. Installed once (a few minutes), instant afterwards. A failed
# install does not stop `make test`: the test then skips with the reason (and fails under CI=true).
PHOENIX_VENV ?= $(HOME)/.cache/async_task_system/phoenix-venv
# Its versions come from requirements/phoenix.txt (a lock made from requirements/phoenix.in).
phoenix: | $(UV)
	@cmp -s requirements/phoenix.txt $(PHOENIX_VENV)/.installed || { \
	  echo "Installing the Phoenix server into $(PHOENIX_VENV) (one time, a few minutes)..."; \
	  { test -x $(PHOENIX_VENV)/bin/python || $(UV) venv -q --python $(PYTHON) $(PHOENIX_VENV); } && \
	  $(UV) pip sync -q --python $(PHOENIX_VENV)/bin/python requirements/phoenix.txt && \
	  cp requirements/phoenix.txt $(PHOENIX_VENV)/.installed; } || \
	  echo "warning: could not install Phoenix into $(PHOENIX_VENV); its end-to-end test will skip (fail under CI)."

# smolagents' own CodeAgent and executor tests, run with and without our executor installed on
# every CodeAgent: the same tests must pass (tests/peer/run_smolagents_suite.py). Their test
# dependencies live in their own venv, set up once per smolagents version (the one in .venv).
# Without the package registry it skips with the reason; under CI=true it fails instead.
PEER_VENV ?= .venv-peer
# Its test dependencies are the `peer` dependency group of pyproject.toml, installed from uv.lock.
peer-test: $(STAMP)
	@version=$$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("smolagents"))'); \
	cmp -s uv.lock $(PEER_VENV)/.installed || { \
	  echo "Setting up $(PEER_VENV) for the smolagents $$version tests (one time)..."; \
	  UV_PROJECT_ENVIRONMENT=$(PEER_VENV) $(UV) sync -q --locked --group peer --python $(PYTHON) && \
	  cp uv.lock $(PEER_VENV)/.installed; } || { \
	  if [ "$$CI" = true ]; then echo "peer suite FAILED (CI=true): could not install its test dependencies"; exit 1; fi; \
	  echo "peer suite SKIPPED: could not install its test dependencies (no package registry?)"; exit 0; }; \
	$(PEER_VENV)/bin/python tests/peer/run_smolagents_suite.py

demo: $(STAMP)
	$(BIN)/async-agent demo

test: $(STAMP) phoenix
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/python $(PYTEST)

# The suite alone (no lint), in $(VENV): what test-pythons runs per Python.
pytest: $(STAMP) phoenix
	$(BIN)/python $(PYTEST)

# The suite on each of $(PYTHONS) (except $(SKIP_PYTHONS)), each in its own cached .venv-<version>,
# all sharing the one Phoenix server venv. A Python not installed is skipped with a note, and is an
# error under CI=true.
test-pythons: phoenix
	.ci/test-pythons $(filter-out $(SKIP_PYTHONS),$(PYTHONS))

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

format: $(STAMP)
	$(BIN)/ruff format .

# Regenerate async_task_system/remote/_proto from proto/*.proto with the pinned grpcio-tools (a test
# checks that the committed files are exactly what it generates).
proto: $(STAMP)
	$(BIN)/python scripts/gen_proto.py

bench: $(STAMP)
	for f in benchmarks/bench_*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) $(PEER_VENV) $(LATEST_VENV) .venv-* build *.egg-info .pytest_cache
