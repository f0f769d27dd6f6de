# slmops developer entrypoints. Every target that needs Python runs `setup` first.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup test test-unit test-integration reliability demo demo-chat bench bench-peers protos protos-check lint charts clean images images-smoke images-push

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,train-extra,cluster]'
	$(PY) scripts/install_helm.py
	bash scripts/install_system_packages.sh
	@touch $(STAMP)

# Unit tests first, stopping at the first failure; then the integration and e2e tests, one test
# module per worker process (TEST_WORKERS of them: most of their time is spent waiting on Ray,
# services and subprocesses, so two workers overlap well even on 2 cores; 0 runs them in this process).
TEST_WORKERS ?= 2
test: setup
	$(PY) scripts/gen_protos.py --check
	$(PY) -m pytest -q -x -m 'not integration and not e2e' --durations=10 $(PYTEST_ARGS)
	$(PY) -m pytest -q -m 'integration or e2e' -n $(TEST_WORKERS) --dist loadfile --durations=25 $(PYTEST_ARGS)

test-unit: setup
	$(PY) -m pytest -q -m 'not integration and not e2e' $(PYTEST_ARGS)

test-integration: setup
	$(PY) -m pytest -q -m 'integration or e2e' -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# Every attack and fault test (marked `reliability`; they run in `make test` too), then one table:
# attack or fault, expected, observed, data lost. The table is kept in build/reliability.md.
reliability: setup
	$(PY) scripts/reliability.py -n $(TEST_WORKERS) $(PYTEST_ARGS)

demo: setup
	$(PY) -m slmops.demo

# The demo's chat variant: messages records with a system prompt, ChatML, /chat/completions.
demo-chat: setup
	$(PY) -m slmops.demo --chat

bench: setup
	$(PY) -m slmops.bench

# llama.cpp's llama-server, llama-quantize and llama-bench, compiled once into build/peers/ (about
# 10 minutes on 2 cores): `make bench` then compares the predictor with llama-server.
bench-peers: setup
	$(PY) scripts/build_peers.py

protos: setup
	$(PY) scripts/gen_protos.py

protos-check: setup
	$(PY) scripts/gen_protos.py --check

lint: setup
	$(VENV)/bin/ruff check services tests scripts
	$(VENV)/bin/ruff format --check services tests scripts

charts: setup
	$(PY) scripts/check_charts.py
	$(PY) -m pytest -q tests/unit/test_charts.py tests/unit/test_charts_auth.py tests/unit/test_charts_serving.py \
	  tests/unit/test_charts_observability.py tests/unit/test_charts_contract.py tests/unit/test_charts_profiles.py \
	  tests/unit/test_kustomize_contract.py tests/unit/test_kustomize_settings.py tests/unit/test_crd_schemas.py \
	  tests/unit/test_crd_fallbacks.py tests/unit/test_crd_renders.py tests/unit/test_dockerfiles.py

# Container images, built and run with buildah as root (no Docker engine needed; docker/README.md).
# IMAGES: names to build (default all but CUDA); PYTHON_IMAGE: the base (default: made locally
# with debootstrap by scripts/make_base_image.sh).
TAG ?= 0.1.0
REGISTRY ?=
IMAGES ?=

images:
	$(PYTHON) scripts/images.py build --tag $(TAG) $(IMAGES)

images-smoke: setup
	$(PY) scripts/images.py smoke --tag $(TAG) $(IMAGES)

images-push:
	@test -n "$(REGISTRY)" || { echo "usage: make images-push REGISTRY=registry.example.com/ml [TAG=$(TAG)]"; exit 1; }
	$(PYTHON) scripts/images.py push --registry $(REGISTRY) --tag $(TAG) $(IMAGES)

clean:
	rm -rf build .pytest_cache
