"""Peer runner: this project (mamba2_jax from the repo), CPU.

* prefill (fp32): a jitted ``model.prefill`` per (length, mode): "full" returns the logits at every
  position, "last" only at the last one (``bench.PrefillBench``);
* decode (fp32, batch 1): the loop users run, ``Generator.generate`` (the CLI's ``generate``): its
  compiled on-device decode loop, timed by the Generator itself (``GenerationResult.decode_s``:
  the decode program plus its one device→host copy of the tokens; the prompt's prefill is not in it);
* decode_stepwise: a jitted single step called from a Python loop (the usage of the other peers' APIs);
* recompute: one last-position prefill over the whole prefix;
* batched (fp32 and bf16): ``Generator.generate`` of ``b`` random prompts of ``batch_prompt`` tokens,
  decode tokens/s over all rows (``GenerationResult.decode_s``).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import _protocol as P

S: dict = {}
DTYPES = {"float32": "fp32", "bfloat16": "bf16"}


def setup(weights_dir, prefill_lengths, prefill_modes, decode_prompt, decode_tokens, recompute_context, seed, dump,
          check_tokens, vocab, batch_sizes=(), batch_prompt=128, batch_tokens=32, batch_dtypes=("float32",), **_):
    import time

    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from mamba2_jax.eval import bench
    from mamba2_jax.generate import Generator
    from mamba2_jax.loading import load_pretrained

    t0 = time.perf_counter()
    model = load_pretrained(weights_dir, dtype="float32")
    load_s = time.perf_counter() - t0
    V = int(vocab)  # real (unpadded) vocabulary: the same ids in every peer
    tasks, compile_s = [], {}
    S["pf"] = {}
    fp32 = {"variant": "fp32", "lower_precision": False}
    for L in [int(x) for x in prefill_lengths]:
        for m in prefill_modes:
            pb = bench.PrefillBench(model, L, 1, last_only=(m == "last"), seed=seed)
            S["pf"][L, m] = pb
            compile_s[f"prefill_{m}_{L}"] = pb.compile_s
            tasks.append({"key": f"prefill_{m}_{L}", "cmd": "prefill", "args": {"length": L, "mode": m},
                          "kind": "prefill", "tokens": L, "length": L, "logits": m, **fp32})
    L0, m0 = int(prefill_lengths[0]), prefill_modes[0]
    if m0 != "full":
        S["pf"][L0, "full"] = bench.PrefillBench(model, L0, 1, last_only=False, seed=seed)
    np.save(dump, np.asarray(S["pf"][L0, "full"].last_output[0][0, -1], np.float32))
    # recompute = a last-position prefill over the whole prefix (the same program when that length is timed already)
    rc = S["pf"].get((int(recompute_context), "last")) or bench.PrefillBench(model, recompute_context, 1,
                                                                             last_only=True, seed=seed)
    compile_s["recompute"] = rc.compile_s
    tasks.append({"key": "recompute", "cmd": "recompute", "args": {}, "kind": "recompute", "tokens": 1,
                  "length": int(recompute_context), "logits": "last", **fp32})
    # decode: the Generator loop (what `mamba2-jax generate` runs); eos_id=None: every run decodes all tokens
    gen = Generator(model, eos_id=None)
    prompt = P.random_ids(1, decode_prompt, V, seed)
    compile_s["decode"] = sum(gen.warmup(prompt.tolist(), int(decode_tokens) + 1).values())
    tasks.append({"key": "decode", "cmd": "decode", "args": {"tokens": int(decode_tokens)}, "kind": "decode",
                  "tokens": int(decode_tokens), "batch": 1, "context": int(decode_prompt), **fp32})
    # the stepwise path: the same prompt state, a jitted step from a Python loop
    graphdef, state = nnx.split(model)
    pre = jax.jit(lambda st, ids: nnx.merge(graphdef, st).prefill(ids, last_only=True))
    logits, cache = pre(state, jnp.asarray(prompt))
    tok = jnp.argmax(logits[:, :V], -1).astype(jnp.int32)
    step = jax.jit(lambda st, c, t: nnx.merge(graphdef, st).step(t, c), donate_argnums=(1,))
    c2 = jax.tree.map(lambda x: jnp.array(x, copy=True), cache)
    t2, toks = tok, []
    for _ in range(check_tokens):
        toks.append(int(t2[0]))
        lg, c2 = step(state, c2, t2)
        t2 = jnp.argmax(lg[:, :V], -1).astype(jnp.int32)
    tasks.append({"key": "decode_stepwise", "cmd": "decode_stepwise", "args": {"tokens": int(decode_tokens)},
                  "kind": "decode_stepwise", "tokens": int(decode_tokens), "batch": 1, **fp32})
    # the Generator's own greedy tokens must be the stepwise ones (same model, same prompt)
    gtoks = gen.generate(prompt.tolist(), check_tokens).tokens[0].tolist()
    if gtoks != toks:
        raise RuntimeError(f"Generator greedy tokens {gtoks} != stepwise {toks}")
    S.update(model=model, rc=rc, gen=gen, prompt=prompt.tolist(), step=step, state=state, step_cache=c2, step_tok=t2)
    # batched decode through the Generator, per dtype
    S["bgen"] = {}
    models = {"float32": model}
    for dt in batch_dtypes:
        if dt not in models:
            models[dt] = load_pretrained(weights_dir, dtype=dt)
        g = Generator(models[dt], eos_id=None) if dt != "float32" else gen
        for b in [int(x) for x in batch_sizes]:
            prompts = P.random_ids(b, batch_prompt, V, seed).tolist()
            compile_s[f"batched_b{b}_{DTYPES.get(dt, dt)}"] = sum(g.warmup(prompts, int(batch_tokens) + 1).values())
            S["bgen"][dt, b] = (g, prompts)
            tag = "" if dt == "float32" else f"_{DTYPES.get(dt, dt)}"
            tasks.append({"key": f"batched_b{b}{tag}", "cmd": "batched", "args": {"batch": b, "dtype": dt,
                          "tokens": int(batch_tokens)}, "kind": "batched", "tokens": b * int(batch_tokens),
                          "batch": b, "context": int(batch_prompt), "variant": DTYPES.get(dt, dt),
                          "lower_precision": dt != "float32"})
    return {"load_s": load_s, "compile_s": compile_s, "check_tokens": toks, "tasks": tasks,
            "versions": P.versions("jax", "jaxlib", "flax", "mamba2-jax-artifact"),
            "precision": {"param_dtype": "float32", "state_dtype": str(model.dtype),
                          "matmul_precision": getattr(model, "precision", None)},
            "module": __import__("mamba2_jax").__file__}


def prefill(length, mode="full", **_):
    return {"seconds": S["pf"][int(length), mode].run()}


def recompute(**_):
    return {"seconds": S["rc"].run()}


def decode(tokens, **_):
    r = S["gen"].generate([S["prompt"][0]], int(tokens) + 1)
    if r.decode_steps != int(tokens):
        raise RuntimeError(f"Generator decoded {r.decode_steps} steps, asked for {tokens}")
    return {"seconds": r.decode_s, "tokens": r.decode_steps}


def batched(batch, tokens, dtype="float32", **_):
    g, prompts = S["bgen"][dtype, int(batch)]
    r = g.generate(prompts, int(tokens) + 1)
    if r.decode_steps != int(tokens):
        raise RuntimeError(f"Generator decoded {r.decode_steps} steps, asked for {tokens}")
    return {"seconds": r.decode_s, "tokens": int(batch) * r.decode_steps}


def decode_stepwise(tokens):
    import jax.numpy as jnp

    step, st, V = S["step"], S["state"], S["model"].cfg.vocab_size

    def advance(c, t):
        lg, c = step(st, c, t)
        return c, jnp.argmax(lg[:, :V], -1).astype(jnp.int32)

    return P.timed_decode(S, "step_cache", "step_tok", advance, tokens)


if __name__ == "__main__":
    P.serve({"setup": setup, "prefill": prefill, "recompute": recompute, "decode": decode, "batched": batched,
             "decode_stepwise": decode_stepwise})
