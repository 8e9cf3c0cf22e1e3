# The two commands a fresh machine needs:
#   make demo   train the example, lose its container mid-training, resume, keep the model
#   make test   the whole test suite (lint, types, unit and real-engine integration tests)
PYTHON ?= python3

.PHONY: demo test setup lint

setup:
	PYTHON=$(PYTHON) bash scripts/setup.sh

demo: setup
	PYTHON=$(PYTHON) bash examples/digits/demo.sh

lint:
	$(PYTHON) -m ruff check src tests examples benchmarks
	$(PYTHON) -m ruff format --check src
	$(PYTHON) -m mypy

test: setup lint
	$(PYTHON) -m pytest
