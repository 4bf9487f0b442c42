# Issue 5: WikiText-103 perplexity, JAX vs reference backends (experiments/perplexity.py).
#   make perplexity                                    default model (tiny-wikitext if present, else synthetic), full test set
#   make perplexity MODELS="mamba2-130m mamba2-370m"   real checkpoints (state-spaces/<name>, or checkpoints/<name>)
#   make perplexity PPL_LIMIT=3                        smoke run: first 3 documents / first 3 strided windows
#   make perplexity-smoke                              offline smoke run (PPL_LIMIT defaults to 3; + llama.cpp), then the
#                                                      Triton reference on short windows (PPL_TRITON_SMOKE)
#   make perplexity-timing                             130m-shape CPU runtime, measured on a few windows, extrapolated
#   make perplexity PPL_ARGS="protocol=strided strided.stride=1024 backends=[jax_fp32,transformers]"
#   make perplexity-state-dtype                        a 16-bit SSM state vs the float32 state (issue 28): the embedded
#                                                      model on the whole test set, the 130m shape on PPL_STATE_130M_LIMIT
#   make state-dtype-fidelity                          greedy agreement and decode logits of a 16-bit state (experiments/state_dtype.py)
.PHONY: perplexity perplexity-smoke perplexity-timing perplexity-tables test-perplexity perplexity-state-dtype \
  state-dtype-fidelity

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

# the smoke run adds llama.cpp (mk/llama.mk; skipped as "unavailable", with the reason, if it cannot be built)
PPL_SMOKE_BACKENDS ?= 'backends=[jax_fp32,jax_bf16,mamba_ssm_ref_cpu,transformers,llama_cpp]'

perplexity-smoke: $(STAMP) $(ppl_ref_deps) llama-cpp-try
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) $(PPL_SCRIPT) $(ppl_models) limit=$(or $(strip $(PPL_LIMIT)),3) \
	  $(PPL_SMOKE_BACKENDS) $(ppl_ref_py) $(PPL_ARGS)
	$(if $(strip $(PPL_TRITON_SMOKE)),HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) $(PPL_SCRIPT) $(ppl_models) \
	  $(PPL_TRITON_SMOKE) $(ppl_ref_py) $(PPL_ARGS))

perplexity-timing: $(STAMP)
	$(PY) $(PPL_SCRIPT) mode=timing $(PPL_ARGS)

# The state dtype reaches a score where the state is stored: every backend scores each window as prefill
# calls of 256 tokens (the server's --prefill-chunk), the cache carried between calls in its state dtype.
PPL_STATE_BACKENDS := backends=[jax_fp32,jax_fp32_state_bf16,jax_fp32_state_fp16] reference_backend=jax_fp32 \
  tag=state_dtype jax.state_chunk=256
# the 130m shape (random init): ~5 s per 2048-token window and backend on 2 cores, so a prefix of each protocol
PPL_STATE_130M_LIMIT ?= 24
perplexity-state-dtype: $(STAMP)
	$(PY) $(PPL_SCRIPT) 'models=[tiny-wikitext]' $(PPL_STATE_BACKENDS) $(PPL_ARGS)
	$(PY) $(PPL_SCRIPT) 'models=[synthetic]' synthetic.d_model=768 synthetic.n_layer=24 synthetic.d_state=128 \
	  synthetic.headdim=64 synthetic.chunk_size=256 limit=$(PPL_STATE_130M_LIMIT) $(PPL_STATE_BACKENDS) $(PPL_ARGS)

state-dtype-fidelity: $(STAMP)
	$(PY) experiments/state_dtype.py $(STATE_DTYPE_ARGS)

perplexity-tables: $(STAMP)
	$(PY) -m paper.make_tables

test-perplexity: $(STAMP)
	$(PY) -m pytest -q tests/test_perplexity.py tests/test_data.py
