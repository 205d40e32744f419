# One command to set up and run each main job. `make setup` creates .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup browser postgres demo test bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[test,bench]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/workbench demo --out out/demo

# Debian's Chromium for the dashboard's browser tests (never `playwright install`).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium chromium-driver; } \
		|| { command -v sudo >/dev/null && sudo apt-get update -qq && sudo apt-get install -y -qq chromium chromium-driver; } \
		|| echo "chromium could not be installed: the browser tests will be skipped"

# Debian's PostgreSQL server for the tests against a real database (tests/postgres.py starts throwaway ones).
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
		sudo=$$([ "$$(id -u)" -ne 0 ] && command -v sudo); \
		$$sudo apt-get update -qq && $$sudo apt-get install -y -qq postgresql; } \
		|| echo "PostgreSQL could not be installed: the PostgreSQL tests will be skipped"

test: setup browser postgres
	$(BIN)/python -m pytest

BASELINE ?= 0d77e7f

bench: setup postgres
	$(BIN)/python bench/lossless.py
	$(BIN)/python bench/commands.py --baseline $(BASELINE)
	$(BIN)/python bench/scaling.py --repeat 3 --baseline $(BASELINE)
	$(BIN)/python bench/secure_aggregation.py --baseline $(BASELINE)
	$(BIN)/python bench/deployment.py --baseline $(BASELINE)
	$(BIN)/python bench/dp_training.py
	$(BIN)/python bench/omop.py

clean:
	rm -rf $(VENV) out
