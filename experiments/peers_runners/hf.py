"""Peer runner: HF transformers ``Mamba2ForCausalLM`` (torch, fp32, CPU, eager).

``mamba_ssm`` and ``causal_conv1d`` are made unimportable before transformers is imported: where
they are importable, transformers swaps in their Triton/CUDA kernels, which fail on CPU.  So this
is the pure-torch path (``torch_forward`` chunked scan for prefill, the recurrent update for
cached steps).

* prefill: ``model(ids)`` (full logits) or ``model(ids, logits_to_keep=1)`` (last position);
* decode: ``model(token, cache_params=cache, use_cache=True)`` in a Python loop with greedy argmax
  (over the real vocabulary, as every peer);
* recompute: ``model(ids, logits_to_keep=1)`` over the whole prefix.
"""

from __future__ import annotations

import importlib.abc
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _protocol as P

BLOCKED = ("mamba_ssm", "causal_conv1d")


class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked in the HF peer (CPU torch path only)")
        return None


sys.meta_path.insert(0, _Block())
os.environ.setdefault("HF_HUB_OFFLINE", "1")

S: dict = {}


def setup(weights_dir, prefill_lengths, prefill_modes, decode_prompt, decode_tokens, recompute_context, seed, dump,
          check_tokens, vocab, torch_threads=None, **_):
    import time

    import numpy as np
    import torch
    from transformers import Mamba2ForCausalLM

    if torch_threads:
        torch.set_num_threads(int(torch_threads))
    torch.set_grad_enabled(False)
    t0 = time.perf_counter()
    model = Mamba2ForCausalLM.from_pretrained(weights_dir, dtype=torch.float32).eval()
    load_s = time.perf_counter() - t0
    V = int(vocab)  # real (unpadded) vocabulary: the same ids in every peer
    S["ids"] = {int(L): torch.from_numpy(P.random_ids(1, int(L), V, seed).astype(np.int64)) for L in prefill_lengths}
    ids = S["ids"][int(prefill_lengths[0])]
    rids = torch.from_numpy(P.random_ids(1, recompute_context, V, seed).astype(np.int64))
    prompt = torch.from_numpy(P.random_ids(1, decode_prompt, V, seed).astype(np.int64))
    with torch.inference_mode():
        t0 = time.perf_counter()
        lg = model(ids).logits
        pf_first = time.perf_counter() - t0
        np.save(dump, lg[0, -1].float().numpy())
        out = model(prompt, use_cache=True, logits_to_keep=1)
        cache = out.cache_params
        tok = out.logits[:, -1, :V].argmax(-1)
        toks = []
        for _ in range(check_tokens):
            toks.append(int(tok[0]))
            o = model(tok[:, None], cache_params=cache, use_cache=True)
            cache, tok = o.cache_params, o.logits[:, -1, :V].argmax(-1)
    blocked = [m for m in BLOCKED if m in sys.modules]
    S.update(model=model, rids=rids, cache=cache, tok=tok, V=V)
    meta = {"variant": "fp32", "lower_precision": False}
    tasks = [{"key": f"prefill_{m}_{L}", "cmd": "prefill", "args": {"length": int(L), "mode": m}, "kind": "prefill",
              "tokens": int(L), "length": int(L), "logits": m, **meta} for L in prefill_lengths for m in prefill_modes]
    tasks += [{"key": "decode", "cmd": "decode", "args": {"tokens": int(decode_tokens)}, "kind": "decode",
               "tokens": int(decode_tokens), "batch": 1, "context": int(decode_prompt), **meta},
              {"key": "recompute", "cmd": "recompute", "args": {}, "kind": "recompute", "tokens": 1,
               "length": int(recompute_context), "logits": "last", **meta}]
    return {"load_s": load_s, "compile_s": {}, "first_run_s": {"prefill": pf_first}, "check_tokens": toks,
            "tasks": tasks,
            "versions": P.versions("torch", "transformers"), "torch_threads": torch.get_num_threads(),
            "kernels_loaded": blocked, "module": sys.modules["transformers"].__file__}


def prefill(length, mode="full", **_):
    import torch

    ids = S["ids"][int(length)]
    keep = {"logits_to_keep": 1} if mode == "last" else {}
    with torch.inference_mode():
        return {"seconds": P.timed(lambda: S["model"](ids, **keep).logits)}


def recompute(**_):
    import torch

    with torch.inference_mode():
        return {"seconds": P.timed(lambda: S["model"](S["rids"], logits_to_keep=1).logits)}


def decode(tokens, **_):
    import torch

    model, V = S["model"], S["V"]
    c, t = S["cache"], S["tok"]

    def loop():
        nonlocal c, t
        for _ in range(tokens):
            o = model(t[:, None], cache_params=c, use_cache=True)
            c, t = o.cache_params, o.logits[:, -1, :V].argmax(-1)

    with torch.inference_mode():
        s = P.timed(loop)
    S["cache"], S["tok"] = c, t
    return {"seconds": s, "tokens": tokens}


if __name__ == "__main__":
    P.serve({"setup": setup, "prefill": prefill, "recompute": recompute, "decode": decode})
