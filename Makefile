# slmops developer entrypoints. Every target that needs Python runs `setup` first.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup test test-unit test-integration demo bench protos protos-check lint charts clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,train-extra,cluster]'
	$(PY) scripts/install_helm.py
	bash scripts/install_system_packages.sh
	@touch $(STAMP)

test: setup
	$(PY) scripts/gen_protos.py --check
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-unit: setup
	$(PY) -m pytest -q -m 'not integration and not e2e' $(PYTEST_ARGS)

test-integration: setup
	$(PY) -m pytest -q -m 'integration or e2e' $(PYTEST_ARGS)

demo: setup
	$(PY) -m slmops.demo

bench: setup
	$(PY) -m slmops.bench

protos: setup
	$(PY) scripts/gen_protos.py

protos-check: setup
	$(PY) scripts/gen_protos.py --check

lint: setup
	$(VENV)/bin/ruff check services tests scripts

charts: setup
	$(PY) scripts/check_charts.py

clean:
	rm -rf build .pytest_cache
