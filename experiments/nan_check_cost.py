"""The cost of "NaN is never silent" (issue 22, item 6), in one process, alternating rounds.

    python experiments/nan_check_cost.py [--rounds 7] [--tokens 32] [--batches 1 16] [--load-models ...]

* **Decode:** the Generator's compiled decode loop (``bench.DecodeBench``: greedy, 130m shape, fp32)
  with the per-row non-finite-logit check (the default) and without it (``check_finite=False``,
  which exists only for this measurement), alternated with a streaming-bandwidth probe; the cost is
  1 - (tokens/s with the check ÷ tokens/s without), from the medians of the same rounds.
* **Loading:** the non-finite-weight check of ``read_state_dict`` (``checkpoint.check_finite``: the
  exponent-bit test in cache-sized chunks) on a random fp16 state dict of each model's shape, next to
  numpy's ``isfinite`` count (the check before this change), and for the first model the whole
  ``load_pretrained`` of an fp16 checkpoint with and without the check.

Writes results/nan_check_cost/<run>.json (+ csv) with provenance.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from mamba2_jax.eval import bench, models
from mamba2_jax.eval.results import write_results


def _random_fp16_sd(cfg, seed: int = 0) -> dict[str, np.ndarray]:
    from mamba2_jax.params import expected_shapes

    rng = np.random.default_rng(seed)
    return {k: (rng.standard_normal(shp, dtype=np.float32) * 0.02).astype(np.float16)
            for k, shp in expected_shapes(cfg).items() if not (k == "lm_head.weight" and cfg.tie_embeddings)}


def _isfinite_count(sd):
    return {k: int(v.size - np.count_nonzero(np.isfinite(v))) for k, v in sd.items()}


def _timed(f):
    def run():
        t0 = time.perf_counter()
        f()
        return time.perf_counter() - t0
    return run


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="mamba2-130m", help="decode model")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--load-models", nargs="*", default=["mamba2-130m", "mamba2-2.7b"])
    ap.add_argument("--load-rounds", type=int, default=3)
    ap.add_argument("--stream-bytes", type=int, default=1 << 30)
    ap.add_argument("--out-dir", default=None)
    ap.add_argument("--run", default=None)
    a = ap.parse_args(argv)

    from mamba2_jax.checkpoint import check_finite, write_checkpoint
    from mamba2_jax.eval import flops
    from mamba2_jax.loading import load_pretrained

    ctx = bench.setup_run({"profile_name": "cpu_bench", "cpu_measure": {"reps": 3}}, "nan_check_cost")
    recs = []
    # -- decode ------------------------------------------------------------------------------------
    model, info = models.build_model(models.load_model_spec(a.model), dtype="float32")
    fns, dbs = {}, {}
    for b in a.batches:
        for chk in (True, False):
            db = bench.DecodeBench(model, n_tokens=a.tokens, batch=b, check_finite=chk)
            db.add_context("c0", 0)
            dbs[b, chk] = db
            fns[f"decode:b{b}:{'check' if chk else 'nocheck'}"] = (lambda db=db: db.run("c0") / a.tokens)
        print(f"[nan_check_cost] decode batch {b} compiled", flush=True)
    times, bw, stream_rec, (load0, load1) = bench.alternate_with_stream(fns, a.rounds, a.stream_bytes)
    recs.append(stream_rec)
    for b in a.batches:
        by = flops.decode_bytes(model.cfg, b, "float32")["total"]
        t_on, t_off = times[f"decode:b{b}:check"], times[f"decode:b{b}:nocheck"]
        s_on, s_off = bench.median(t_on), bench.median(t_off)
        for chk, t, s in ((True, t_on, s_on), (False, t_off, s_off)):
            recs.append({"metric": "decode_tokens_per_s", "value": b / s, "unit": "tokens/s", "batch": b,
                         "nonfinite_check": chk, "median_s": s, "min_s": min(t), "times_s": t,
                         "bandwidth_fraction": by / s / bw, "model": a.model, "dtype": "float32"})
        cost = 1.0 - s_off / s_on
        recs.append({"metric": "decode_nonfinite_check_cost", "value": cost, "unit": "fraction", "batch": b,
                     "min_based": 1.0 - min(t_off) / min(t_on), "model": a.model,
                     "note": "1 - tokens/s(check) / tokens/s(no check), medians of the same rounds"})
        print(f"[nan_check_cost] decode batch {b}: {b / s_on:.1f} tok/s with the check, {b / s_off:.1f} without: "
              f"cost {100 * cost:+.2f}% (by minima {100 * (1 - min(t_off) / min(t_on)):+.2f}%)", flush=True)
    del dbs, model, fns
    # -- loading -----------------------------------------------------------------------------------
    for i, name in enumerate(a.load_models):
        cfg = models.model_config(models.load_model_spec(name))
        sd = _random_fp16_sd(cfg)
        nbytes = sum(v.nbytes for v in sd.values())
        assert check_finite(sd) == {}
        lt = bench.alternate({"bits": _timed(lambda sd=sd: check_finite(sd)),
                              "isfinite": _timed(lambda sd=sd: _isfinite_count(sd))}, a.load_rounds)
        s_new, s_old = bench.median(lt["bits"]), bench.median(lt["isfinite"])
        rec = {"metric": "load_nonfinite_check_s", "value": s_new, "unit": "s", "model": name,
               "stored_dtype": "float16", "bytes": nbytes, "times_s": lt["bits"], "bytes_per_s": nbytes / s_new,
               "numpy_isfinite_s": s_old, "numpy_isfinite_times_s": lt["isfinite"]}
        print(f"[nan_check_cost] {name}: check {s_new:.2f} s for {nbytes / 1e9:.2f} GB fp16 "
              f"({nbytes / s_new / 1e9:.2f} GB/s); numpy isfinite count {s_old:.2f} s", flush=True)
        if i == 0:  # the whole load, with and without the check
            with tempfile.TemporaryDirectory() as tmp:
                d = write_checkpoint(cfg, sd, os.path.join(tmp, "ck"))
                lp = bench.alternate({"with": _timed(lambda d=d: load_pretrained(d)),
                                      "without": _timed(lambda d=d: load_pretrained(d, allow_nonfinite=True))},
                                     a.load_rounds)
            w, wo = bench.median(lp["with"]), bench.median(lp["without"])
            rec.update({"load_pretrained_s": w, "load_pretrained_times_s": lp["with"],
                        "load_pretrained_unchecked_s": wo, "load_pretrained_unchecked_times_s": lp["without"],
                        "load_cost_fraction": 1.0 - wo / w})
            print(f"[nan_check_cost] {name}: load_pretrained (fp16 .bin → fp32) {w:.2f} s checked, {wo:.2f} s "
                  f"unchecked: cost {100 * (1 - wo / w):+.1f}%", flush=True)
        recs.append(rec)
        del sd
    paths = write_results("nan_check_cost", a.run or ctx["run"], recs, hardware=ctx["hardware"], config=vars(a),
                          label=f"{ctx['label']}; {bench.weights_label([info])}", out_dir=a.out_dir,
                          extra={"load_avg": [load0, load1]})
    print(f"[nan_check_cost] wrote {paths[0]}")
    return {"records": recs, "paths": paths}


if __name__ == "__main__":
    main()
