# Set-up and checks. `make quickstart` and `make test` are the two commands of README.md.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: install test-deps test lint quickstart

# torch first, pinned to the CPU build that lies on these machines: a bare `torch`
# requirement would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

# What only the tests need: vLLM's CPU build and a real Argilla server in its own venv.
$(VENV)/.test-deps: $(VENV)/.installed scripts/install_test_deps.sh
	VENV=$(VENV) PYTHON=$(PYTHON) bash scripts/install_test_deps.sh
	touch $@

test-deps: $(VENV)/.test-deps

test: test-deps
	$(BIN)/python -m pytest -q --durations=15

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

quickstart: install
	$(BIN)/stillhouse run configs/quickstart.yaml
