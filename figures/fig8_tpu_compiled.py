"""Figure 8: the paper's TPU v6e claims against the compiled (not run) v6e programs, per scale.

Input: results/tpu_compile/*.json (experiments/tpu_compile.py; make reproduce-tpu on a machine
without a TPU), read through mamba2_jax.eval.compiled; the paper's numbers from paper/reported.yaml.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mamba2_jax.eval import compiled, report, reported

from . import style

NAME = "fig8_tpu_compiled"
TITLE = "TPU v6e claims vs the compiled v6e programs (compiled, not run)"
DESCRIPTION = """
    Programs compiled for TPU v6e by libtpu's compiler on a machine without a TPU, in the paper's setting; nothing
    was run. (a) batch-1 prefill at 4096 tokens: the roofline bound on TFLOP/s per chip, max(FLOPs / 918 TFLOP/s,
    bytes / 1.64 TB/s), with bytes = the program's arguments + outputs (dark) and, for information, XLA's byte count
    (light; it also counts the weights' copies into on-chip VMEM, so it is not an HBM bound); grey line: the paper's
    ~140 TFLOPS. (b) cached decode: tokens/s of one decode step at 100% HBU (the bound) and at the paper's 64% HBU.
    (c) HBM per chip of the scale's largest compiled program against the chip's {hbm}. Within a bound is plausible,
    not reproduced ({cite})."""


def build(results: Path) -> style.Figure:
    import matplotlib.pyplot as plt

    comp = compiled.load_compiled(results)
    if not comp:
        raise style.MissingInput("no results/tpu_compile/*.json (run `make reproduce-tpu`)")
    pre = {x["model"]: x for x in compiled.implications(reported.claim("prefill_tflops"), comp)}
    dec = {x["model"]: x for x in compiled.implications(reported.claim("decode_hbu"), comp)}
    models = sorted(comp, key=report.model_key)
    fig, (a0, a1, a2) = plt.subplots(1, 3, figsize=(11.0, 3.6))
    # (a) prefill
    series = ["bound (min bytes)", "with XLA's byte count"]
    vals = {}
    for m in models:
        if m in pre:
            vals[(series[0], m)] = pre[m]["bound_tflops"]
            vals[(series[1], m)] = pre[m]["xla_bound_tflops"]
    cols = {series[0]: style.PALETTE[0], series[1]: "#9CC3E0"}
    style.grouped_bars(a0, models, series, vals, colors=cols, log=True)
    a0.axhline(float(reported.claim("prefill_tflops")["value"]), color=style.REFERENCE_GREY, ls="--", lw=1.2,
               label="paper ~140 TFLOPS")
    a0.set_ylim(min([*vals.values(), 140.0]) / 4, max(vals.values()) * 3)
    a0.set_ylabel("TFLOP/s per chip (upper bound)")
    a0.set_title("(a) prefill, L = 4096, batch 1")
    a0.legend(loc="upper right")
    # (b) decode
    s2 = ["100% HBU (bound)", "64% HBU (paper)"]
    v2 = {}
    for m in models:
        if m in dec:
            v2[(s2[0], m)] = dec[m]["bound_tokens_per_s"]
            v2[(s2[1], m)] = dec[m]["claim_tokens_per_s"]
    style.grouped_bars(a1, models, s2, v2, colors={s2[0]: style.PALETTE[2], s2[1]: style.REFERENCE_GREY}, log=True)
    a1.set_ylim(min(v2.values()) / 4, max(v2.values()) * 3)
    a1.set_ylabel("decode tokens/s per chip")
    a1.set_title("(b) cached decode step, batch 1")
    a1.legend(loc="upper right")
    # (c) HBM
    hbm = None
    v3 = {}
    for m in models:
        recs = list(comp[m]["records"].values())
        need = max(r["bytes_needed_per_device"] for r in recs)
        hbm = recs[0]["hbm_bytes_per_device"]
        v3[("largest program", m)] = need / 2**30
    style.grouped_bars(a2, models, ["largest program"], v3, colors={"largest program": style.PALETTE[1]})
    if hbm:
        a2.axhline(hbm / 2**30, color="#777777", lw=1.0, label=f"HBM per chip ({hbm / 2**30:.1f} GiB)")
    a2.set_ylabel("GiB per chip")
    a2.set_title("(c) HBM needed per chip")
    a2.set_ylim(0, (hbm or max(v3.values()) * 2**30) / 2**30 * 1.25)
    a2.legend(loc="center right")
    for ax in (a0, a1, a2):
        ax.tick_params(axis="x", labelrotation=30)
    notes = []
    for m in models:
        c = comp[m]
        notes.append(f"{m}: {len(c['records'])} programs compiled ({', '.join(sorted(c['records']))})")
        if m in pre:
            notes.append(f"{m} prefill-L4096: {pre[m]['flops'] / 1e12:.3g} TFLOP, bound {pre[m]['bound_tflops']:.4g} "
                         f"TFLOP/s; paper 140: {pre[m]['verdict']}")
        if m in dec:
            notes.append(f"{m} step: {dec[m]['min_bytes'] / 1e9:.3g} GB per token, bound "
                         f"{dec[m]['bound_tokens_per_s']:,.0f} tokens/s; 64% HBU = {dec[m]['claim_tokens_per_s']:,.0f}")
    prov = []
    for m in models:
        d = comp[m]["doc"]
        v = (d.get("provenance") or {}).get("compile") or {}
        prov.append(f"- {m}: {d.get('status')}; topology {v.get('topology')}; jax {v.get('jax')}, libtpu "
                    f"{v.get('libtpu')}; git {report.short_sha(d.get('provenance'))}; {report.rel(comp[m]['path'])}")
    desc = style.prose(DESCRIPTION, hbm=f"{hbm / 2**30:.1f} GiB" if hbm else "HBM",
                       cite=reported.cite(reported.claim("prefill_tflops")))
    summary = "Device: TPU v6e (compiled by libtpu, not run)\nPrecision: the paper profile's (float32 params, " \
              "matmul precision default)\nWeights: none (shapes only)"
    return style.Figure(fig, NAME, TITLE, desc, prov, notes, summary)


main = style.figure_main(NAME, build, __doc__)


if __name__ == "__main__":
    sys.exit(main())
