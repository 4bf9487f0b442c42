# Issue 15: robustness - fuzzed inputs and injected faults, with counts.  Included by the Makefile.
#   make fuzz                         the longer budget: every tests/test_robust_*.py property with
#                                     FUZZ_EXAMPLES examples, 1M-token step-vs-prefill stream, more kill
#                                     seeds, the slow parity kill test; writes $(FUZZ_OUT)/summary.{json,md}
#   make fuzz FUZZ_EXAMPLES=2000      a bigger budget (CI runs the same tests with a small one: make test)
#   make test-robust                  the CI budget only, no summary
# Hypothesis keeps its example database in .cache/hypothesis (failures found once are replayed first).
.PHONY: fuzz test-robust

FUZZ_EXAMPLES ?= 400
FUZZ_OUT ?= results/robustness
FUZZ_TESTS := $(sort $(wildcard tests/test_robust_*.py))

fuzz: $(STAMP)
	MAMBA2_JAX_FUZZ=1 MAMBA2_JAX_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) MAMBA2_JAX_ROBUSTNESS_OUT=$(abspath $(FUZZ_OUT)) \
	  $(PY) -m pytest -q -m "" -W ignore::UserWarning $(FUZZ_TESTS)

test-robust: $(STAMP)
	$(PY) -m pytest -q $(FUZZ_TESTS)
