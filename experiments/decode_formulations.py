"""Decode formulations on XLA:CPU, old vs new in one process, alternating rounds (issue 12).

    python experiments/decode_formulations.py [--model mamba2-130m] [--rounds 7] [--tokens 32]

Part 1, the full decode step (fp32, batch 1, compiled ``fori_loop`` of ``model.step``, cache
donated), in formulations that differ only in how the program is written or compiled:

The first four keep in_proj / out_proj stored (in, out), contracting their axis 0 (the layout
before issue 12; the model's weights transposed once and ``model._dot`` patched):

* ``readout_reduce``   y = Σₙ s·C as an elementwise product + reduce (the code before issue 12;
  XLA:CPU turns the reduce into a YNNPACK custom fusion);
* ``readout_dot_grouped_state``  y = s·C as a dot, the state viewed (b, g, r, p, n) (XLA copies it per layer);
* ``readout_dot``      y = s·C as a batched dot, B and C per head, the state never reshaped (updated
  in place);
* ``readout_reduce_no_ynn``  the old code compiled with ``xla_cpu_experimental_ynn_fusion_type=""``;
* ``weights_out_in``   ``readout_dot`` with in_proj / out_proj stored (out, in), contracting their last
  axis: the code as it is (the model unpatched; the layout stored since issue 12).

Part 2, the 50288×768 LM-head GEMV (the largest weight), fp32 vs 16-bit weights with an fp32
result, each with its GB/s of weight traffic: a native mixed dot, an ``astype`` upcast then an fp32
dot, a bf16→fp32 upcast written as a 16-bit shift plus a bitcast, the upcast fused into an
elementwise multiply + reduce, and the native bf16 dot with the row padded to two rows.

A streaming-bandwidth probe runs in every round.  Writes results/decode_formulations/<run>.json
(+ csv) with provenance, min / median / raw times and the load average.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mamba2_jax import model as M
from mamba2_jax.eval import bench, flops
from mamba2_jax.eval import models as model_specs
from mamba2_jax.eval.results import write_results

F32 = jnp.float32


def _grouped_state_update(state, x, dt, A, B):
    """The pre-issue-12 state update, with the state viewed per group as (b, g, r, p, n)."""
    b, h, p, n = state.shape
    g = B.shape[-2]
    r = h // g
    xf = x.astype(F32).reshape(b, g, r, p)
    dtf = dt.astype(F32).reshape(b, g, r)
    dA = jnp.exp(dtf * A.astype(F32).reshape(g, r))
    s = state.reshape(b, g, r, p, n)
    return s * dA[..., None, None] + (dtf[..., None] * xf)[..., None] * B.astype(F32)[:, :, None, None, :]


def _with_d(y, x, D):
    if D is None:
        return y
    Df = D.astype(F32)
    return y + x.astype(F32) * (Df[:, None] if Df.ndim == 1 else Df)


def _ssd_step_reduce(state, x, dt, A, B, C, D=None, precision=None, block_bytes=None):
    """ssd.ssd_step as it was before issue 12 (read-out as an elementwise product + reduce; one block:
    ``block_bytes`` is ignored, as batch 1 is one block in today's step too)."""
    b, h, p, n = state.shape
    s = _grouped_state_update(state, x, dt, A, B)
    y = jnp.sum(s * C.astype(F32)[:, :, None, None, :], axis=-1).reshape(b, h, p)
    return _with_d(y, x, D), s.reshape(b, h, p, n)


def _ssd_step_grouped_dot(state, x, dt, A, B, C, D=None, precision=None, block_bytes=None):
    """An intermediate form: read-out as a dot, but the state viewed as (b, g, r, p, n) (one block)."""
    b, h, p, n = state.shape
    s = _grouped_state_update(state, x, dt, A, B)
    y = jnp.einsum("bgrpn,bgn->bgrp", s, C.astype(F32), precision=precision).reshape(b, h, p)
    return _with_d(y, x, D), s.reshape(b, h, p, n)


def _dot_in_out(x, w, precision, out_dtype=None):
    """ops.dot (as bound in model) for a weight stored (in, out): the layout before issue 12."""
    return jax.lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())), precision=precision,
                               preferred_element_type=out_dtype or F32)


@contextlib.contextmanager
def _patched(**kw):
    old = {k: getattr(M, k) for k in kw}
    for k, v in kw.items():
        setattr(M, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(M, k, v)


def compiled_decode(model, n_tokens: int, options=None, check_finite: bool = True):
    """The Generator's decode loop (bench.DecodeBench) for ``model``, batch 1, empty cache:
    (run() → seconds per token, compiled HLO text)."""
    db = bench.DecodeBench(model, n_tokens=n_tokens, batch=1, compiler_options=options, check_finite=check_finite)
    db.add_context("c0", 0)
    return (lambda: db.run("c0") / n_tokens), db.hlo


def _bf16_to_f32_shift(w16):
    """bf16 → fp32 exactly: the 16 bits moved to the top half of a uint32, bitcast to fp32."""
    u = jax.lax.bitcast_convert_type(w16, jnp.uint16).astype(jnp.uint32) << 16
    return jax.lax.bitcast_convert_type(u, jnp.float32)


def gemv_benches(V: int, d: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    W = jnp.asarray(rng.standard_normal((V, d), np.float32) * 0.02)
    h = jnp.asarray(rng.standard_normal((1, d), np.float32))
    dn = (((1,), (1,)), ((), ()))
    forms = {
        "gemv_fp32": (W, lambda w, x: jax.lax.dot_general(x, w, dn, precision="highest", preferred_element_type=F32)),
    }
    for name, dt in (("bf16", jnp.bfloat16), ("fp16", jnp.float16)):
        w16 = W.astype(dt)
        forms[f"gemv_{name}_native"] = (w16, lambda w, x: jax.lax.dot_general(
            x.astype(w.dtype), w, dn, preferred_element_type=F32))
        forms[f"gemv_{name}_astype"] = (w16, lambda w, x: jax.lax.dot_general(
            x, w.astype(F32), dn, precision="highest", preferred_element_type=F32))
    forms["gemv_bf16_shift_bitcast"] = (W.astype(jnp.bfloat16), lambda w, x: jax.lax.dot_general(
        x, _bf16_to_f32_shift(w), dn, precision="highest", preferred_element_type=F32))
    # the upcast fused into an elementwise consumer: Σ_k f32(w[:, k]) · x[k] as a multiply + reduce
    for name, dt in (("bf16", jnp.bfloat16), ("fp16", jnp.float16)):
        forms[f"gemv_{name}_mul_reduce"] = (W.astype(dt), lambda w, x: jnp.sum(w.astype(F32) * x, axis=-1)[None])
    # the native bf16 dot with the one row padded to two (XLA:CPU takes another kernel for M >= 2)
    forms["gemv_bf16_native_rows2"] = (W.astype(jnp.bfloat16), lambda w, x: jax.lax.dot_general(
        jnp.concatenate([x, jnp.zeros_like(x)]).astype(w.dtype), w, dn, preferred_element_type=F32)[:1])
    out, ref = {}, None
    for name, (w, f) in forms.items():
        jf = jax.jit(f)
        y = np.asarray(jf(w, h))
        ref = y if ref is None else ref
        err = float(np.max(np.abs(y - ref)) / np.max(np.abs(ref)))

        def run(jf=jf, w=w):
            t0 = time.perf_counter()
            jf(w, h).block_until_ready()
            return time.perf_counter() - t0

        out[name] = (run, int(w.size) * w.dtype.itemsize, err)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="mamba2-130m")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--stream-bytes", type=int, default=1 << 30)
    ap.add_argument("--gemv-reps", type=int, default=20, help="GEMV calls per timed sample")
    ap.add_argument("--out-dir", default=None)
    ap.add_argument("--run", default=None)
    a = ap.parse_args(argv)

    ctx = bench.setup_run({"profile_name": "cpu_bench", "cpu_measure": {"reps": 3}}, "decode_formulations")
    spec = model_specs.load_model_spec(a.model)
    model, info = model_specs.build_model(spec, dtype="float32")
    cfg = model.cfg
    tmodel, _ = model_specs.build_model(spec, dtype="float32")
    for blk in tmodel.backbone.layers:  # the old (in, out) layout for the two per-layer GEMVs
        mx = blk.mixer
        mx.in_proj = nnx.Param(jnp.asarray(np.ascontiguousarray(np.asarray(mx.in_proj[...]).T)))
        mx.out_proj = nnx.Param(jnp.asarray(np.ascontiguousarray(np.asarray(mx.out_proj[...]).T)))

    fns, hlo_ops = {}, {}
    with _patched(ssd_step=_ssd_step_reduce, dot=_dot_in_out):
        fns["readout_reduce"], h1 = compiled_decode(tmodel, a.tokens)
        fns["readout_reduce_no_ynn"], h2 = compiled_decode(tmodel, a.tokens,
                                                           {"xla_cpu_experimental_ynn_fusion_type": ""})
    with _patched(ssd_step=_ssd_step_grouped_dot, dot=_dot_in_out):
        fns["readout_dot_grouped_state"], h5 = compiled_decode(tmodel, a.tokens)
    with _patched(dot=_dot_in_out):
        fns["readout_dot"], h3 = compiled_decode(tmodel, a.tokens)
    fns["weights_out_in"], h4 = compiled_decode(model, a.tokens)
    for k, h in zip(["readout_reduce", "readout_reduce_no_ynn", "readout_dot_grouped_state", "readout_dot",
                     "weights_out_in"], [h1, h2, h5, h3, h4]):
        hlo_ops[k] = {"ynn_fusions": h.count("kind=kCustom"), "dots": h.count(" dot("), "copies": h.count(" copy("),
                      "state_copies": h.count(f"f32[1,{cfg.nheads},{cfg.headdim},{cfg.d_state}]{{3,2,1,0}} copy(")}
    print("[decode_formulations] decode programs compiled", flush=True)
    gem = gemv_benches(cfg.padded_vocab_size, cfg.d_model)
    for name, (run, _, _) in gem.items():
        fns[name] = (lambda run=run: sum(run() for _ in range(a.gemv_reps)) / a.gemv_reps)
    times, bw, stream_rec, (load0, load1) = bench.alternate_with_stream(fns, a.rounds, a.stream_bytes)
    by = flops.decode_bytes(cfg, 1, "float32")["total"]
    recs = [stream_rec]
    base = bench.median(times["readout_reduce"])
    for k in ("readout_reduce", "readout_reduce_no_ynn", "readout_dot_grouped_state", "readout_dot", "weights_out_in"):
        t = times[k]
        s = bench.median(t)
        recs.append(bench.decode_record(k, t, by, bw, speedup_vs_readout_reduce=base / s, **hlo_ops[k]))
        print(f"decode {k:24s} {1 / s:6.1f} tok/s (best {1 / min(t):6.1f})  {by / s / bw:5.3f} of bound  "
              f"x{base / s:4.2f} vs old  {hlo_ops[k]}")
    f32 = bench.median(times["gemv_fp32"])
    for name, (_, nbytes, err) in gem.items():
        t = times[name]
        s = bench.median(t)
        recs.append(bench.gemv_record(name, t, nbytes, speed_vs_fp32=f32 / s, max_rel_err_vs_fp32=err))
        print(f"gemv {name:24s} {s * 1e3:7.2f} ms  {nbytes / s / 1e9:6.1f} GB/s  x{f32 / s:5.2f} vs fp32  "
              f"rel err {err:.1e}")
    best16 = max((f32 / bench.median(times[n]), n) for n in gem if n != "gemv_fp32")
    verdict = (f"no 16-bit formulation beats the fp32 GEMV on this CPU (best: {best16[1]}, x{best16[0]:.2f})"
               if best16[0] < 1.0 else f"best 16-bit formulation: {best16[1]}, x{best16[0]:.2f} vs fp32")
    print(f"[decode_formulations] {verdict}")
    for r in recs:
        r["model"] = a.model
    paths = write_results("decode_formulations", a.run or ctx["run"], recs, hardware=ctx["hardware"],
                                config=vars(a), label=f"{ctx['label']}; {bench.weights_label([info])}",
                                out_dir=a.out_dir, extra={"reduced_precision_verdict": verdict,
                                                          "load_avg": [load0, load1]})
    print(f"[decode_formulations] wrote {paths[0]}")
    return {"records": recs, "paths": paths, "verdict": verdict}


if __name__ == "__main__":
    main()
