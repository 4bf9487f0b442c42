"""Foundation fidelity figures: chunked JAX prefill vs the float64 sequential oracle (tests/oracle.py).

Writes results/oracle/errors.json (+ .csv): per (variant, initial state, chunk size) the max relative
error of logits and hidden states (max|jax-ref| / max|ref|) and the elementwise error distribution
(median, p99).  fp32, matmul precision "highest".  Usage: python experiments/oracle_errors.py
"""

import json
import sys
from pathlib import Path

import jax

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
jax.config.update("jax_default_matmul_precision", "highest")

import numpy as np  # noqa: E402

from mamba2_jax.checkpoint import model_from_state_dict  # noqa: E402
from mamba2_jax.eval.provenance import provenance  # noqa: E402
from test_oracle import CHUNKS, VARIANTS, jax_cache_from_oracle, oracle_run  # noqa: E402


def main() -> None:
    rows = []
    for variant in VARIANTS:
        for init in (False, True):
            cfg0, sd, _, ids, state, ref_logits, ref_hidden = oracle_run(variant, init, None)
            for q in CHUNKS:
                cfg = cfg0.replace(chunk_size=q)
                model = model_from_state_dict(cfg, sd)
                L = 3 * q + 5
                cache = jax_cache_from_oracle(cfg, state) if init else None
                lg, _, hid = model.prefill(ids[:, :L], cache, collect_hidden=True)
                rl = ref_logits[:, :L]
                el = np.abs(np.asarray(lg, np.float64) - rl) / np.abs(rl).max()
                eh = [float(np.abs(np.asarray(hid[i], np.float64) - ref_hidden[i, :, :L]).max()
                            / np.abs(ref_hidden[i, :, :L]).max()) for i in range(cfg.n_layer)]
                rows.append({"variant": variant, "ngroups": cfg.ngroups, "d_mlp": cfg.d_mlp, "initial_state": init,
                             "chunk_size": q, "length": L, "logits_max_rel": float(el.max()),
                             "logits_median_rel": float(np.median(el)), "logits_p99_rel": float(np.percentile(el, 99)),
                             "hidden_max_rel": max(eh)})
                print({k: (f"{v:.2e}" if isinstance(v, float) else v) for k, v in rows[-1].items()}, flush=True)
    out = REPO / "results" / "oracle"
    out.mkdir(parents=True, exist_ok=True)
    summary = {"worst_logits_max_rel": max(r["logits_max_rel"] for r in rows),
               "worst_hidden_max_rel": max(r["hidden_max_rel"] for r in rows), "tolerance": 1e-5}
    doc = {"experiment": "oracle_errors", "precision": {"param_dtype": "float32", "state_dtype": "float32",
                                                        "matmul_precision": "highest"},
           "weights": "synthetic (mamba_ssm init, norms/D/dt_bias perturbed)", "summary": summary, "rows": rows,
           "provenance": provenance()}
    (out / "errors.json").write_text(json.dumps(doc, indent=2, default=str))
    import csv

    with open(out / "errors.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(summary)


if __name__ == "__main__":
    main()
