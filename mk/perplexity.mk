# Issue 5: WikiText-103 perplexity, JAX vs reference backends (experiments/perplexity.py).
#   make perplexity                                    default model (tiny-wikitext if present, else synthetic), full test set
#   make perplexity MODELS="mamba2-130m mamba2-370m"   real checkpoints (state-spaces/<name>, or checkpoints/<name>)
#   make perplexity PPL_LIMIT=3                        smoke run: first 3 documents / first 3 strided windows
#   make perplexity-smoke                              offline smoke run (PPL_LIMIT defaults to 3), then the
#                                                      Triton reference on short windows (PPL_TRITON_SMOKE)
#   make perplexity-timing                             130m-shape CPU runtime, measured on a few windows, extrapolated
#   make perplexity PPL_ARGS="protocol=strided strided.stride=1024 backends=[jax_fp32,transformers]"
.PHONY: perplexity perplexity-smoke perplexity-timing perplexity-tables test-perplexity

PPL_SCRIPT := experiments/perplexity.py
PPL_LIMIT ?=
PPL_ARGS ?=
ppl_empty :=
ppl_space := $(ppl_empty) $(ppl_empty)
ppl_comma := ,
ppl_models = $(if $(strip $(MODELS)),models=[$(subst $(ppl_space),$(ppl_comma),$(strip $(MODELS)))])
ppl_limit = $(if $(strip $(PPL_LIMIT)),limit=$(strip $(PPL_LIMIT)))
# mamba_ssm_ref_cpu runs in .venv-ref (mk/parity.mk: make install-ref) when that fragment is present
ppl_ref_deps = $(REF_STAMP)
ppl_ref_py = $(if $(REF_PY),reference.python.mamba_ssm_ref_cpu=$(REF_PY))

perplexity: $(STAMP) $(ppl_ref_deps)
	$(PY) $(PPL_SCRIPT) $(ppl_models) $(ppl_limit) $(ppl_ref_py) $(PPL_ARGS)

# mamba_ssm_triton, interpreted on CPU (~0.1 s per token for the tiny model), against every backend on
# 4 strided windows of 256 tokens, with it as the reference of the Δ (on CUDA it runs compiled)
PPL_TRITON_SMOKE ?= protocol=strided strided.max_length=256 strided.stride=256 limit=4 tag=triton \
  'backends=[jax_fp32,mamba_ssm_ref_cpu,transformers,mamba_ssm_triton]' reference_backend=mamba_ssm_triton

perplexity-smoke: $(STAMP) $(ppl_ref_deps)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) $(PPL_SCRIPT) $(ppl_models) limit=$(or $(strip $(PPL_LIMIT)),3) \
	  $(ppl_ref_py) $(PPL_ARGS)
	$(if $(strip $(PPL_TRITON_SMOKE)),HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) $(PPL_SCRIPT) $(ppl_models) \
	  $(PPL_TRITON_SMOKE) $(ppl_ref_py) $(PPL_ARGS))

perplexity-timing: $(STAMP)
	$(PY) $(PPL_SCRIPT) mode=timing $(PPL_ARGS)

perplexity-tables: $(STAMP)
	$(PY) -m paper.make_tables

test-perplexity: $(STAMP)
	$(PY) -m pytest -q tests/test_perplexity.py tests/test_data.py
