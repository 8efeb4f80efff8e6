# On a fresh machine: `make demo` or `make test` create .venv, install torch (CPU wheel) and the
# package, then run the demo or the tests.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/sharpclip: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

.PHONY: setup test lint demo
setup: $(BIN)/sharpclip

test: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

demo: setup
	$(BIN)/sharpclip demo

lint: setup
	$(BIN)/ruff check src tests benchmarks
