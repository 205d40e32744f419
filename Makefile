# One command to set up and run each main job. `make setup` creates .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[test,bench]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/workbench demo --out out/demo

test: setup
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python bench/lossless.py
	$(BIN)/python bench/scaling.py

clean:
	rm -rf $(VENV) out
