# The two commands a fresh machine needs:
#   make demo   train the example, lose its container mid-training, resume, keep the model
#   make test   the whole test suite (lint, types, unit and real-engine integration tests)
# Both run in a project virtual environment, never in the system Python (PEP 668): ./.venv,
# made on first use; or the virtualenv you are in; or the interpreter you name: make PYTHON=…
VENV ?= .venv
ifdef VIRTUAL_ENV
PYTHON ?= $(VIRTUAL_ENV)/bin/python
else
PYTHON ?= $(CURDIR)/$(VENV)/bin/python
endif
export PYTHON VENV

.PHONY: demo test setup setup-demo lint

# cargohold with its test tools (the `dev` extra), the engine and the base image.
setup:
	@bash scripts/setup.sh dev

# cargohold alone (with NumPy for the example's dataset), the engine and the base image.
setup-demo:
	@bash scripts/setup.sh demo

demo: setup-demo
	@bash examples/digits/demo.sh

# ruff, mypy, and the layer contract (pyproject.toml, [tool.importlinter]): imports point down.
lint:
	$(PYTHON) -m ruff check src tests examples benchmarks
	$(PYTHON) -m ruff format --check src
	$(PYTHON) -m mypy
	PYTHONPATH=src $(PYTHON) -c 'from importlinter.cli import lint_imports_command as run; run()'

test: setup lint
	$(PYTHON) -m pytest
