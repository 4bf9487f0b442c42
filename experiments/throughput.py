"""Throughput: batch-1 prefill (tokens/s, TFLOPS, MFU) and cached decode (ms/token, HBU) per model.

    python experiments/throughput.py                          # CPU smoke profile
    python experiments/throughput.py profile=paper hardware=tpu_v6e

Writes results/throughput/<run>.json (+ .csv).  FLOPs and bytes: mamba2_jax/eval/flops.py; timing:
mamba2_jax/eval/bench.py; peaks: mamba2_jax/hardware.py.
"""

from __future__ import annotations

import hydra

from mamba2_jax.eval import bench, flops
from mamba2_jax.eval.results import write_results


def run(cfg) -> dict:
    ctx = bench.setup_run(cfg, "throughput")
    prof = ctx["profile"]
    t = cfg.throughput
    reps, b = int(cfg.reps), int(cfg.batch)
    records, infos = [], []
    for name, model, info in bench.iter_models(cfg):
        infos.append(info)
        mcfg = model.cfg
        prec = (info.get("policy") or {}).get("matmul_precision")
        peak, peak_note = prof.peak_flops(info["dtype"], prec)
        bf16_peak = prof.peak.get("bfloat16")
        nd = (info.get("mesh") or {}).get("n_devices", 1)  # a mesh: utilisation against all its devices
        peak, bf16_peak = (None if peak is None else peak * nd), (None if bf16_peak is None else bf16_peak * nd)
        mesh = info.get("mesh")
        common = {"model": name, "dtype": info["dtype"], "matmul_precision": prec, "batch": b,
                  "weights": info["weights"], "num_params": info["num_params"],
                  "mesh": None if mesh is None else f"data={mesh['data']},model={mesh['model']}"}
        # all lengths compiled first, then timed in alternating rounds: a load spike is not a trend
        pbs = {int(L): bench.PrefillBench(model, int(L), b, last_only=bool(t.last_only), seed=int(cfg.seed))
               for L in t.prefill_lengths}
        load = bench.load_avg()
        ptimes = bench.alternate({L: pb.run for L, pb in pbs.items()}, reps)
        for L, pb in pbs.items():
            ts = ptimes[L]
            med = bench.median(ts)
            fl = flops.model_prefill_flops(model, int(L), b, last_only=bool(t.last_only))
            records.append({
                **common, "kind": "prefill", "length": int(L), "context": int(L),
                "compile_s": pb.compile_s, "first_run_s": pb.first_run_s,
                "median_s": med, "min_s": min(ts), "times_s": ts, "load_avg": [load, bench.load_avg()],
                "tokens_per_s": b * int(L) / med, "flops": fl["total"], "flops_matmul": fl["matmul"],
                "flops_ssd": fl["ssd"], "tflops": fl["total"] / med / 1e12,
                "peak_flops": peak, "peak_note": peak_note,
                "mfu": bench.utilisation(fl["total"], med, peak),
                "mfu_vs_bf16_peak": bench.utilisation(fl["total"], med, bf16_peak),
            })
            print(f"[throughput] {name} prefill L={L}: {med * 1e3:.1f} ms, {b * int(L) / med:,.0f} tok/s, "
                  f"{fl['total'] / med / 1e12:.3f} TFLOPS (compile {pb.compile_s:.1f} s)", flush=True)
        del pbs
        n = int(t.decode_tokens)
        db = bench.DecodeBench(model, n_tokens=n, batch=b, seed=int(cfg.seed))
        db.add_context("decode", int(t.decode_context))
        ts = db.times("decode", reps)
        med = bench.median(ts)
        by = flops.decode_bytes(mcfg, b, info["dtype"])
        df = flops.decode_flops(mcfg, b)
        per_tok = med / n
        records.append({
            **common, "kind": "decode", "length": n, "context": int(t.decode_context),
            "compile_s": db.compile_s, "first_run_s": db.first_run_s,
            "median_s": med, "min_s": min(ts), "times_s": ts,
            "ms_per_token": per_tok * 1e3, "tokens_per_s": b / per_tok,
            "bytes_per_step": by["total"], "achieved_bytes_per_s": by["total"] / per_tok,
            "bandwidth": prof.bandwidth,
            "hbu": bench.utilisation(by["total"], per_tok, prof.bandwidth and prof.bandwidth * nd),
            "flops": df["total"], "mfu": bench.utilisation(df["total"], per_tok, peak),
            "peak_flops": peak, "peak_note": peak_note,
        })
        print(f"[throughput] {name} decode: {per_tok * 1e3:.2f} ms/token, {b / per_tok:,.1f} tok/s, "
              f"HBU {records[-1]['hbu']} (compile {db.compile_s:.1f} s)", flush=True)
        del db
    label = f"{ctx['label']}; {bench.weights_label(infos)}"
    paths = write_results("throughput", ctx["run"], records, hardware=ctx["hardware"],
                                config=bench.config_dict(cfg), label=label, out_dir=cfg.out_dir)
    print(f"[throughput] wrote {paths[0]}")
    return {"records": records, "paths": paths, "run": ctx["run"]}


@hydra.main(config_path="pkg://mamba2_jax.eval.conf", config_name="throughput", version_base="1.3")
def main(cfg) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
