"""Reference runners for the parity experiment (PyTorch only; no JAX, no mamba2_jax at import).

Backends, each run in its own process:

* ``mamba_ssm_ref_cpu`` -- a model built from mamba_ssm v2.2.2's pure-PyTorch ``*_ref`` functions
  (reference/ref_cpu.py), run with ``.venv-ref`` (``make install-ref``);
* ``transformers``      -- HF ``Mamba2ForCausalLM`` torch path (reference/hf_backend.py), run with
  the project venv, where mamba_ssm is not importable;
* ``mamba_ssm_triton``  -- mamba_ssm ``MambaLMHeadModel`` on CUDA (reference/triton_backend.py);
* ``llama_cpp``         -- llama.cpp's Mamba-2 on a GGUF f32 conversion, through its C API
  (reference/llama_backend.py; ``make llama-cpp``), with the project venv.

Entry points: ``python -m reference.golden`` (golden files) and ``python -m reference.score``
(per-window log-likelihoods).  See reference/README.md.
"""

BACKENDS = ("mamba_ssm_ref_cpu", "transformers", "mamba_ssm_triton", "llama_cpp")
