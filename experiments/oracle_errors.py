"""Foundation fidelity figures: chunked JAX prefill vs the float64 sequential oracle (mamba2_jax/eval/oracle.py).

Writes results/oracle/errors.json (+ .csv): per (variant, initial state, chunk size) the max relative
error of logits and hidden states (max|jax-ref| / max|ref|) and the elementwise error distribution
(median, p99).  fp32, matmul precision "highest".  Usage: python experiments/oracle_errors.py
"""

import jax
import numpy as np
import pandas as pd

from mamba2_jax.eval.oracle import CHUNKS, VARIANTS, jax_cache_from_oracle, oracle_run
from mamba2_jax.eval.provenance import provenance
from mamba2_jax.eval.results import write_document
from mamba2_jax.fileio import atomic_write
from mamba2_jax.loading import model_from_state_dict
from mamba2_jax.paths import results_dir


def main() -> None:
    jax.config.update("jax_default_matmul_precision", "highest")
    rows = []
    for variant in VARIANTS:
        for init in (False, True):
            cfg0, sd, _, ids, state, ref_logits, ref_hidden = oracle_run(variant, init)
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
    out = results_dir() / "oracle"
    summary = {"worst_logits_max_rel": max(r["logits_max_rel"] for r in rows),
               "worst_hidden_max_rel": max(r["hidden_max_rel"] for r in rows), "tolerance": 1e-5}
    doc = {"experiment": "oracle_errors", "precision": {"param_dtype": "float32", "state_dtype": "float32",
                                                        "matmul_precision": "highest"},
           "weights": "synthetic (mamba_ssm init, norms/D/dt_bias perturbed)", "summary": summary, "rows": rows,
           "provenance": provenance()}
    write_document(out / "errors.json", doc, experiment="oracle", run="errors", records=rows)
    atomic_write(out / "errors.csv", lambda f: pd.DataFrame(rows).to_csv(f, index=False), binary=False)
    print(summary)


if __name__ == "__main__":
    main()
