"""``llama_cpp``: llama.cpp's own Mamba-2 (ggml graph, ``ggml_ssm_scan``), fp32 GGUF, CPU.

A fifth implementation, written in C++ independently of mamba_ssm, HF and this project.  The
checkpoint is converted in this process's temporary directory with ``reference.llama_gguf``
(``mamba2-jax convert --format hf`` → GPT-NeoX tokenizer files → llama.cpp's
``convert_hf_to_gguf.py --outtype f32``) and run through the C API (``reference.llama_cpp_capi``:
llama-cpp-python's ctypes declarations over the ``libllama`` that ``make llama-cpp`` built).

* prefill: one ``llama_decode`` of the prompt with logits requested at every position;
* greedy: prefill, then one ``llama_decode`` per token (llama.cpp's recurrent step), the next token
  the argmax over the **real** vocabulary (the GGUF vocabulary is padded with ``[PAD…]`` tokens to
  the padded size; their logits are never chosen).  The recorded step rows are the real-vocabulary
  logits; parity compares them with this project's greedy over the real vocabulary too;
* no per-layer hidden states (llama.cpp does not expose the residual stream through its API):
  parity compares logits and greedy tokens only;
* scoring (perplexity): every window on a cleared state, all positions' logits.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch


class LlamaAdapter:
    greedy_vocab = "real"

    def __init__(self, llm, vocab_size: int):
        self.llm, self.V = llm, int(vocab_size)
        self._steps: list[float] = []

    def prefill(self, ids):
        self.llm.clear()
        lg = self.llm.prefill(ids[0].tolist(), last_only=False)
        return torch.from_numpy(np.array(lg))[None], None, None

    def greedy(self, ids, n_new: int):
        import time

        llm, V = self.llm, self.V
        llm.clear()
        row = np.array(llm.prefill(ids[0].tolist(), last_only=True)[-1][:V])
        rows = [row]
        for _ in range(n_new - 1):
            t0 = time.perf_counter()
            row = np.array(llm.step([int(np.argmax(rows[-1]))])[0][:V])
            self._steps.append(time.perf_counter() - t0)
            rows.append(row)
        return rows

    def timing_summary(self) -> dict:
        return {"decode_step_seconds_median": float(np.median(self._steps)) if self._steps else None,
                "timer": "time.perf_counter around each llama_decode of one token"}

    def logits(self, ids):
        out = []
        for r in range(ids.shape[0]):
            self.llm.clear()
            out.append(np.array(self.llm.prefill(ids[r].tolist(), last_only=False)))
        return torch.from_numpy(np.stack(out))


def load(model_dir, device: str = "cpu", threads: int | None = None):
    from .common import ReferenceError_
    from .llama_cpp_capi import LlamaCpp, build_status
    from .llama_gguf import ConversionError, convert

    if device != "cpu":
        raise ReferenceError_("--backend llama_cpp runs on CPU only")
    ok, info = build_status()
    if not ok:
        raise ReferenceError_(str(info))
    model_dir = Path(model_dir)
    import json

    # the real vocabulary: state-spaces configs give it as vocab_size (HF configs may give the padded one)
    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    tmp = Path(tempfile.mkdtemp(prefix="llama-gguf-"))
    try:
        try:
            gguf = convert(model_dir, tmp, ["f32"])["f32"]
        except ConversionError as e:
            raise ReferenceError_(str(e)) from None
        llm = LlamaCpp(gguf, n_threads=threads or os.cpu_count(), n_batch=2048, n_seq=1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the model is in memory (no mmap of a deleted file is read again)
    meta = {"compute_dtype": "float32", "gguf_type": "f32", "source_format": "GGUF f32 via reference.llama_gguf",
            "llama_cpp_commit": info.get("llama_cpp_commit"), "sdist": info.get("sdist"),
            "cmake_flags": info.get("cmake_flags"), "cpu_features": info.get("cpu_features"),
            "settings": {k: v for k, v in llm.settings().items() if k != "system_info"},
            "system_info": llm.settings()["system_info"], "greedy_vocab": "real", "vocab_size": int(vocab),
            "hidden_states": "not available (llama.cpp API): logits and greedy tokens only",
            "device_label": "cpu"}
    return LlamaAdapter(llm, vocab), meta
