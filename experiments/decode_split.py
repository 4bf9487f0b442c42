"""Batch-1 decode GEMVs on XLA:CPU: one dot per weight, or the weight stored in independent parts
(issue 20, item 3), in one process, alternating rounds with the streaming probe.

    python experiments/decode_split.py [--model mamba2-130m] [--rounds 7] [--tokens 32]

A batch-1 decode step is GEMV-bound, and on this 2-core CPU one GEMV streams at about half the
bandwidth the two cores reach together.  Independent dots can run concurrently (XLA:CPU's thunk
executor schedules data-independent thunks on its thread pool), so a weight stored in row blocks
gives the compiler work for both cores.  Measured here:

* **Full decode step** (the Generator's loop, ``bench.DecodeBench``, fp32, batch 1): the model as
  loaded (fused in_proj) vs the same weights with in_proj stored in its output parts
  (``in_proj_parts``: z, x, B, C, dt; the model's existing split path, used on meshes).
* **LM-head GEMV** (the largest weight, V × d): one dot vs the weight stored as 2 and 4 row blocks,
  each its own dot, concatenated.
* **Projections over b rows** (where batched decode's time goes): one layer's in_proj and out_proj and
  the LM head, as the model's own ``ops.dot`` multiplies them in a decode step of b rows, at b = 1, 4,
  16, 64; their FLOP rate against a dense fp32 2048³ matmul (``curves.MatmulBench``) in the same
  rounds.  From a few rows on, a decode step's matmul FLOPs, not its bytes, bound it on this CPU
  (``eval.flops.decode_roofline``), so this rate is the batched step's ceiling.

Writes results/decode_split/<run>.json (+ csv) with provenance, medians, minima and raw times.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from mamba2_jax.eval import bench, flops, models
from mamba2_jax.eval.results import write_results

F32 = jnp.float32


def split_in_proj_model(model):
    """The model's weights with every layer's in_proj stored as its output parts (no mesh)."""
    from mamba2_jax.loading import jax_params_from_state_dict, state_dict_from_model
    from mamba2_jax.model import Mamba2LMHeadModel
    from mamba2_jax.params import in_proj_slices

    cfg = model.cfg
    params = jax_params_from_state_dict(cfg, state_dict_from_model(model), model.dtype)
    for lp in params["layers"]:
        w = lp.pop("in_proj")
        b = lp.pop("in_proj_bias", None)
        parts = {k: w[a:e] for k, a, e in in_proj_slices(cfg)}
        if b is not None:
            parts.update({"bias_" + k: b[a:e] for k, a, e in in_proj_slices(cfg)})
        lp["in_proj_parts"] = parts
    out = Mamba2LMHeadModel(cfg, params, precision=model.precision, scan_chunk_size=model.scan_chunk_size,
                            prefill_block=model.prefill_block, state_dtype=model.state_dtype,
                            step_block_bytes=model.step_block_bytes)
    out.policy = model.policy  # (the in_proj split is this model's structure, in its graph definition)
    return out


def head_gemvs(V: int, d: int, splits=(1, 2, 4), seed: int = 0):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((V, d), np.float32) * 0.02
    h = jnp.asarray(rng.standard_normal((1, d), np.float32))
    dn = (((1,), (1,)), ((), ()))
    out, ref = {}, None
    for k in splits:
        parts = [jnp.asarray(p) for p in np.array_split(W, k, axis=0)]
        f = jax.jit(lambda ps, x: jnp.concatenate(
            [jax.lax.dot_general(x, p, dn, precision="highest", preferred_element_type=F32) for p in ps], -1))
        y = np.asarray(f(parts, h))
        ref = y if ref is None else ref
        assert np.array_equal(y, ref) or np.max(np.abs(y - ref)) <= 1e-6 * np.max(np.abs(ref))

        def run(f=f, parts=parts):
            t0 = time.perf_counter()
            f(parts, h).block_until_ready()
            return time.perf_counter() - t0

        out[f"head_gemv_x{k}"] = (run, W.nbytes, f.lower(parts, h).compile().as_text())
    return out


def projection_dots(model, rows=(1, 4, 16, 64), seed: int = 0):
    """{f"proj_b{b}": (run, FLOPs per call, weight bytes)}: layer 0's in_proj and out_proj and the LM head
    applied to b rows with ``ops.dot`` (the model's own matmul), in one jitted call each."""
    from mamba2_jax.ops import dot

    mixer = model.backbone.layer(0).mixer
    W_in, W_out, E = mixer.in_proj[...], mixer.out_proj[...], model._head()[...]
    rng = np.random.default_rng(seed)
    out = {}
    for b in rows:
        x = jnp.asarray(rng.standard_normal((b, W_in.shape[1]), np.float32))
        y = jnp.asarray(rng.standard_normal((b, W_out.shape[1]), np.float32))
        f = jax.jit(lambda x, y, a, o, e: (dot(x, a, model.precision), dot(y, o, model.precision),
                                           dot(x, e, model.precision)))
        jax.block_until_ready(f(x, y, W_in, W_out, E))
        fl = 2.0 * b * (W_in.size + W_out.size + E.size)

        def run(f=f, x=x, y=y):
            t0 = time.perf_counter()
            jax.block_until_ready(f(x, y, W_in, W_out, E))
            return time.perf_counter() - t0

        out[f"proj_b{b}"] = (run, fl, W_in.nbytes + W_out.nbytes + E.nbytes, b)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="mamba2-130m")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--gemv-reps", type=int, default=20)
    ap.add_argument("--stream-bytes", type=int, default=1 << 30)
    ap.add_argument("--out-dir", default=None)
    ap.add_argument("--run", default=None)
    a = ap.parse_args(argv)

    ctx = bench.setup_run({"profile_name": "cpu_bench", "cpu_measure": {"reps": 3}}, "decode_split")
    model, info = models.build_model(models.load_model_spec(a.model), dtype="float32")
    cfg = model.cfg
    variants = {"fused_in_proj": model, "in_proj_parts": split_in_proj_model(model)}
    fns, hlo = {}, {}
    for name, m in variants.items():
        db = bench.DecodeBench(m, n_tokens=a.tokens, batch=1)
        db.add_context("c0", 0)
        fns[name] = (lambda db=db: db.run("c0") / a.tokens)
        hlo[name] = {"dots": db.hlo.count(" dot("), "fusions": db.hlo.count(" fusion(")}
        print(f"[decode_split] {name} compiled ({db.compile_s:.1f} s)", flush=True)
    gem = head_gemvs(cfg.padded_vocab_size, cfg.d_model)
    for name, (run, _, _) in gem.items():
        fns[name] = (lambda run=run: sum(run() for _ in range(a.gemv_reps)) / a.gemv_reps)
    from mamba2_jax.eval.curves import MatmulBench

    proj = projection_dots(model)
    for name, (run, *_) in proj.items():
        fns[name] = (lambda run=run: sum(run() for _ in range(a.gemv_reps)) / a.gemv_reps)
    mm = MatmulBench()
    fns["dense_matmul"] = mm.run
    times, bw, stream_rec, (load0, load1) = bench.alternate_with_stream(fns, a.rounds, a.stream_bytes)
    by = flops.decode_bytes(cfg, 1, "float32")["total"]
    recs = [stream_rec]
    base = bench.median(times["fused_in_proj"])
    for name in variants:
        t = times[name]
        s = bench.median(t)
        recs.append(bench.decode_record(name, t, by, bw, speedup_vs_fused=base / s, **hlo[name]))
        print(f"decode {name:16s} {1 / s:6.1f} tok/s (best {1 / min(t):6.1f})  {by / s / bw:5.3f} of bound  "
              f"x{base / s:4.2f} vs fused  {hlo[name]}")
    g1 = bench.median(times["head_gemv_x1"])
    for name, (_, nbytes, _) in gem.items():
        t = times[name]
        s = bench.median(t)
        recs.append(bench.gemv_record(name, t, nbytes, fraction_of_stream=nbytes / s / bw, speed_vs_one_dot=g1 / s))
        print(f"gemv {name:16s} {s * 1e3:7.2f} ms  {nbytes / s / 1e9:6.1f} GB/s  {nbytes / s / bw:5.2f} of stream  "
              f"x{g1 / s:4.2f} vs one dot")
    rate = mm.flops_per_call / bench.median(times["dense_matmul"])
    recs.append({"metric": "matmul_flops_per_s", "value": rate, "unit": "FLOP/s", "times_s": times["dense_matmul"],
                 "note": "fp32 2048^3 matmul (precision highest), median of the same alternating rounds"})
    for name, (_, fl, nbytes, b) in proj.items():
        t = times[name]
        s = bench.median(t)
        recs.append({"metric": "projection_flops_per_s", "value": fl / s, "unit": "FLOP/s", "formulation": name,
                     "batch": b, "median_s": s, "min_s": min(t), "times_s": t, "flops": fl, "weight_bytes": nbytes,
                     "fraction_of_dense_matmul": fl / s / rate, "weight_bytes_per_s": nbytes / s,
                     "note": "layer 0's in_proj and out_proj and the LM head over `batch` rows (ops.dot), "
                             "one jitted call"})
        print(f"proj {name:9s} {s * 1e3:7.2f} ms  {fl / s / 1e9:6.1f} GFLOP/s  {fl / s / rate:5.2f} of the dense "
              f"matmul ({rate / 1e9:.0f} GFLOP/s)  weights {nbytes / s / 1e9:5.1f} GB/s")
    for r in recs:
        r["model"] = a.model
    paths = write_results("decode_split", a.run or ctx["run"], recs, hardware=ctx["hardware"], config=vars(a),
                          label=f"{ctx['label']}; {bench.weights_label([info])}", out_dir=a.out_dir,
                          extra={"load_avg": [load0, load1]})
    print(f"[decode_split] wrote {paths[0]}")
    return {"records": recs, "paths": paths}


if __name__ == "__main__":
    main()
