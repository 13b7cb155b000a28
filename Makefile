# The two commands a newcomer needs: `make up` runs Darkroom, `make test` runs the test suite.
# Both set up .venv first (scripts/bootstrap.sh), so they work on a fresh machine.

INBOX ?= inbox
PYTEST_ARGS ?=
BENCH_ARGS ?=
VENV := .venv

.PHONY: setup up lint test bench clean

setup:
	@bash scripts/bootstrap.sh

up: setup
	$(VENV)/bin/darkroom up $(INBOX)

lint: setup
	$(VENV)/bin/ruff check .

test: lint
	@bash scripts/test-services.sh
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

bench: setup
	$(VENV)/bin/darkroom bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
