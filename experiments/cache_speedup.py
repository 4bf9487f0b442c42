"""Cache speedup: cached decode vs full-prefix recompute, per model and context.

    python experiments/cache_speedup.py                 # CPU smoke profile
    python experiments/cache_speedup.py profile=paper hardware=tpu_v6e

Recompute cost of one token = one last-only prefill over the whole prefix (compiled once for that
length); cached cost = the compiled decode loop's ms/token from a cache at that context.  The two
are timed alternately.  speedup = recompute ms / cached ms per token.
"""

from __future__ import annotations

import hydra

from mamba2_jax.eval import bench, flops
from mamba2_jax.eval.results import write_results


def run(cfg) -> dict:
    ctx = bench.setup_run(cfg, "cache_speedup")
    c_cfg = cfg.cache_speedup
    reps, b, n = int(cfg.reps), int(cfg.batch), int(c_cfg.decode_tokens)
    contexts = [int(c) for c in c_cfg.contexts]
    head = int(c_cfg.headline_context)
    if head not in contexts:
        contexts.append(head)
    records, infos = [], []
    for name, model, info in bench.iter_models(cfg):
        infos.append(info)
        db = bench.DecodeBench(model, n_tokens=n, batch=b, seed=int(cfg.seed))
        fns = {}
        for c in contexts:
            db.add_context(f"c{c}", c)
            fns[f"cached:{c}"] = (lambda c=c, db=db: db.run(f"c{c}") / n)
            fns[f"recompute:{c}"] = db.prefill_bench(c).run   # last-only prefill of the whole prefix
        load = bench.load_avg()
        times = bench.alternate(fns, reps)
        load = [load, bench.load_avg()]
        for c in contexts:
            cached = bench.median(times[f"cached:{c}"])
            rec = bench.median(times[f"recompute:{c}"])
            records.append({
                "model": name, "dtype": info["dtype"], "batch": b, "weights": info["weights"], "context": c,
                "headline": c == head, "cached_ms_per_token": cached * 1e3, "recompute_ms_per_token": rec * 1e3,
                "speedup": rec / cached, "cached_times_s": times[f"cached:{c}"],
                "recompute_times_s": times[f"recompute:{c}"], "load_avg": load,
                "cached_min_ms_per_token": min(times[f"cached:{c}"]) * 1e3,
                "recompute_min_ms_per_token": min(times[f"recompute:{c}"]) * 1e3,
                "recompute_flops": flops.recompute_flops(model, c, b),
                "cached_flops": flops.decode_flops(model.cfg, b)["total"],
            })
            print(f"[cache_speedup] {name} ctx {c}: cached {cached * 1e3:.2f} ms/token, recompute "
                  f"{rec * 1e3:.1f} ms/token, speedup {rec / cached:.1f}x", flush=True)
        del db, fns
    label = f"{ctx['label']}; {bench.weights_label(infos)}"
    paths = write_results("cache_speedup", ctx["run"], records, hardware=ctx["hardware"],
                                config=bench.config_dict(cfg), label=label, out_dir=cfg.out_dir)
    print(f"[cache_speedup] wrote {paths[0]}")
    return {"records": records, "paths": paths, "run": ctx["run"]}


@hydra.main(config_path="pkg://mamba2_jax.eval.conf", config_name="cache_speedup", version_base="1.3")
def main(cfg) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
