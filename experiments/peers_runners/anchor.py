"""Peer runner: the paper's package, mamba2-jax 1.1.2 from PyPI, fp32, CPU.

Runs with PYTHONPATH=<anchor_dir> (``pip install --no-deps --target .anchor mamba2-jax==1.1.2``) so
that its ``mamba2_jax`` shadows this project's; its dependencies (jax, jaxlib, flax, optax) are the
project venv's, checked against its requirements at setup.  Used through its public API:
``mamba2_jax.forward`` (``jax.jit`` of ``Mamba2ForCausalLM.__call__``):

* prefill: ``forward(model, ids)`` (full logits, no initial state; its API has no last-position option);
* decode: the documented cached generation, ``forward(model, token[:, None], cache=cache)`` in a
  Python loop with greedy argmax (each step runs its chunked SSD on one token padded to a chunk);
* recompute: ``forward(model, ids)`` over the whole prefix (its API has no last-position-only
  option, so this includes the full-logits LM head).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _protocol as P

S: dict = {}


def setup(weights_dir, prefill_lengths, prefill_modes, decode_prompt, decode_tokens, recompute_context, seed, dump,
          check_tokens, model_cfg, vocab, **_):
    import time

    import jax
    import jax.numpy as jnp
    import numpy as np

    import mamba2_jax as m2

    if m2.__version__ != "1.1.2" or "site-packages" in m2.__file__ and ".anchor" not in m2.__file__:
        raise RuntimeError(f"expected mamba2-jax 1.1.2 from the anchor dir, got {m2.__version__} at {m2.__file__}")
    cfg = m2.Mamba2Config(
        vocab_size=model_cfg["padded_vocab_size"], hidden_size=model_cfg["d_model"], state_size=model_cfg["d_state"],
        head_dim=model_cfg["headdim"], chunk_size=model_cfg["chunk_size"], expand=model_cfg["expand"],
        conv_kernel=model_cfg["d_conv"], num_hidden_layers=model_cfg["n_layer"],
        layer_norm_epsilon=model_cfg["norm_epsilon"], tie_word_embeddings=True, residual_in_fp32=True)
    if model_cfg.get("ngroups", 1) != 1:
        raise RuntimeError("mamba2-jax 1.1.2 supports ngroups=1 only")
    t0 = time.perf_counter()
    model = m2.create_model_from_torch_checkpoint(weights_dir, cfg=cfg, dtype=jnp.float32)
    load_s = time.perf_counter() - t0
    fwd = m2.forward
    V = int(vocab)  # real (unpadded) vocabulary: the same ids in every peer
    S["ids"] = {int(L): jnp.asarray(P.random_ids(1, int(L), V, seed)) for L in prefill_lengths}
    ids = S["ids"][int(prefill_lengths[0])]
    rids = jnp.asarray(P.random_ids(1, recompute_context, V, seed))
    prompt = jnp.asarray(P.random_ids(1, decode_prompt, V, seed))

    def first(fn):
        t0 = time.perf_counter()
        out = fn()
        jax.block_until_ready(out)
        return out, time.perf_counter() - t0

    out, pf_first = first(lambda: fwd(model, ids))
    np.save(dump, np.asarray(out["logits"][0, -1], np.float32))
    _, rc_first = first(lambda: fwd(model, rids))
    out, _ = first(lambda: fwd(model, prompt))
    cache = out["cache"]
    tok = jnp.argmax(out["logits"][:, -1, :V], -1).astype(jnp.int32)
    toks = []
    t0 = time.perf_counter()
    for i in range(check_tokens):
        toks.append(int(tok[0]))
        o = fwd(model, tok[:, None], cache=cache)
        cache, tok = o["cache"], jnp.argmax(o["logits"][:, -1, :V], -1).astype(jnp.int32)
        if i == 0:
            jax.block_until_ready(tok)
            step_first = time.perf_counter() - t0
    for L in S["ids"]:  # compile every prefill length before timing
        first(lambda L=L: fwd(model, S["ids"][L]))
    S.update(model=model, fwd=fwd, rids=rids, cache=cache, tok=tok, V=V)
    # its API has no last-position option: every prefill computes full logits (listed as "full")
    meta = {"variant": "fp32", "lower_precision": False}
    tasks = [{"key": f"prefill_full_{L}", "cmd": "prefill", "args": {"length": int(L)}, "kind": "prefill",
              "tokens": int(L), "length": int(L), "logits": "full", **meta} for L in prefill_lengths]
    tasks += [{"key": "decode", "cmd": "decode", "args": {"tokens": int(decode_tokens)}, "kind": "decode",
               "tokens": int(decode_tokens), "batch": 1,
               "context": int(decode_prompt), **meta},
              {"key": "recompute", "cmd": "recompute", "args": {}, "kind": "recompute", "tokens": 1,
               "length": int(recompute_context), "logits": "full", **meta}]
    return {"tasks": tasks, "load_s": load_s, "compile_s": {},
            "first_run_s": {"prefill": pf_first, "recompute": rc_first,
                                                               "decode_step": step_first},
            "check_tokens": toks, "versions": P.versions("mamba2-jax", "jax", "jaxlib", "flax", "optax"),
            "module": m2.__file__}


def prefill(length, **_):
    import jax

    ids = S["ids"][int(length)]
    return {"seconds": P.timed(lambda: jax.block_until_ready(S["fwd"](S["model"], ids)["logits"]))}


def recompute(**_):
    import jax

    return {"seconds": P.timed(lambda: jax.block_until_ready(S["fwd"](S["model"], S["rids"])["logits"]))}


def decode(tokens, **_):
    import jax.numpy as jnp

    fwd, model, V = S["fwd"], S["model"], S["V"]

    def advance(c, t):
        o = fwd(model, t[:, None], cache=c)
        return o["cache"], jnp.argmax(o["logits"][:, -1, :V], -1).astype(jnp.int32)

    return P.timed_decode(S, "cache", "tok", advance, tokens)


if __name__ == "__main__":
    P.serve({"setup": setup, "prefill": prefill, "recompute": recompute, "decode": decode})
