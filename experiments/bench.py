"""Issue-3 CPU benchmark: the 130m shape, random init, batch 1.

    make bench                 (python experiments/bench.py; profile cpu_bench)

Measures, all in one run and round-robin (``bench.alternate``) so compared numbers share the load:

* prefill tokens/s at ``bench.prefill_lengths`` (last-position logits);
* cached decode ms/token (a compiled loop of ``decode_tokens`` >= 64 steps) at each of
  ``bench.contexts`` (float32), and at the shortest context for every other dtype;
* streaming bandwidth (``hardware.StreamBench``) re-measured every round next to the decodes:
  achieved bytes/s = (param bytes + state bytes read and written) / (s/token), as a fraction of
  that bandwidth;
* full-prefix recompute at ``recompute_context`` vs cached decode at the same context.

Writes results/bench/<run>.json (+ .csv) with one record per metric, and the targets with pass/fail.
"""

from __future__ import annotations

import hydra

from mamba2_jax.eval import bench, curves, flops
from mamba2_jax.eval import models as model_specs
from mamba2_jax.eval.results import write_results
from mamba2_jax.hardware import StreamBench
from mamba2_jax.paths import require_data_dir


def run(cfg) -> dict:
    ctx = bench.setup_run(cfg, "bench")
    prof = ctx["profile"]
    B = cfg.bench
    n, b, rounds = int(B.decode_tokens), int(cfg.batch), int(B.rounds)
    contexts = sorted(int(c) for c in B.contexts)
    rc = int(B.recompute_context)
    dtypes = [str(d) for d in B.dtypes]
    state_dtype = str(B.get("state_dtype") or "float32")  # the SSM state's storage dtype (precision policy)
    base = dtypes[0]
    spec = model_specs.load_model_spec(str(B.model))
    dd = require_data_dir(cfg.paths.data_dir)
    ckpt = (dict(cfg.checkpoints or {})).get(str(B.model))

    models, infos, dbs = {}, {}, {}
    for dt in dtypes:
        models[dt], infos[dt] = model_specs.build_model(spec, dtype=dt, checkpoint=ckpt, seed=int(cfg.seed),
                                                        precision=cfg.matmul_precision, data=dd,
                                                        state_dtype=state_dtype)
        dbs[dt] = bench.DecodeBench(models[dt], n_tokens=n, batch=b, seed=int(cfg.seed))
    mcfg = models[base].cfg
    dec_ctx = {base: sorted(set(contexts) | {rc})}
    for dt in dtypes[1:]:
        dec_ctx[dt] = [contexts[0]]
    for dt, cs in dec_ctx.items():
        for c in cs:
            dbs[dt].add_context(f"c{c}", c)
            print(f"[bench] {dt}: cache at context {c} ready", flush=True)
    prefills = {}
    for L in sorted({int(x) for x in B.prefill_lengths} | {rc}):
        prefills[L] = dbs[base].prefill_bench(L) or bench.PrefillBench(models[base], L, b, True, int(cfg.seed))

    fns = {}
    for dt, cs in dec_ctx.items():
        for c in cs:
            fns[f"decode:{dt}:{c}"] = (lambda dt=dt, c=c: dbs[dt].run(f"c{c}") / n)
    for L, pb in prefills.items():
        fns[f"prefill:{L}"] = pb.run
    stream = None
    if B.interleave_bandwidth:
        stream = StreamBench(int(B.bandwidth_bytes))
        fns["stream"] = stream.run
    mm = curves.MatmulBench(int(B.get("matmul_n", 2048))) if B.get("matmul_bound", True) else None
    if mm:
        fns["matmul"] = mm.run
    times = bench.alternate(fns, rounds)
    med = {k: bench.median(v) for k, v in times.items()}

    recs = []

    def rec(metric, value, unit, **kw):
        recs.append({"metric": metric, "value": value, "unit": unit, **kw})

    for L in prefills:
        rec("prefill_tokens_per_s", b * L / med[f"prefill:{L}"], "tokens/s", dtype=base, length=L,
            median_s=med[f"prefill:{L}"], compile_s=prefills[L].compile_s, times_s=times[f"prefill:{L}"])
    by = {dt: flops.decode_bytes(mcfg, b, dt, state_dtype) for dt in dtypes}
    bw_stream = stream.bytes_per_call / med["stream"] if stream else None
    bw_best = stream.bytes_per_call / min(times["stream"]) if stream else None
    bw_start = prof.bandwidth
    for dt, cs in dec_ctx.items():
        for c in cs:
            s = med[f"decode:{dt}:{c}"]
            rec("decode_ms_per_token", s * 1e3, "ms", dtype=dt, context=c, tokens=n, times_s=times[f"decode:{dt}:{c}"],
                compile_s=dbs[dt].compile_s)
            rec("decode_tokens_per_s", b / s, "tokens/s", dtype=dt, context=c)
            rec("achieved_bytes_per_s", by[dt]["total"] / s, "B/s", dtype=dt, context=c, bytes_per_step=by[dt]["total"])
            if stream:
                rec("bandwidth_fraction", by[dt]["total"] / s / bw_stream, "fraction", dtype=dt, context=c,
                    note="vs median interleaved streaming bandwidth")
            rec("bandwidth_fraction_vs_start_best", by[dt]["total"] / s / bw_start, "fraction", dtype=dt, context=c,
                note="vs best streaming bandwidth measured at run start")
    if stream:
        rec("stream_bandwidth", bw_stream, "B/s", note="median of interleaved StreamBench rounds",
            times_s=times["stream"], array_bytes=stream.array_bytes)
        rec("stream_bandwidth_best", bw_best, "B/s", note="best interleaved round")
    rec("stream_bandwidth_start", bw_start, "B/s", note="hardware profile (best at run start)")
    bw_ref = bw_stream or bw_start
    for dt in dtypes:
        rec("roofline_tokens_per_s", b * bw_ref / by[dt]["total"], "tokens/s", dtype=dt,
            note="streaming bandwidth / bytes per step")
    c0, c1 = contexts[0], contexts[-1]
    d0 = med[f"decode:{base}:{c0}"]
    ctx_ratio = med[f"decode:{base}:{c1}"] / d0
    rec("context_ratio", ctx_ratio, "ratio", dtype=base, context=c1, note=f"ms/token at {c1} / at {c0}")
    speed = med[f"prefill:{rc}"] / med[f"decode:{base}:{rc}"]
    rec("cached_over_recompute", speed, "ratio", dtype=base, context=rc,
        recompute_ms=med[f"prefill:{rc}"] * 1e3, cached_ms=med[f"decode:{base}:{rc}"] * 1e3)
    bf_ratio = None
    for dt in dtypes[1:]:
        r = d0 / med[f"decode:{dt}:{c0}"]
        rec(f"{dt}_over_{base}_decode_speed", r, "ratio", dtype=dt, context=c0)
        if dt == "bfloat16":
            bf_ratio = r

    prefill_frac = None
    if mm:
        mrecs = curves.prefill_matmul_fraction(models[base], {L: times[f"prefill:{L}"] for L in prefills}, mm,
                                                     times["matmul"], b)
        recs.extend(mrecs)
        prefill_frac = min(r["value"] for r in mrecs if r["metric"] == "prefill_matmul_fraction")
    batch_recs = []
    if B.get("batch_curve") and stream:
        # entries: a parameter dtype of bench.dtypes (its model), or "<param dtype>/<state dtype>": a model
        # of that parameter dtype with the SSM state stored in that dtype (e.g. bfloat16/bfloat16)
        curve_models = {}
        for d in (str(x) for x in (B.batch_curve.get("dtypes") or [base])):
            if d in models:
                curve_models[d] = models[d]
            elif "/" in d:
                w, s = d.split("/")
                curve_models[d], infos[d] = model_specs.build_model(
                    spec, dtype=w, checkpoint=ckpt, seed=int(cfg.seed), precision=cfg.matmul_precision, data=dd,
                    state_dtype=s)
        batch_recs = curves.batch_curve(curve_models, [int(x) for x in B.batch_curve.batches],
                                        int(B.batch_curve.decode_tokens), int(B.batch_curve.rounds), stream,
                                        seed=int(cfg.seed))
        recs.extend(batch_recs)
        for r in batch_recs:
            if r["metric"] == "decode_batch_speed_ratio":
                print(f"[bench] batched decode {r['dtype']} vs {base} at batch {r['batch']}: x{r['value']:.2f}")
    len_ratio = None
    if B.get("length_curve"):
        LC = B.length_curve
        lrecs = curves.length_curve(spec, [int(x) for x in LC.lengths], int(LC.n_layer), int(LC.rounds), base,
                                          int(cfg.seed), dd, cfg.matmul_precision,
                                          prefill_block=LC.get("prefill_block", "auto"))
        recs.extend(lrecs)
        len_ratio = max(r["ratio_to_shortest"] for r in lrecs)
    for r in recs:
        r.setdefault("times_min_s", min(r["times_s"]) if r.get("times_s") else None)

    T = B.targets
    frac = by[base]["total"] / d0 / bw_ref
    targets = {
        "decode_tokens_per_s": {"target": f">= {T.decode_tokens_per_s}", "value": b / d0,
                                "pass": b / d0 >= T.decode_tokens_per_s},
        "bandwidth_fraction": {"target": f">= {T.bandwidth_fraction}", "value": frac,
                               "pass": frac >= T.bandwidth_fraction},
        "context_ratio": {"target": f"<= {T.context_ratio_max}", "value": ctx_ratio,
                          "pass": ctx_ratio <= T.context_ratio_max},
        "bf16_over_fp32": {"target": f">= {T.bf16_over_fp32}", "value": bf_ratio,
                           "pass": None if bf_ratio is None else bf_ratio >= T.bf16_over_fp32},
        "cached_over_recompute": {"target": f">= {T.cached_over_recompute} at {rc}", "value": speed,
                                  "pass": speed >= T.cached_over_recompute},
    }
    if prefill_frac is not None:
        targets["prefill_matmul_fraction"] = {"target": f">= {T.prefill_matmul_fraction}", "value": prefill_frac,
                                              "pass": prefill_frac >= T.prefill_matmul_fraction}
    if len_ratio is not None:
        targets["prefill_length_ratio"] = {"target": f"<= {T.prefill_length_ratio_max} (per-token time vs shortest)",
                                           "value": len_ratio, "pass": len_ratio <= T.prefill_length_ratio_max}
    b16s = [r for r in batch_recs if r["metric"] == "decode_batch_speed_ratio" and r["dtype"] == "bfloat16/bfloat16"
            and r["batch"] == max(int(x) for x in B.batch_curve.batches)] if batch_recs else []
    if b16s and T.get("bf16_weights_and_state_over_fp32_batched"):
        v = b16s[0]["value"]
        targets["bf16_weights_and_state_over_fp32_batched"] = {
            "target": f">= {T.bf16_weights_and_state_over_fp32_batched} at batch {b16s[0]['batch']}", "value": v,
            "pass": v >= T.bf16_weights_and_state_over_fp32_batched}
    for k, v in targets.items():
        print(f"[bench] {k}: {v['value']!s:.8} (target {v['target']}): {'PASS' if v['pass'] else 'MISS'}", flush=True)
    for r in recs:
        r.setdefault("dtype", None)
        r["model"] = str(B.model)
    label = f"{ctx['label']}; {bench.weights_label(list(infos.values()))}"
    paths = write_results("bench", ctx["run"], recs, hardware=ctx["hardware"], config=bench.config_dict(cfg),
                                label=label, out_dir=cfg.out_dir,
                                extra={"targets": targets, "models": dict(infos),
                                       "decode_bytes": by})
    print(f"[bench] wrote {paths[0]}")
    return {"records": recs, "targets": targets, "paths": paths, "run": ctx["run"]}


@hydra.main(config_path="pkg://mamba2_jax.eval.conf", config_name="bench", version_base="1.3")
def main(cfg) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
