# Issue 8: figures, tables, the paper and the one-command reproduction.  Included by the Makefile.
#   make reproduce            the whole chain at the scale this machine's JAX backend supports (paper/reproduce.py):
#                             setup, parity, perplexity, throughput, sweep, cache speedup, figures + paper
#   make figures              figures/out/*.{png,pdf,caption.md} from the results in results/ (no recomputation;
#                             each figure is python -m figures.figN_... from the repository root)
#   make paper                paper/tables/*.{tex,md} from results/ (python -m paper.make_tables), the
#                             numbers in the docs (make docs), then paper/main.pdf if LaTeX is installed
#   make docs                 the generated numbers and tables in README.md, reference/README.md and
#                             docs/*.md from results/ and paper/reproduce_summary.json
#                             (python -m paper.doc_numbers; registry paper/doc_numbers.yaml)
#   make reproduce REPRO_PPL_LIMIT=         perplexity over the full test set instead of a 3-document smoke run
#   make reproduce REPRO_PROFILE=cpu_bench  benchmark profile (auto: cpu_smoke on CPU, paper on TPU/GPU)
#   make reproduce REPRO_TRITON=all         the interpreted Triton parity backend on every model of
#                             triton.cpu_models, as `make parity` (default: random-mamba2-130m-2l only,
#                             ~2 min instead of ~16: keeps a cold run within 30 min on 2 cores)
#   At the end it lists the committed results it rewrote and the targets that produce the rest
#   (paper/results_map.yaml; `make regenerate` runs them all).
#   make figures FIG_ARGS=--strict          a figure whose results are missing is an error, not a skip
# Variables of the other fragments (MODEL, BACKENDS, MODELS, BENCH_ARGS, PARITY_ARGS, PPL_ARGS) pass through.

.PHONY: reproduce figures paper paper-tables paper-pdf docs

REPRO_PROFILE ?= auto
REPRO_PPL_LIMIT ?= 3
REPRO_ARGS ?=
REPRO_TRITON ?= random-mamba2-130m-2l
FIG_ARGS ?=
FIGURE_MODULES := $(basename $(notdir $(sort $(wildcard figures/fig[0-9]*.py))))
LATEXMK := $(shell command -v latexmk 2>/dev/null)
PDFLATEX := $(shell command -v pdflatex 2>/dev/null)

reproduce: $(STAMP)
	MAKE="$(MAKE)" $(PY) -m paper.reproduce --python $(PY) --profile "$(REPRO_PROFILE)" \
	  --ppl-limit "$(REPRO_PPL_LIMIT)" --triton-models "$(REPRO_TRITON)" $(REPRO_ARGS)

figures: $(STAMP)
	@rc=0; for f in $(FIGURE_MODULES); do $(PY) -m figures.$$f $(FIG_ARGS) || rc=1; done; exit $$rc

paper-tables: $(STAMP)
	$(PY) -m paper.make_tables

docs: $(STAMP)
	$(PY) -m paper.doc_numbers

# SOURCE_DATE_EPOCH + FORCE_SOURCE_DATE: the PDF's dates and ID are fixed, so the same inputs give the same
# bytes; paper/main.inputs.json then records what it was built from (the results audit compares it).
paper: paper-tables docs
	@if [ -n "$(LATEXMK)" ]; then \
	  (cd paper && SOURCE_DATE_EPOCH=0 FORCE_SOURCE_DATE=1 latexmk -pdf -interaction=nonstopmode -halt-on-error \
	    main.tex >/dev/null) && echo "[paper] wrote paper/main.pdf" \
	    || { echo "[paper] LaTeX failed: see paper/main.log"; exit 1; }; \
	  $(PY) -m paper.pdf_inputs --write; \
	elif [ -n "$(PDFLATEX)" ]; then \
	  (cd paper && for i in 1 2; do SOURCE_DATE_EPOCH=0 FORCE_SOURCE_DATE=1 pdflatex -interaction=nonstopmode \
	    -halt-on-error main.tex >/dev/null || exit 1; done) && echo "[paper] wrote paper/main.pdf" \
	    || { echo "[paper] LaTeX failed: see paper/main.log"; exit 1; }; \
	  $(PY) -m paper.pdf_inputs --write; \
	else \
	  echo "[paper] tables written to paper/tables/ (LaTeX and Markdown); no PDF: pdflatex/latexmk not found."; \
	  echo "[paper] To build paper/main.pdf install a LaTeX toolchain, then run 'make paper' again:"; \
	  echo "[paper]   Debian/Ubuntu: sudo apt-get install texlive-latex-base texlive-latex-recommended texlive-fonts-recommended latexmk"; \
	  echo "[paper]   others (Fedora, macOS): docs/artifact_evaluation.md, Requirements"; \
	  echo "[paper]   the committed paper/main.pdf stays as it is (make results-audit says whether it is current)"; \
	fi
