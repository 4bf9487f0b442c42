# Compiling for TPU without a TPU (issue 19): `mamba2-jax compile` and the paper's TPU suite.
#   make install-tpu      libtpu==0.0.42.* (the version jax 0.10.2's [tpu] extra pins) into $(TPU_DIR)/,
#                         its own --target directory: never into .venv and never on the default import
#                         path; `mamba2-jax compile` adds it to sys.path for a TPU target only
#   make reproduce-tpu    on a TPU: the paper's TPU v6e runs (throughput, sweep, cache speedup), then the
#                         same suite compiled; elsewhere: the suite compiled for TPU v6e by libtpu's compiler,
#                         nothing run (results/tpu_compile/<model>.json; experiments/tpu_compile.py)
#   make tpu-compile-claims   the programs the paper's TPU claims rest on only (step, decode loop, prefill 4096)
#   TPU_COMPILE_ARGS="--models mamba2-130m --resume"   extra arguments for experiments/tpu_compile.py

.PHONY: install-tpu reproduce-tpu tpu-compile tpu-compile-claims

TPU_DIR ?= .tpu
LIBTPU_VERSION := 0.0.42.*
TPU_COMPILE_ARGS ?=
export MAMBA2_JAX_LIBTPU_DIR ?= $(abspath $(TPU_DIR))

$(TPU_DIR)/.installed: | $(STAMP)
	$(PY) -m pip install -q --no-deps --upgrade --target $(TPU_DIR) "libtpu==$(LIBTPU_VERSION)"
	test -d $(TPU_DIR)/libtpu
	touch $@

install-tpu: $(TPU_DIR)/.installed

tpu-compile: $(STAMP) $(TPU_DIR)/.installed
	$(PY) experiments/tpu_compile.py $(TPU_COMPILE_ARGS)

tpu-compile-claims: $(STAMP) $(TPU_DIR)/.installed
	$(PY) experiments/tpu_compile.py --phase claims $(TPU_COMPILE_ARGS)

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
