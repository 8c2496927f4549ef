# The two commands of the README:  make demo  (set up + main job)  and  make test  (set up + tests)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint format clean

setup: $(VENV)/.readtalk-installed

$(VENV)/.readtalk-installed: pyproject.toml scripts/setup.sh
	scripts/setup.sh

demo: setup
	$(BIN)/readtalk demo --out demo

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

format: setup
	$(BIN)/ruff format src tests
	$(BIN)/ruff check --fix src tests

clean:
	rm -rf demo .pytest_cache .ruff_cache
