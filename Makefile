# Two commands on a fresh machine: `make demo` and `make test`.
# Another Python: `make test PYTHON=python3.12 VENV=.venv-3.12`; all supported ones: `make test-pythons`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The Pythons pyproject.toml supports (requires-python >= 3.10), for `make test-pythons`.
PYTHONS ?= 3.10 3.11 3.12 3.13
SKIP_PYTHONS ?=

.PHONY: demo test pytest test-pythons lint format bench clean phoenix peer-test proto

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The Phoenix server (tracing end-to-end test) lives in its own venv: it needs openai>=3, which
# conflicts with litellm's pin. Installed once (a few minutes), instant afterwards. A failed
# install does not stop `make test`: the test then skips with the reason (and fails under CI=true).
PHOENIX_VENV ?= $(HOME)/.cache/async_task_system/phoenix-venv
PHOENIX_SPEC ?= arize-phoenix~=20.26
phoenix:
	@test -f $(PHOENIX_VENV)/.installed || { \
	  echo "Installing the Phoenix server into $(PHOENIX_VENV) (one time, a few minutes)..."; \
	  { test -x $(PHOENIX_VENV)/bin/python || $(PYTHON) -m venv $(PHOENIX_VENV); } && \
	  $(PHOENIX_VENV)/bin/python -m pip install -q '$(PHOENIX_SPEC)' && touch $(PHOENIX_VENV)/.installed; } || \
	  echo "warning: could not install Phoenix into $(PHOENIX_VENV); its end-to-end test will skip (fail under CI)."

# smolagents' own CodeAgent and executor tests, run with and without our executor installed on
# every CodeAgent: the same tests must pass (tests/peer/run_smolagents_suite.py). Their test
# dependencies live in their own venv, set up once per smolagents version (the one in .venv).
# Without the package registry it skips with the reason; under CI=true it fails instead.
PEER_VENV ?= .venv-peer
PEER_DEPS ?= pytest pytest-timeout pytest-datadir pandas numpy pillow mcp
peer-test: $(STAMP)
	@version=$$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("smolagents"))'); \
	test -f $(PEER_VENV)/.installed-$$version || { \
	  echo "Setting up $(PEER_VENV) for the smolagents $$version tests (one time)..."; \
	  { test -x $(PEER_VENV)/bin/python || $(PYTHON) -m venv $(PEER_VENV); } && \
	  $(PEER_VENV)/bin/python -m pip install -q -e . "smolagents==$$version" $(PEER_DEPS) && \
	  touch $(PEER_VENV)/.installed-$$version; } || { \
	  if [ "$$CI" = true ]; then echo "peer suite FAILED (CI=true): could not install its test dependencies"; exit 1; fi; \
	  echo "peer suite SKIPPED: could not install its test dependencies (no package registry?)"; exit 0; }; \
	$(PEER_VENV)/bin/python tests/peer/run_smolagents_suite.py

demo: $(STAMP)
	$(BIN)/async-agent demo

test: $(STAMP) phoenix
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

# The suite alone (no lint), in $(VENV): what test-pythons runs per Python.
pytest: $(STAMP) phoenix
	$(BIN)/python -m pytest -q

# The suite on each of $(PYTHONS) (except $(SKIP_PYTHONS)), each in its own cached .venv-<version>,
# all sharing the one Phoenix server venv. A Python not installed is skipped with a note, and is an
# error under CI=true.
test-pythons: phoenix
	.ci/test-pythons $(filter-out $(SKIP_PYTHONS),$(PYTHONS))

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .

# Regenerate async_task_system/remote/_proto from proto/*.proto with the pinned grpcio-tools (a test
# checks that the committed files are exactly what it generates).
proto: $(STAMP)
	$(BIN)/python scripts/gen_proto.py

bench: $(STAMP)
	for f in benchmarks/bench_*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) $(PEER_VENV) .venv-* build *.egg-info .pytest_cache
