# One task runner for people and CI. `make demo` and `make test` are the README's two commands.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
EXTRAS ?= local,dev,cdk
comma  := ,
STAMP  := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)-$(subst $(comma),_,$(EXTRAS))
PYTEST := $(BIN)/pytest -q -p no:cacheprovider
XDIST  ?= -n 2
WHEELS := .local/wheels/.stamp-$(shell cat pyproject.toml cdk/constants.py | sha1sum | cut -c1-12)

export PYTHONDONTWRITEBYTECODE := 1
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20

.PHONY: help install wheels demo test lint format test-unit test-workflow test-infra test-integration test-notebooks bench synth clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP) $(WHEELS) ## create or update .venv with everything (fast when nothing changed)

$(WHEELS): $(STAMP) pyproject.toml cdk/constants.py
	$(PY) -m cdk.bundling wheels
	@rm -f .local/wheels/.stamp-* && touch $@

wheels: $(WHEELS) ## the parse Lambda's arm64 wheels into .local/wheels (needs the network; synth then does not)

demo: install ## run the local stack, ingest the sample set, print the outcome summary
	$(BIN)/dicom-pipeline demo

lint: install ## ruff and mypy, both clean
	$(BIN)/ruff check pipeline lambdas cdk tests
	$(BIN)/ruff format --check pipeline lambdas cdk tests
	$(BIN)/mypy

format: install ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix pipeline lambdas cdk tests
	$(BIN)/ruff format pipeline lambdas cdk tests

test-unit: install ## unit layer: no network, moto for S3
	$(PYTEST) $(XDIST) tests/unit

test-workflow: install ## workflow layer: the ASL file on moto, in process
	@if ls tests/workflow/test_*.py >/dev/null 2>&1; then $(PYTEST) $(XDIST) tests/workflow; fi

test-infra: install ## infra layer: CDK synth and cdk-nag
	@if ls tests/infra/test_*.py >/dev/null 2>&1; then $(PYTEST) tests/infra; fi

test-integration: install ## integration layer: real Orthanc, real PostgreSQL
	@if ls tests/integration/test_*.py >/dev/null 2>&1; then $(PYTEST) tests/integration; fi

test-notebooks: install ## notebooks layer: every notebook runs against the local stack
	@if ls tests/notebooks/test_*.py >/dev/null 2>&1; then $(PYTEST) tests/notebooks; fi

test: lint test-unit test-workflow test-infra test-integration test-notebooks ## lint, then every test layer

bench: install ## speed and memory, side by side with the baseline, as ratios
	$(PY) tests/bench/bench_parser.py

synth: install ## synthesize the CDK app into cdk.out, cdk-nag on (no AWS credentials, Docker or network)
	$(PY) -m cdk.app

clean: ## remove the virtualenv and generated files
	rm -rf $(VENV) .local cdk.out .pytest_cache .mypy_cache .ruff_cache .hypothesis
