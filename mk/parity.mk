# Parity experiment (issue 4): reference runners + JAX comparison.  Included by the Makefile.
#   make install-ref      .venv-ref: torch 2.13 CPU + mamba_ssm 2.2.2 (no CUDA build) + triton/einops/transformers
#   make parity           offline: random-init 130m (fp16 stored) + tiny ngroups=2 + a 2-layer 130m-width model
#                         (+ checkpoints/mamba2-tiny-wikitext when it exists), CPU references; mamba_ssm_triton runs
#                         its Triton kernels through the interpreter on the models in triton.cpu_models
#                         (mamba2_jax/eval/conf/parity.yaml)
#   make parity MODEL=state-spaces/mamba2-130m      a real checkpoint (hub id or local dir)
#   make parity BACKENDS=mamba_ssm_ref_cpu,transformers,mamba_ssm_triton   (Triton on CUDA: MAMBA2_JAX_GPU_PYTHON, see reference/README.md)
#   make install-gpu-ref  .venv-gpu: mamba_ssm 2.2.2 with its CUDA kernels (reference/requirements-gpu.txt), on a
#                         machine with an NVIDIA GPU only; never run by this project's CI (no GPU there)
#   make parity-gpu       parity with the Triton reference on the GPU, from .venv-gpu
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

# The GPU reference (the paper's mamba_ssm_triton) in its own venv.  Written from reference/requirements-gpu.txt's
# pins; it has never run on a GPU (none has been available to this project), so it stops at the first
# step that cannot work: no NVIDIA driver, or a torch that sees no CUDA device.
GPU_VENV ?= .venv-gpu
GPU_PY := $(GPU_VENV)/bin/python
GPU_PY_SYS ?= python3.11
TORCH_CUDA_INDEX ?= https://download.pytorch.org/whl/cu121
GPU_PARITY_MODEL ?= state-spaces/mamba2-130m
.PHONY: install-gpu-ref parity-gpu

$(GPU_VENV)/.installed: reference/requirements-gpu.txt
	@command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 || { echo "install-gpu-ref: no NVIDIA GPU here \
	(nvidia-smi is missing or lists no device): $(GPU_VENV) holds mamba_ssm 2.2.2's CUDA kernels and is only built on \
	a machine with an NVIDIA GPU (see docs/artifact_evaluation.md)" >&2; exit 2; }
	@command -v $(GPU_PY_SYS) >/dev/null || { echo "install-gpu-ref: $(GPU_PY_SYS) not found (mamba_ssm 2.2.2's \
	wheels are for Python 3.10/3.11; pass GPU_PY_SYS=python3.10)" >&2; exit 2; }
	test -x $(GPU_PY) || $(GPU_PY_SYS) -m venv $(GPU_VENV)
	$(GPU_PY) -m pip install -q --upgrade pip
	$(GPU_PY) -m pip install -q "torch==2.3.1" --index-url $(TORCH_CUDA_INDEX)
	$(GPU_PY) -m pip install -q -r reference/requirements-gpu.txt
	$(GPU_PY) -m pip install -q --no-build-isolation "causal-conv1d==1.4.0" "mamba-ssm==$(MAMBA_SSM_VERSION)"
	$(GPU_PY) -c "import torch, mamba_ssm; assert torch.cuda.is_available(), 'torch sees no CUDA device'; \
	print('mamba_ssm', mamba_ssm.__version__, 'on', torch.cuda.get_device_name(0))"
	touch $@

install-gpu-ref: $(GPU_VENV)/.installed

parity-gpu: $(STAMP) $(REF_STAMP) $(GPU_VENV)/.installed
	MAMBA2_JAX_GPU_PYTHON=$(abspath $(GPU_PY)) $(MAKE) --no-print-directory parity MODEL=$(GPU_PARITY_MODEL) \
	  BACKENDS=mamba_ssm_ref_cpu,transformers,mamba_ssm_triton PARITY_LABEL=gpu-$(notdir $(GPU_PARITY_MODEL))

# The reference tests (tests/test_reference_*.py, tests/test_parity*.py) run mamba_ssm_ref_cpu in .venv-ref.
install: $(REF_STAMP)
test-setup-parts: $(REF_STAMP)

PARITY_LABEL ?= $(if $(MODEL),cpu-$(notdir $(MODEL)),cpu-synthetic)
parity: $(STAMP) $(REF_STAMP)
	$(PY) experiments/parity.py label=$(PARITY_LABEL) \
	  $(if $(MODEL),'models=["$(MODEL)"]' optional_models=[]) \
	  $(if $(BACKENDS),'backends=[$(BACKENDS)]') $(PARITY_ARGS)

# `make clean-venv` removes .venv-ref too
clean-venv: clean-venv-ref
clean-venv-ref:
	rm -rf $(REF_VENV)
