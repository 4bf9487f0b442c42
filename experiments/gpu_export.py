"""Every program of the paper's suite exported for CUDA with ``jax.export`` (StableHLO), serialized,
and checked for custom calls: the portable artifact a GPU host would load, made without a GPU.

    python experiments/gpu_export.py [--models mamba2-130m,...] [--profile paper] [--out results/gpu_export]

Programs per scale (as experiments/tpu_compile.py): the prefill (last-position logits) at every
length the profile measures, one decode step, and the decode loop of ``decode_tokens`` tokens; in
the profile's dtype and matmul precision, with the CUDA structure policy.  Serialization needs the
``flatbuffers`` package (``make install-cuda-plugin`` puts it in .cuda/).  Writes
``<out>/<model>.json`` (one record per program, with provenance).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tpu_compile import key, paper_suite, programs

from mamba2_jax.paths import results_dir


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=None)
    ap.add_argument("--profile", default="paper")
    ap.add_argument("--out", default=None)
    ap.add_argument("--phase", default="all", choices=["claims", "all"],
                    help="claims: the step, the decode loop and the headline prefill only")
    a = ap.parse_args(argv)

    from mamba2_jax.compile import export_program
    from mamba2_jax.config import get_preset
    from mamba2_jax.eval.provenance import git_info, provenance
    from mamba2_jax.eval.results import write_document

    suite = paper_suite(a.profile)
    models = a.models.split(",") if a.models else suite["models"]
    out = Path(a.out) if a.out else results_dir() / "gpu_export"
    git = git_info()
    bad = 0
    for name in models:
        recs = []
        for p in programs(suite, a.phase):
            r = export_program(get_preset(name), p["program"], platforms=("cuda",), batch=suite["batch"],
                               dtype=suite["dtype"], precision=suite["matmul_precision"],
                               **{k: v for k, v in p.items() if k != "program"})
            r["key"] = key(p)
            recs.append(r)
            bad += bool(r["custom_calls"]) or r["serialized_bytes"] is None
            print(f"[gpu_export] {name} {r['key']}: exported for {r['platforms']} in {r['export_s']:.1f} s, "
                  f"{r['serialized_bytes']} bytes serialized, custom calls {r['custom_calls'] or 'none'}"
                  + (f", serialize error {r['serialize_error']}" if r["serialize_error"] else ""), flush=True)
        write_document(out / f"{name}.json", {
            "label": f"{suite['profile']}-cuda-export", "status": "exported for CUDA (StableHLO), not compiled or run",
            "config": {"suite": suite, "model": name, "argv": sys.argv[1:]},
            "provenance": provenance(git=git)}, experiment="gpu_export", run=name, records=recs,
            hardware={"profile": {"name": "none"}, "device": {"platform": "cuda", "exported_only": True},
                      "matches_device": False})
    print(f"[gpu_export] done: {out}/; {bad} program(s) with custom calls or not serializable")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
