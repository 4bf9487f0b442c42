# llama.cpp (issue 20): a CPU peer in `make bench-peers` and a fifth implementation in parity / perplexity.
#   make llama-cpp        download the llama-cpp-python sdist once (by its PyPI URL, sha256 checked), build the
#                         library (libllama: all that the tests, parity, perplexity and the C-API peer load)
#                         into $(LLAMA_DIR)/build (ignored, cached); writes build-info.json
#   make llama-tools      llama.cpp's own llama-bench, llama-batched-bench and llama-perplexity in the same
#                         build (not part of `make test`; `make bench-peers` times llama.cpp with them);
#                         writes tools-build-info.json
#   make llama-cpp-try    the same, but a failure is recorded and does not stop the caller (make test, bench-peers)
#   make llama-cpp-clean  remove the build (keeps the downloaded sdist)
# Nothing here touches .venv: the binaries and libllama live in $(LLAMA_DIR); the llama_cpp Python binding is
# used straight from the unpacked sdist (pure ctypes) with LLAMA_CPP_LIB_PATH pointing at the build.
# If there is no compiler or no network the target fails; the consumers (peers, parity, tests) then skip
# llama.cpp with the reason, read from $(LLAMA_DIR)/build-failed.txt.

.PHONY: llama-cpp llama-cpp-try llama-cpp-clean llama-tools llama-tools-try

LLAMA_DIR ?= .llama
LLAMA_PY_VERSION := 0.3.36
LLAMA_SDIST := llama_cpp_python-$(LLAMA_PY_VERSION).tar.gz
LLAMA_SDIST_SHA256 := 832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
LLAMA_SRC := $(LLAMA_DIR)/src/llama_cpp_python-$(LLAMA_PY_VERSION)
LLAMA_CPP_SRC := $(LLAMA_SRC)/vendor/llama.cpp
LLAMA_BUILD := $(LLAMA_DIR)/build
LLAMA_JOBS ?= $(shell nproc 2>/dev/null || echo 2)
LLAMA_CMAKE_FLAGS := -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DGGML_NATIVE=ON \
	-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DBUILD_SHARED_LIBS=ON
LLAMA_TARGETS := llama
LLAMA_TOOL_TARGETS := llama-bench llama-batched-bench llama-perplexity

llama_fail = { mkdir -p $(LLAMA_BUILD); echo "$(1)" > $(LLAMA_BUILD)/build-failed.txt; echo "llama.cpp: $(1)" >&2; exit 1; }

# The pinned sdist is fetched straight from PyPI's file store by its URL (no `pip download`: without pip's
# cache that prepares the sdist's metadata in a build-isolation env, ~8 min on 2 cores) and its sha256 is
# checked.  Offline: put the file in $(LLAMA_DIR)/dl/ yourself, or pass LLAMA_SDIST_URL=file:///path/to/$(LLAMA_SDIST)
# (or a mirror's URL); the sha256 is checked either way.
LLAMA_SDIST_URL ?= https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/$(LLAMA_SDIST)
LLAMA_FETCH_TIMEOUT ?= 60
llama_fetch = import sys, urllib.request, shutil; \
	r = urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[3])); shutil.copyfileobj(r, open(sys.argv[2], "wb"))

$(LLAMA_DIR)/dl/$(LLAMA_SDIST):
	rm -rf $(LLAMA_DIR)/dl.tmp && mkdir -p $(LLAMA_DIR)/dl $(LLAMA_DIR)/dl.tmp
	$(PY_SYS) -c '$(llama_fetch)' "$(LLAMA_SDIST_URL)" $(LLAMA_DIR)/dl.tmp/$(LLAMA_SDIST) $(LLAMA_FETCH_TIMEOUT) \
		2>$(LLAMA_DIR)/dl.tmp/fetch.err || { tail -n 1 $(LLAMA_DIR)/dl.tmp/fetch.err >&2; $(call llama_fail,could not fetch $(LLAMA_SDIST_URL) (offline? put $(LLAMA_SDIST) in $(LLAMA_DIR)/dl/ or pass LLAMA_SDIST_URL=file:///path/to/$(LLAMA_SDIST))); }
	echo "$(LLAMA_SDIST_SHA256)  $(LLAMA_DIR)/dl.tmp/$(LLAMA_SDIST)" | sha256sum -c --quiet \
		|| $(call llama_fail,$(LLAMA_SDIST) from $(LLAMA_SDIST_URL) does not have the expected sha256 $(LLAMA_SDIST_SHA256))
	mv $(LLAMA_DIR)/dl.tmp/$(LLAMA_SDIST) $@ && rm -rf $(LLAMA_DIR)/dl.tmp

$(LLAMA_SRC)/.unpacked: $(LLAMA_DIR)/dl/$(LLAMA_SDIST)
	rm -rf $(LLAMA_SRC) && mkdir -p $(LLAMA_DIR)/src
	tar xzf $< -C $(LLAMA_DIR)/src || $(call llama_fail,could not unpack $<)
	touch $@

# The build runs through a script so that the flags, the timing and the CPU features end up in build-info.json.
$(LLAMA_BUILD)/build-info.json: $(LLAMA_SRC)/.unpacked mk/llama.mk experiments/peers_runners/llama_build.py
	$(PY_SYS) experiments/peers_runners/llama_build.py --src $(LLAMA_CPP_SRC) --build $(LLAMA_BUILD) \
		--sdist $(LLAMA_DIR)/dl/$(LLAMA_SDIST) --sdist-sha256 $(LLAMA_SDIST_SHA256) --jobs $(LLAMA_JOBS) \
		--targets "$(LLAMA_TARGETS)" -- $(LLAMA_CMAKE_FLAGS)

llama-cpp: $(LLAMA_BUILD)/build-info.json

$(LLAMA_BUILD)/tools-build-info.json: $(LLAMA_BUILD)/build-info.json
	$(PY_SYS) experiments/peers_runners/llama_build.py --src $(LLAMA_CPP_SRC) --build $(LLAMA_BUILD) \
		--sdist $(LLAMA_DIR)/dl/$(LLAMA_SDIST) --sdist-sha256 $(LLAMA_SDIST_SHA256) --jobs $(LLAMA_JOBS) \
		--targets "$(LLAMA_TOOL_TARGETS)" --record tools-build-info.json --binary bin/llama-bench \
		-- $(LLAMA_CMAKE_FLAGS)

llama-tools: $(LLAMA_BUILD)/tools-build-info.json

# bench-peers measures llama.cpp with these tools (issue 28); a failed build does not stop it: the tools peer
# then fails with "<tool> not built in <dir> (make llama-tools)" (peers_runners/llama_tools.py) and the
# C-API runner still runs
llama-tools-try: llama-cpp-try
	@$(MAKE) --no-print-directory llama-tools || echo "llama.cpp tools: build failed, continuing without them"

# The same, but a failure (no compiler, no network) does not stop the caller: it is recorded in
# $(LLAMA_BUILD)/build-failed.txt and the llama.cpp peer / parity backend / tests skip with that reason.
# Built once; later calls find build-info.json and do nothing.
llama-cpp-try:
	@$(MAKE) --no-print-directory llama-cpp || echo "llama.cpp: build failed, continuing without it (see $(LLAMA_BUILD)/build-failed.txt)"

# CI (`make test` on a clean clone) builds libllama first, so the integration tests run against it
test-setup-parts: llama-cpp-try

llama-cpp-clean:
	rm -rf $(LLAMA_BUILD)
