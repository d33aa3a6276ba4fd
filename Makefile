# One task runner for people and CI. `make demo` and `make test` are the README's two commands.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
PYTEST := $(BIN)/pytest -q -p no:cacheprovider
XDIST  ?= -n 2

# Two installs into the one .venv, each remembered by a stamp named for pyproject.toml's hash:
# the demo's (runtime dependencies + the `local` extra) and the developer's (also `dev`, `cdk`
# and `notebooks`: export's pyarrow, DuckDB, pandas, papermill, Jupyter; plus the Lambda
# wheelhouse). `make demo` never pays for the CDK, the notebooks' packages or the wheels.
HASH       := $(shell sha1sum pyproject.toml | cut -c1-12)
DEMO_STAMP := $(VENV)/.installed-$(HASH)-demo
DEV_STAMP  := $(VENV)/.installed-$(HASH)-dev
DEV_EXTRAS ?= local,dev,cdk,notebooks
WHEELS     := .local/wheels/.stamp-$(shell cat pyproject.toml cdk/constants.py | sha1sum | cut -c1-12)

# Nothing is written outside the checkout but pip's own cache (~/.cache/pip) and temporary
# files: Python writes no bytecode next to the sources, pytest keeps no cache, mypy, ruff and
# hypothesis keep theirs here, jsii (the CDK's runtime) keeps its package cache in .local/
# instead of ~/.cache/aws/jsii, and the CDK's node process, which jsii starts with JSII_NODE,
# gets a HOME in .local/ (aws-cdk-lib writes asset fingerprints to ~/.cdk/cache, with no
# setting to move them); the notebooks' kernels keep IPython's profile, Jupyter's connection
# files, Jupyter's configuration and data folders (where jupyter_core would write
# ~/.jupyter/migrated) and matplotlib's font cache in .local/ too.
export PYTHONDONTWRITEBYTECODE := 1
export IPYTHONDIR := $(CURDIR)/.local/ipython
export JUPYTER_RUNTIME_DIR := $(CURDIR)/.local/jupyter-runtime
export MPLCONFIGDIR := $(CURDIR)/.local/matplotlib
export JUPYTER_CONFIG_DIR := $(CURDIR)/.local/jupyter-config
export JUPYTER_DATA_DIR := $(CURDIR)/.local/jupyter-data
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20
export JSII_RUNTIME_PACKAGE_CACHE_ROOT := $(CURDIR)/.local/jsii-package-cache
NODE_HOME := $(CURDIR)/.local/node-home
export JSII_NODE := $(CURDIR)/.local/bin/jsii-node

.PHONY: help install tools wheels orthanc demo demo-packages test lint format test-unit test-workflow test-infra \
	test-integration test-notebooks notebooks bench synth clean

# Debian's packages for the local Orthanc and the integration layer (pipeline/orthanc/local.py
# names the same list; python3-venv builds the Python plugin's own environment).
ORTHANC_PACKAGES := orthanc orthanc-dicomweb orthanc-python orthanc-postgresql postgresql python3-venv

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(VENV)/bin/pip:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(DEMO_STAMP): pyproject.toml | $(VENV)/bin/pip
	@echo "== installing the demo's packages into $(VENV): pydicom, boto3, moto, rich (about a minute, once)"
	$(PY) -m pip install -e '.[local]'
	@find $(VENV) -maxdepth 1 -name '.installed-*' ! -name $(notdir $(DEMO_STAMP)) ! -name $(notdir $(DEV_STAMP)) -delete
	@touch $@

$(JSII_NODE):
	@mkdir -p $(@D) $(NODE_HOME)
	@printf '#!/bin/sh\n# node for jsii, with a HOME inside the checkout (written by the Makefile)\nHOME="%s" exec node "$$@"\n' '$(NODE_HOME)' > $@
	@chmod +x $@

$(DEV_STAMP): pyproject.toml | $(VENV)/bin/pip $(JSII_NODE)
	@echo "== installing the developer's packages into $(VENV): the demo's, plus pytest, ruff, mypy, the CDK and the notebooks' (a few minutes, once)"
	$(PY) -m pip install -e '.[$(DEV_EXTRAS)]'
	@find $(VENV) -maxdepth 1 -name '.installed-*' ! -name $(notdir $(DEMO_STAMP)) ! -name $(notdir $(DEV_STAMP)) -delete
	@touch $@ $(DEMO_STAMP)

$(WHEELS): $(DEV_STAMP) pyproject.toml cdk/constants.py
	$(PY) -m cdk.bundling wheels
	@rm -f .local/wheels/.stamp-* && touch $@

install: $(DEV_STAMP) $(WHEELS) tools ## create or update .venv with everything, the Lambda wheelhouse and the template checkers (fast when nothing changed)

# The infra layer's template checkers that are not in .venv, installed into the checkout
# (tests/infra/test_infra_checkers.py finds them there): checkov in its own virtualenv (its
# many dependencies would move .venv's pins), asl-validator from the committed npm lockfile
# with `npm ci` (never globally; npm's cache and logs in .local/ too). Each is remembered by a
# stamp named for its pin files' hash.
TOOLS       := .local/tools
TOOL_PINS   := tests/infra/tools
CHECKOV     := $(TOOLS)/checkov/.installed-$(shell cat $(TOOL_PINS)/checkov.txt | sha1sum | cut -c1-12)
ASL_VALIDATOR := $(TOOLS)/npm/.installed-$(shell cat $(TOOL_PINS)/package.json $(TOOL_PINS)/package-lock.json | sha1sum | cut -c1-12)

$(CHECKOV): $(TOOL_PINS)/checkov.txt
	@echo "== installing checkov ($$(cat $<)) into $(TOOLS)/checkov (a minute, once)"
	rm -rf $(TOOLS)/checkov
	$(PYTHON) -m venv $(TOOLS)/checkov
	$(TOOLS)/checkov/bin/python -m pip install -q --upgrade pip
	$(TOOLS)/checkov/bin/python -m pip install -q -r $<
	@touch $@

$(ASL_VALIDATOR): $(TOOL_PINS)/package.json $(TOOL_PINS)/package-lock.json
	@command -v npm >/dev/null || { echo "make tools: npm is missing (Prerequisites in README.md: Node.js 18 or newer with npm)" >&2; exit 1; }
	@echo "== installing asl-validator into $(TOOLS)/npm (npm ci from $(TOOL_PINS)/package-lock.json)"
	rm -rf $(TOOLS)/npm && mkdir -p $(TOOLS)/npm
	cp $(TOOL_PINS)/package.json $(TOOL_PINS)/package-lock.json $(TOOLS)/npm/
	npm ci --prefix $(TOOLS)/npm --cache $(CURDIR)/.local/npm-cache --logs-dir $(CURDIR)/.local/npm-cache/_logs --no-audit --no-fund --loglevel=error
	@touch $@

tools: $(CHECKOV) $(ASL_VALIDATOR) ## the infra layer's template checkers into .local/tools: checkov (own virtualenv), asl-validator (npm); cfn-lint is in .venv

wheels: $(WHEELS) ## the parse Lambda's arm64 wheels into .local/wheels (needs the network; synth then does not)

orthanc: ## install Debian's Orthanc, its DICOMweb, Python and PostgreSQL plugins, and PostgreSQL (as root; otherwise prints the command)
	@if [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(ORTHANC_PACKAGES); \
	else \
	  echo "make orthanc: not root; install the packages with:" >&2; \
	  echo "  sudo apt-get install -y $(ORTHANC_PACKAGES)" >&2; \
	  exit 1; \
	fi

# The demo's Debian packages: installed when missing and this is root with apt-get (as CI runs;
# the packages' own services are kept from starting, since the demo runs its own Orthanc on a
# free loopback port); otherwise one line says the demo runs without Orthanc. Never fails.
POLICY_RC ?= /usr/sbin/policy-rc.d
demo-packages:
	@missing=""; for pkg in $(ORTHANC_PACKAGES); do \
	  dpkg -s $$pkg >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "== installing Debian's Orthanc packages for the demo:$$missing"; \
	  made_policy=""; \
	  if [ ! -e "$(POLICY_RC)" ]; then \
	    printf '#!/bin/sh\nexit 101\n' > "$(POLICY_RC)" && chmod +x "$(POLICY_RC)" && made_policy=1; \
	  fi; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; } \
	    || echo "make demo: installing$$missing failed: the demo runs without Orthanc"; \
	  if [ -n "$$made_policy" ]; then rm -f "$(POLICY_RC)"; fi; \
	else \
	  echo "make demo: Orthanc's packages are not installed ($$missing) and this is not root with apt-get: the demo runs without Orthanc (sudo make orthanc installs them)"; \
	fi

demo: $(DEMO_STAMP) demo-packages ## run the local stack, ingest the sample set, print the outcome summary (installs only what it needs; as root, Debian's Orthanc too)
	$(BIN)/dicom-pipeline demo

lint: $(DEV_STAMP) ## ruff and mypy, both clean
	$(BIN)/ruff check pipeline lambdas cdk tests
	$(BIN)/ruff format --check pipeline lambdas cdk tests
	$(BIN)/mypy

format: $(DEV_STAMP) ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix pipeline lambdas cdk tests
	$(BIN)/ruff format pipeline lambdas cdk tests

# A layer target always runs pytest, and fails when its folder holds no test file: a layer
# never passes by running nothing (pytest itself exits 5 when it collects no test).
has-tests-%:
	@find tests/$* -name 'test_*.py' -print -quit 2>/dev/null | grep -q . \
	  || { echo "make test-$*: tests/$*/ holds no test_*.py yet: nothing to run, so the layer fails" >&2; exit 1; }

test-unit: has-tests-unit $(DEV_STAMP) ## unit layer: parser, DICOM JSON, records, CLI; no network, moto for S3
	$(PYTEST) $(XDIST) tests/unit

test-workflow: has-tests-workflow $(DEV_STAMP) ## workflow layer: the ASL file on moto, in process; the demo and local up
	$(PYTEST) $(XDIST) tests/workflow

test-infra: has-tests-infra $(DEV_STAMP) $(WHEELS) tools ## infra layer: CDK synth, cdk-nag, cfn-lint and checkov on the template, asl-validator on the workflow files
	$(PYTEST) tests/infra

test-integration: has-tests-integration $(DEV_STAMP) ## integration layer: real Orthanc (Debian's packages) and PostgreSQL over TLS on loopback
	$(PYTEST) tests/integration

test-notebooks: has-tests-notebooks $(DEV_STAMP) ## notebooks layer: papermill runs every notebook against a seeded local stack (no Orthanc)
	$(PYTEST) tests/notebooks

# Only the layers that have tests; add a layer here when its first test lands
# (tests/unit/test_make_layers.py checks both ways).
test: lint test-unit test-workflow test-infra test-integration test-notebooks ## lint, then the unit, workflow, infra, integration and notebooks layers
	@echo "== make test passed: lint, unit, workflow, infra, integration, notebooks"

# The notebooks, executed with papermill (pipeline/local/notebooks.py) into .local/notebooks/
# as executed .ipynb and HTML: against AWS_STACK=<name> when given, else the local stack
# STACK_FILE names when it is running, else a local stack started for the run (with Orthanc
# where installed), seeded with the sample set as the demo seeds it, and stopped afterwards.
# The committed notebooks stay without outputs.
STACK_FILE ?= .local/stack.json
AWS_STACK  ?=
NOTEBOOK_OUT ?= .local/notebooks
notebooks: $(DEV_STAMP) ## run the three notebooks (against a running local stack, AWS_STACK=<name>, or one started and seeded for the run) into .local/notebooks/*.html
	$(PY) -m pipeline.local.notebooks --out $(NOTEBOOK_OUT) --stack "$(STACK_FILE)" --aws-stack "$(AWS_STACK)"

# The load under faults: objects per scenario (no fault, each fault, all at once).
LOAD_BENCH_OBJECTS ?= 3000
bench: $(DEV_STAMP) ## speed and memory, side by side with the baseline, as ratios
	$(PY) tests/bench/bench_parser.py
	$(PY) tests/bench/bench_batch_memory.py
	$(PY) tests/bench/bench_batch_cpu.py
	$(PY) tests/bench/bench_cold_start.py
	$(PY) tests/bench/bench_load_faults.py --objects $(LOAD_BENCH_OBJECTS)
	$(PY) tests/bench/bench_local_throughput.py

synth: $(DEV_STAMP) $(WHEELS) ## synthesize the CDK app into cdk.out, cdk-nag on (no AWS credentials, Docker or network)
	$(PY) -m cdk.app

clean: ## remove the virtualenv and generated files
	rm -rf $(VENV) .local cdk.out .pytest_cache .mypy_cache .ruff_cache .hypothesis
