# The two commands a fresh machine needs:
#   make demo   train the example, lose its container mid-training, resume, keep the model
#   make test   the whole test suite (lint, types, unit and real-engine integration tests)
#   make demo-cluster  a two-node Swarm loses the node a job runs on; the job resumes elsewhere
# Both run in a project virtual environment, never in the system Python (PEP 668): ./.venv,
# made on first use; or the virtualenv you are in; or the interpreter you name: make PYTHON=…
VENV ?= .venv
ifdef VIRTUAL_ENV
PYTHON ?= $(VIRTUAL_ENV)/bin/python
else
PYTHON ?= $(abspath $(VENV))/bin/python
endif
export PYTHON VENV

.PHONY: demo demo-cluster test setup setup-demo lint

# cargohold with its test tools (the `dev` extra), the engine and the base image.
setup:
	@bash scripts/setup.sh dev

# cargohold alone (with NumPy for the example's dataset), the engine and the base image.
setup-demo:
	@bash scripts/setup.sh demo

demo: setup-demo
	@bash examples/digits/demo.sh

# Two private Docker nodes (network namespaces, needs root) form a Swarm; the job runs on one with
# its checkpoints mirrored to a local S3 server, that node dies, the job resumes on the other.
# Everything it creates (engines, namespaces, stack, volumes, bucket server) is removed after.
demo-cluster: setup
	"$(PYTHON)" -m pytest -q -s -p no:cacheprovider \
		"tests/integration/test_cluster.py::test_a_job_survives_losing_its_node"

# ruff, mypy, and the layer contract (pyproject.toml, [tool.importlinter]): imports point down.
lint:
	"$(PYTHON)" -m ruff check src tests examples benchmarks
	"$(PYTHON)" -m ruff format --check src
	"$(PYTHON)" -m mypy
	PYTHONPATH=src "$(PYTHON)" -c 'from importlinter.cli import lint_imports_command as run; run()'

test: setup lint
	"$(PYTHON)" -m pytest
