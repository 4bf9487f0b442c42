# Parity experiment (issue 4): reference runners + JAX comparison.  Included by the Makefile.
#   make install-ref      .venv-ref: torch 2.13 CPU + mamba_ssm 2.2.2 (no CUDA build) + triton/einops/transformers
#   make parity           offline: random-init 130m (fp16 stored) + tiny ngroups=2 + a 2-layer 130m-width model
#                         (+ checkpoints/mamba2-tiny-wikitext when it exists), CPU references; mamba_ssm_triton runs
#                         its Triton kernels through the interpreter on the models in triton.cpu_models
#                         (mamba2_jax/eval/conf/parity.yaml)
#   make parity MODEL=state-spaces/mamba2-130m      a real checkpoint (hub id or local dir)
#   make parity BACKENDS=mamba_ssm_ref_cpu,transformers,mamba_ssm_triton   (Triton on CUDA: MAMBA2_JAX_GPU_PYTHON, see reference/README.md)
# mamba_ssm must NOT be importable in the project venv (HF Mamba2 would bind its Triton kernels), so it
# lives in its own venv.  Every backend runs in its own process.

REF_VENV ?= .venv-ref
REF_PY := $(REF_VENV)/bin/python
REF_STAMP := $(REF_VENV)/.installed
# tests and experiments/parity.py find the reference interpreter through this variable
export MAMBA2_JAX_REF_PYTHON ?= $(abspath $(REF_PY))
MAMBA_SSM_VERSION := 2.2.2

.PHONY: install-ref parity clean-venv-ref

$(REF_STAMP): reference/requirements-cpu.txt
	test -x $(REF_PY) || $(PY_SYS) -m venv $(REF_VENV)
	$(REF_PY) -m pip install -q --upgrade pip
	$(REF_PY) -m pip install -q -r reference/requirements-cpu.txt
	MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE $(REF_PY) -m pip install -q --no-build-isolation --no-deps "mamba-ssm==$(MAMBA_SSM_VERSION)"
	$(REF_PY) -c "import reference.ref_cpu as r; print('mamba_ssm_ref_cpu ready:', r.SHIMS)"
	touch $@

install-ref: $(REF_STAMP)

# The reference tests (tests/test_reference_*.py, tests/test_parity*.py) run mamba_ssm_ref_cpu in .venv-ref.
install: $(REF_STAMP)
test: $(REF_STAMP)

PARITY_LABEL ?= $(if $(MODEL),cpu-$(notdir $(MODEL)),cpu-synthetic)
parity: $(STAMP) $(REF_STAMP)
	$(PY) experiments/parity.py label=$(PARITY_LABEL) \
	  $(if $(MODEL),'models=["$(MODEL)"]' optional_models=[]) \
	  $(if $(BACKENDS),'backends=[$(BACKENDS)]') $(PARITY_ARGS)

# `make clean-venv` removes .venv-ref too
clean-venv: clean-venv-ref
clean-venv-ref:
	rm -rf $(REF_VENV)
