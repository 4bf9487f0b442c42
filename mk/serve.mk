# Serving (issue 27, section 7): the benchmark of `mamba2-jax serve` against llama.cpp's llama-server
# and our static-batch Generator, all driven by one async OpenAI client and one request trace.
#   make llama-server         build llama.cpp's llama-server into $(LLAMA_DIR)/build (after `make llama-cpp`,
#                             reusing its ggml / libllama objects); not part of `make test`
#   make bench-serve          the full profile (results/serve/full-<hardware>.json/.csv/.md); ~30 min on 2 cores
#   make bench-serve-quick    the quick profile (a smoke run, small counts)
#   SERVE_BENCH_ARGS="systems=[ours] workloads=[concurrency]"   extra Hydra overrides

.PHONY: llama-server bench-serve bench-serve-quick

SERVE_BENCH_ARGS ?=
LLAMA_SERVER_CMAKE_FLAGS = $(subst -DLLAMA_BUILD_SERVER=OFF,-DLLAMA_BUILD_SERVER=ON,$(LLAMA_CMAKE_FLAGS))

$(LLAMA_BUILD)/server-build-info.json: $(LLAMA_BUILD)/build-info.json
	$(PY_SYS) experiments/peers_runners/llama_build.py --src $(LLAMA_CPP_SRC) --build $(LLAMA_BUILD) \
		--sdist $(LLAMA_DIR)/dl/$(LLAMA_SDIST) --sdist-sha256 $(LLAMA_SDIST_SHA256) --jobs $(LLAMA_JOBS) \
		--targets llama-server --record server-build-info.json --binary bin/llama-server \
		-- $(LLAMA_SERVER_CMAKE_FLAGS)

llama-server: $(LLAMA_BUILD)/server-build-info.json

bench-serve: $(STAMP)
	-@$(MAKE) --no-print-directory llama-server || echo "llama-server: build failed; the benchmark skips it"
	$(PY) experiments/serve_bench.py serve_profile=full serve.llama_server.dir=$(abspath $(LLAMA_DIR)) $(SERVE_BENCH_ARGS)

bench-serve-quick: $(STAMP)
	-@$(MAKE) --no-print-directory llama-server || echo "llama-server: build failed; the benchmark skips it"
	$(PY) experiments/serve_bench.py serve_profile=quick serve.llama_server.dir=$(abspath $(LLAMA_DIR)) $(SERVE_BENCH_ARGS)
