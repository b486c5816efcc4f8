# One command each: `make demo` installs and runs an import; `make test` installs and runs every check.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint types unit bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/orgsyncd import examples/day1.csv --tenant demo || true
	@echo; echo "== results (var/orgsyncd/tenants/demo/results/):"; cat var/orgsyncd/tenants/demo/results/day1.*.results.csv

test: $(STAMP) lint types
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check orgsyncd tests bench
	$(BIN)/ruff format --check orgsyncd tests bench

types: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/import_bench.py --rows 1000000 --rss-scaling

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
