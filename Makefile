# The two commands of the README are `make run` and `make test`; everything else is theirs.
PY ?= python3
PORT ?= 8080
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	@echo "installing gatequeue and its dependencies into $(VENV) (torch alone is a few GB: the first time takes minutes)"
	$(BIN)/pip install --progress-bar on -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## The whole system on this machine: MongoDB (embedded), API, one worker, a demo run.
run: install
	$(BIN)/gatequeue up --demo --port $(PORT)

## The whole test suite.
test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy


clean:
	rm -rf $(VENV) .gatequeue .pytest_cache .ruff_cache .mypy_cache
