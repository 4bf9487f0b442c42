# Benchmarks (issues 3 and 6): throughput / sweep / cache_speedup / peers / the CPU benchmark.
#   make throughput-smoke     CPU smoke suite: throughput + sweep + cache_speedup, 130m and 370m, short lengths
#   make throughput | sweep | cache-speedup     one experiment (BENCH_PROFILE, default cpu_smoke)
#   make bench                issue-3 CPU benchmark, 130m shape (results/bench/); with the batch and length curves
#   make decode-formulations  decode read-out / layout / XLA-flag and 16-bit GEMV formulations, one alternating run
#   make bench-peers          this project vs mamba2-jax 1.1.2 vs HF transformers vs llama.cpp (mk/llama.mk: its
#                             own llama-bench / llama-batched-bench, and the C-API runner for calibration), CPU,
#                             one alternating run
#   make reproduce-tpu        see mk/compile.mk: on a TPU the paper's TPU v6e runs; elsewhere the suite compiled for v6e
#   BENCH_ARGS="models=[mamba2-130m] reps=3"   extra Hydra overrides for any of them
# Results: results/<experiment>/<run>.json + .csv, run = <profile>-<hardware profile>[-on-<device>].

.PHONY: decode-split nan-check-cost throughput throughput-smoke bench-smoke sweep cache-speedup bench decode-formulations bench-peers anchor-install

BENCH_PROFILE ?= cpu_smoke
BENCH_ARGS ?=
ANCHOR_DIR ?= .anchor
ANCHOR_VERSION := 1.1.2

throughput: $(STAMP)
	$(PY) experiments/throughput.py profile=$(BENCH_PROFILE) $(BENCH_ARGS)

sweep: $(STAMP)
	$(PY) experiments/sweep.py profile=$(BENCH_PROFILE) $(BENCH_ARGS)

cache-speedup: $(STAMP)
	$(PY) experiments/cache_speedup.py profile=$(BENCH_PROFILE) $(BENCH_ARGS)

throughput-smoke: $(STAMP)
	$(PY) experiments/throughput.py profile=cpu_smoke $(BENCH_ARGS)
	$(PY) experiments/sweep.py profile=cpu_smoke $(BENCH_ARGS)
	$(PY) experiments/cache_speedup.py profile=cpu_smoke $(BENCH_ARGS)

bench-smoke: throughput-smoke

bench: $(STAMP)
	$(PY) experiments/bench.py profile=cpu_bench $(BENCH_ARGS)

decode-formulations: $(STAMP)
	$(PY) experiments/decode_formulations.py

# in_proj fused vs in parts and the LM head as 1/2/4 dots, with the stream probe in the same rounds
decode-split: $(STAMP)
	$(PY) experiments/decode_split.py --rounds 9

# the cost of the non-finite checks: decode with and without (b=1 and 16), and the loading check
nan-check-cost: $(STAMP)
	$(PY) experiments/nan_check_cost.py --rounds 11
	$(PY) experiments/nan_check_cost.py --batches 1 --rounds 15 --load-models --run cpu_bench-cpu-decode-b1

# mamba2-jax 1.1.2 has the same module name as this project, so it lives in its own --target dir and
# its peer runs with PYTHONPATH=$(ANCHOR_DIR).  --no-deps: its requirements (jax, jaxlib, flax, optax)
# are the project venv's, checked by check_anchor.py, so nothing in .venv is replaced.
$(ANCHOR_DIR)/.installed: | $(STAMP)
	$(PY) -m pip install -q --no-deps --upgrade --target $(ANCHOR_DIR) "mamba2-jax==$(ANCHOR_VERSION)"
	$(PY) experiments/peers_runners/check_anchor.py $(ANCHOR_DIR)
	touch $@

anchor-install: $(ANCHOR_DIR)/.installed

bench-peers: $(STAMP) $(ANCHOR_DIR)/.installed llama-cpp-try llama-tools-try
	$(PY) experiments/peers.py profile=cpu_bench peers.anchor_dir=$(ANCHOR_DIR) $(BENCH_ARGS)
