"""Peer runner: this project (mamba2_jax from the repo), fp32, CPU.

prefill: jitted prefill with full logits (equal work with the other peers); decode: the compiled
``fori_loop`` of ``model.step`` with the cache donated (``bench.DecodeBench``); decode_stepwise: a
jitted single step called from a Python loop (the same usage as the other peers' APIs);
recompute: one last-only prefill over the whole prefix.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import _protocol as P

S: dict = {}


def setup(weights_dir, prefill_length, decode_prompt, decode_tokens, recompute_context, seed, dump,
          check_tokens, vocab, **_):
    import time

    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from mamba2_jax.eval import bench
    from mamba2_jax.loading import load_pretrained

    t0 = time.perf_counter()
    model = load_pretrained(weights_dir, dtype="float32")
    load_s = time.perf_counter() - t0
    V = int(vocab)  # real (unpadded) vocabulary: the same ids in every peer
    pf = bench.PrefillBench(model, prefill_length, 1, last_only=False, seed=seed)
    np.save(dump, np.asarray(pf.last_output[0][0, -1], np.float32))
    rc = bench.PrefillBench(model, recompute_context, 1, last_only=True, seed=seed)
    db = bench.DecodeBench(model, n_tokens=decode_tokens, batch=1, seed=seed)
    prompt = jnp.asarray(P.random_ids(1, decode_prompt, V, seed))
    # the prompt cache and first token are shared by both decode paths
    graphdef, state = nnx.split(model)
    pre = jax.jit(lambda st, ids: nnx.merge(graphdef, st).prefill(ids, last_only=True))
    logits, cache = pre(state, prompt)
    tok = jnp.argmax(logits, -1).astype(jnp.int32)
    db.add_context("d", decode_prompt, cache=cache, token=tok)
    step = jax.jit(lambda st, c, t: nnx.merge(graphdef, st).step(t, c), donate_argnums=(1,))
    # greedy check tokens with the stepwise path (compiles it)
    c2 = jax.tree.map(lambda x: jnp.array(x, copy=True), cache)
    t2, toks = tok, []
    for _ in range(check_tokens):
        toks.append(int(t2[0]))
        lg, c2 = step(state, c2, t2)
        t2 = jnp.argmax(lg, -1).astype(jnp.int32)
    S.update(model=model, pf=pf, rc=rc, db=db, step=step, state=state, step_cache=c2, step_tok=t2)
    return {"load_s": load_s, "compile_s": {"prefill": pf.compile_s, "recompute": rc.compile_s, "decode": db.compile_s},
            "first_run_s": {"prefill": pf.first_run_s, "recompute": rc.first_run_s, "decode": db.first_run_s},
            "check_tokens": toks, "decode_tokens": decode_tokens,
            "versions": P.versions("jax", "jaxlib", "flax", "mamba2-jax-artifact"),
            "module": __import__("mamba2_jax").__file__}


def prefill():
    return {"seconds": S["pf"].run()}


def recompute():
    return {"seconds": S["rc"].run()}


def decode(**_):
    return {"seconds": S["db"].run("d"), "tokens": S["db"].n_tokens}


def decode_stepwise(tokens):
    import jax.numpy as jnp

    step, st = S["step"], S["state"]

    def advance(c, t):
        lg, c = step(st, c, t)
        return c, jnp.argmax(lg, -1).astype(jnp.int32)

    return P.timed_decode(S, "step_cache", "step_tok", advance, tokens)


if __name__ == "__main__":
    P.serve({"setup": setup, "prefill": prefill, "recompute": recompute, "decode": decode,
             "decode_stepwise": decode_stepwise})
