"""Sweep: decode ms/token vs context length and prefill time vs length, per model.

    python experiments/sweep.py                   # CPU smoke profile
    python experiments/sweep.py profile=paper hardware=tpu_v6e

For each model, a cache is prefilled at every context (the prefill compiled for that length is
the one timed as "prefill"); the decode loop is compiled once and shared by all contexts.  Then
every context's decode and prefill are timed round-robin (``bench.alternate``), so the curve is
not skewed by load drifting over the run.  A flat decode curve is the O(1) cache at work.
"""

from __future__ import annotations

import hydra

from mamba2_jax.eval import bench, flops
from mamba2_jax.eval.results import write_results


def run(cfg) -> dict:
    ctx = bench.setup_run(cfg, "sweep")
    prof = ctx["profile"]
    s = cfg.sweep
    reps, b, n = int(cfg.reps), int(cfg.batch), int(s.decode_tokens)
    contexts = [int(c) for c in s.contexts]
    records, infos = [], []
    for name, model, info in bench.iter_models(cfg):
        infos.append(info)
        prec = (info.get("policy") or {}).get("matmul_precision")
        peak, _ = prof.peak_flops(info["dtype"], prec)
        db = bench.DecodeBench(model, n_tokens=n, batch=b, seed=int(cfg.seed))
        for c in contexts:
            db.add_context(f"c{c}", c)
            print(f"[sweep] {name}: cache at context {c} ready", flush=True)
        fns = {}
        for c in contexts:
            fns[f"decode:{c}"] = (lambda c=c, db=db: db.run(f"c{c}"))
            fns[f"prefill:{c}"] = db.prefill_bench(c).run
        load = bench.load_avg()
        times = bench.alternate(fns, reps)
        load = [load, bench.load_avg()]
        by = flops.decode_bytes(model.cfg, b, info["dtype"])["total"]
        common = {"model": name, "dtype": info["dtype"], "matmul_precision": prec, "batch": b,
                  "weights": info["weights"]}
        for c in contexts:
            med = bench.median(times[f"decode:{c}"]) / n
            records.append({**common, "kind": "decode", "context": c, "median_s": med * n, "tokens": n,
                            "ms_per_token": med * 1e3, "tokens_per_s": b / med, "times_s": times[f"decode:{c}"],
                            "min_s": min(times[f"decode:{c}"]), "load_avg": load,
                            "hbu": bench.utilisation(by, med, prof.bandwidth), "compile_s": db.compile_s})
            pb = db.prefill_bench(c)
            pm = bench.median(times[f"prefill:{c}"])
            fl = flops.model_prefill_flops(model, c, b)["total"]
            records.append({**common, "kind": "prefill", "context": c, "median_s": pm, "tokens": c,
                            "tokens_per_s": b * c / pm, "times_s": times[f"prefill:{c}"],
                            "min_s": min(times[f"prefill:{c}"]), "load_avg": load,
                            "tflops": fl / pm / 1e12, "mfu": bench.utilisation(fl, pm, peak),
                            "compile_s": pb.compile_s})
            print(f"[sweep] {name} ctx {c}: decode {med * 1e3:.2f} ms/token, prefill {pm * 1e3:.1f} ms", flush=True)
        del db, fns
    label = f"{ctx['label']}; {bench.weights_label(infos)}"
    paths = write_results("sweep", ctx["run"], records, hardware=ctx["hardware"],
                                config=bench.config_dict(cfg), label=label, out_dir=cfg.out_dir)
    print(f"[sweep] wrote {paths[0]}")
    return {"records": records, "paths": paths, "run": ctx["run"]}


@hydra.main(config_path="pkg://mamba2_jax.eval.conf", config_name="sweep", version_base="1.3")
def main(cfg) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
