# Compiling for TPU without a TPU (issue 19): `mamba2-jax compile` and the paper's TPU suite.
#   make install-tpu      libtpu==0.0.42.* (the version jax 0.10.2's [tpu] extra pins) into $(TPU_DIR)/,
#                         its own --target directory: never into .venv and never on the default import
#                         path; `mamba2-jax compile` adds it to sys.path for a TPU target only
#   make reproduce-tpu    on a TPU: the paper's TPU v6e runs (throughput, sweep, cache speedup), then the
#                         same suite compiled; elsewhere: the suite compiled for TPU v6e by libtpu's compiler,
#                         nothing run (results/tpu_compile/<model>.json; experiments/tpu_compile.py)
#   make install-cuda-plugin  jax-cuda12-plugin + jax-cuda12-pjrt 0.10.2 (JAX's CUDA plugin; --no-deps: no CUDA
#                         libraries) into $(CUDA_DIR)/, for `mamba2-jax compile --target cuda-l40s|cuda-h100`
#   make tpu-compile-claims   the programs the paper's TPU claims rest on only (step, decode loop, prefill 4096)
#   make gpu-compile      the same suite compiled for an L40S by JAX's CUDA plugin (results/compile-cuda-l40s)
#   make tpu-compile-codestral   Mamba-Codestral-7B's claims programs for TPU v6e (1 chip) and v5e (2 chips)
#   TPU_COMPILE_ARGS="--models mamba2-130m --resume"   extra arguments for experiments/tpu_compile.py
#   make tpu-compile-anchor   the paper's own package (mamba2-jax 1.1.2, make anchor-install) compiled for the same
#                         target and shapes, in its own process: its full-logits prefill at every suite length and
#                         its cached one-token decode (experiments/tpu_compile_anchor.py; results/tpu_compile_anchor/)
#   TPU_COMPILE_ANCHOR_ARGS="--phase claims --models mamba2-130m --resume"   its extra arguments

.PHONY: install-tpu install-cuda-plugin reproduce-tpu tpu-compile tpu-compile-claims tpu-compile-anchor

TPU_DIR ?= .tpu
LIBTPU_VERSION := 0.0.42.*
TPU_COMPILE_ARGS ?=
export MAMBA2_JAX_LIBTPU_DIR ?= $(abspath $(TPU_DIR))

$(TPU_DIR)/.installed: | $(STAMP)
	$(PY) -m pip install -q --no-deps --upgrade --target $(TPU_DIR) "libtpu==$(LIBTPU_VERSION)"
	test -d $(TPU_DIR)/libtpu
	touch $@

install-tpu: $(TPU_DIR)/.installed

CUDA_DIR ?= .cuda
CUDA_PLUGIN_VERSION := 0.10.2
export MAMBA2_JAX_CUDA_PLUGIN_DIR ?= $(abspath $(CUDA_DIR))

$(CUDA_DIR)/.installed: | $(STAMP)
	$(PY) -m pip install -q --no-deps --upgrade --target $(CUDA_DIR) \
	  "jax-cuda12-plugin==$(CUDA_PLUGIN_VERSION)" "jax-cuda12-pjrt==$(CUDA_PLUGIN_VERSION)" "flatbuffers==25.12.19"
	test -d $(CUDA_DIR)/jax_plugins/xla_cuda12
	touch $@

install-cuda-plugin: $(CUDA_DIR)/.installed

tpu-compile: $(STAMP) $(TPU_DIR)/.installed
	$(PY) experiments/tpu_compile.py $(TPU_COMPILE_ARGS)

tpu-compile-claims: $(STAMP) $(TPU_DIR)/.installed
	$(PY) experiments/tpu_compile.py --phase claims $(TPU_COMPILE_ARGS)

# mamba2-jax 1.1.2 (ANCHOR_DIR, mk/bench.mk's anchor-install) compiled for TPU v6e without a TPU, in its own
# process (it has this project's module name); --target cuda-l40s in TPU_COMPILE_ANCHOR_ARGS for the L40S
ANCHOR_DIR ?= .anchor
TPU_COMPILE_ANCHOR_ARGS ?=
tpu-compile-anchor: $(STAMP) $(TPU_DIR)/.installed $(ANCHOR_DIR)/.installed
	$(PY) experiments/tpu_compile_anchor.py --anchor-dir $(abspath $(ANCHOR_DIR)) $(TPU_COMPILE_ANCHOR_ARGS)

reproduce-tpu: $(STAMP) $(TPU_DIR)/.installed
	@backend=$$($(PY) -c "import jax; print(jax.default_backend())" 2>/dev/null); \
	if [ "$$backend" = tpu ]; then \
	  echo "[reproduce-tpu] TPU found: measuring profile=paper hardware=tpu_v6e, then compiling the same suite"; \
	  $(PY) experiments/throughput.py profile=paper hardware=tpu_v6e $(BENCH_ARGS) && \
	  $(PY) experiments/sweep.py profile=paper hardware=tpu_v6e $(BENCH_ARGS) && \
	  $(PY) experiments/cache_speedup.py profile=paper hardware=tpu_v6e $(BENCH_ARGS) && \
	  $(PY) experiments/tpu_compile.py $(TPU_COMPILE_ARGS); \
	else \
	  echo "[reproduce-tpu] no TPU here (JAX backend: $$backend): compiling the paper's TPU v6e suite with libtpu's"; \
	  echo "[reproduce-tpu] compiler from $(TPU_DIR)/ -- programs compiled for TPU v6e, not run; nothing is a measurement"; \
	  $(PY) experiments/tpu_compile.py $(TPU_COMPILE_ARGS); \
	fi

# GPU without a GPU: every program of the suite exported for CUDA (jax.export, serialized, custom calls
# listed), and the decode programs the L40S claim rests on compiled for an L40S by the CUDA plugin
.PHONY: gpu-export gpu-compile
gpu-export: $(STAMP) $(CUDA_DIR)/.installed
	$(PY) experiments/gpu_export.py $(GPU_EXPORT_ARGS)

gpu-compile: $(STAMP) $(CUDA_DIR)/.installed
	$(PY) experiments/tpu_compile.py --target cuda-l40s $(TPU_COMPILE_ARGS)

# Mamba-Codestral-7B (configs/mamba-codestral-7b, a sixth scale beside the paper's five), bfloat16: the claims'
# programs for one TPU v6e chip, and for TPU v5e on two chips (16 GiB per chip holds too little for one)
CODESTRAL := configs/mamba-codestral-7b/config.json
.PHONY: tpu-compile-codestral
tpu-compile-codestral: $(STAMP) $(TPU_DIR)/.installed
	$(PY) experiments/tpu_compile.py --models $(CODESTRAL) --target tpu-v6e --dtype bfloat16 --phase claims \
	  --out results/compile-codestral-tpu-v6e $(TPU_COMPILE_ARGS)
	$(PY) experiments/tpu_compile.py --models $(CODESTRAL) --target tpu-v5e --dtype bfloat16 --mesh data=1,model=2 \
	  --phase claims --out results/compile-codestral-tpu-v5e $(TPU_COMPILE_ARGS)
