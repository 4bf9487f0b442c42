# Issue 22: every committed result from one command, and an audit of what is stale.  Included by the Makefile.
#   make regenerate           every step of paper/results_map.yaml in order (reproduce, parity, oracle, perplexity
#                             synthetic + timing, train-tiny eval, sharding, fuzz, bench, decode formulations,
#                             peers at 1024 and 4096, figures + paper); refuses to start from a tree whose code
#                             differs from HEAD.  Long (~1.5 h on 2 cores): run it on an otherwise idle machine.
#   make regenerate-plan      the plan with a time estimate per step (last measured, else the map's estimate)
#   make regenerate REGEN_ONLY=parity,oracle   some steps;  REGEN_SKIP=fuzz   all but some;  ALLOW_DIRTY=1
#   make results-map          each committed file under results/ -> the step and command that produce it
#   make results-audit        per result file: git sha, dirty, machine, date, numerics code == HEAD's (Markdown)
#   make results-audit AUDIT_ARGS=--strict    exit 1 if a result is stale, dirty or from another machine
#   make oracle               results/oracle/errors.{json,csv} (experiments/oracle_errors.py)
#   make sharding-memory      results/sharding/memory-float32-on-cpu.* (experiments/sharding_memory.py)
.PHONY: regenerate regenerate-plan results-map results-audit oracle sharding-memory

REGEN_ONLY ?=
REGEN_SKIP ?=
AUDIT_ARGS ?=
regen_flags = --only "$(REGEN_ONLY)" --skip "$(REGEN_SKIP)" $(if $(filter 1 true yes,$(ALLOW_DIRTY)),--allow-dirty)

regenerate: $(STAMP)
	MAKE="$(MAKE)" $(PY) -m paper.results_map --regenerate $(regen_flags)

regenerate-plan: $(STAMP)
	MAKE="$(MAKE)" $(PY) -m paper.results_map --plan $(regen_flags)

results-map: $(STAMP)
	$(PY) -m paper.results_map

results-audit: $(STAMP)
	$(PY) -m paper.results_audit $(AUDIT_ARGS)

oracle: $(STAMP)
	$(PY) experiments/oracle_errors.py

sharding-memory: $(STAMP)
	$(PY) experiments/sharding_memory.py
