# mamba2-jax artifact.  Every target creates .venv from scratch if it is missing.
SHELL := /bin/bash
PY_SYS ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export MAMBA2_JAX_DATA ?= $(abspath ../shared/data)
export PYTHONUNBUFFERED := 1

.PHONY: install lint test test-fast test-slow clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || $(PY_SYS) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(VENV)/bin/ruff check .

# pytest-xdist: two worker processes, one work unit per test module (tests/conftest.py says why);
# PYTEST_XDIST= (empty) runs serially
PYTEST_XDIST ?= -n 2 --dist loadscope --no-loadscope-reorder

# Everything `make test` needs before pytest: the two venvs, lint, libtpu, and (mk/llama.mk, mk/parity.mk)
# libllama.  They are independent, so they are made in parallel: on a fresh 2-core machine the llama.cpp
# compile overlaps the venvs' downloads.  Each target's output is printed in one piece when it ends.
TEST_SETUP_JOBS ?= 3
.PHONY: test-setup test-setup-parts
test-setup:
	$(MAKE) --no-print-directory -j$(TEST_SETUP_JOBS) --output-sync=target test-setup-parts
test-setup-parts: install lint install-tpu

# everything, integration tests included (CI).  Compiled with XLA:CPU's LLVM backend passes off
# (TEST_XLA_FLAGS): the same optimised HLO, the same tests and tolerances, about half the compile time
# that is most of the suite's; test_oracle.py::test_default_backend_level_matches_oracle checks the
# default level's machine code (what users run) against the float64 oracle in its own process.
# TEST_XLA_FLAGS= (empty) runs the whole suite at the default level.
TEST_XLA_FLAGS ?= --xla_backend_optimization_level=0
test: test-setup
	XLA_FLAGS="$(strip $(XLA_FLAGS) $(TEST_XLA_FLAGS))" $(PY) -m pytest -q $(PYTEST_XDIST)

# the fast tests only: no make, subprocess venvs or LaTeX, compiled as `make test` compiles
test-fast: install
	XLA_FLAGS="$(strip $(XLA_FLAGS) $(TEST_XLA_FLAGS))" $(PY) -m pytest -q $(PYTEST_XDIST) -m "not slow and not integration"

# how long `make test` takes on a fresh machine (a clean clone of HEAD, no venvs, pip's cache off):
# results/ci/fresh-make-test.json, which the README cites; run it on an idle machine
.PHONY: fresh-make-test
fresh-make-test: install
	$(PY) experiments/fresh_make_test.py $(FRESH_ARGS)

test-slow: install
	$(PY) -m pytest -q -m slow

clean-venv:
	rm -rf $(VENV)

# Feature areas add their targets in mk/*.mk
-include mk/*.mk
