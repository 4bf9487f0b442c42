"""The prefill length curve of ``make bench`` alone, for lengths too slow for every run:
``python experiments/bench_curves.py --lengths 4096 262144`` → results/bench_curves/<run>.json.
The curves themselves are :mod:`mamba2_jax.eval.curves`."""

from __future__ import annotations

from mamba2_jax.eval import bench
from mamba2_jax.eval import models as model_specs
from mamba2_jax.eval.curves import length_curve
from mamba2_jax.eval.results import write_results


def main(argv=None):
    """``python experiments/bench_curves.py --lengths 4096 262144``: the length curve alone
    (results/bench_curves/<run>.json), for lengths too slow for every ``make bench``."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--model", default="mamba2-130m")
    ap.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384, 65536, 262144])
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--segment", type=int, default=65536)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out-dir", default=None)
    a = ap.parse_args(argv)
    ctx = bench.setup_run({"profile_name": "cpu_bench", "cpu_measure": {"reps": 3}}, "bench_curves")
    recs = length_curve(model_specs.load_model_spec(a.model), a.lengths, a.n_layer, a.rounds, "float32",
                        segment=a.segment)
    for r in recs:
        r["model"] = a.model
        print(f"[bench_curves] L={r['length']}: {r['value']:.0f} us/token, x{r['ratio_to_shortest']:.2f} vs shortest"
              f"{' (segmented)' if r['segment'] else ''}", flush=True)
    paths = write_results("bench_curves", ctx["run"], recs, hardware=ctx["hardware"], config=vars(a),
                                label=f"{ctx['label']}; synthetic (random-init) weights", out_dir=a.out_dir)
    print(f"[bench_curves] wrote {paths[0]}")


if __name__ == "__main__":
    main()
