"""Figure 3: batch-1 prefill throughput (tokens/s, TFLOPS) and MFU per model.

Input: results/throughput/*.json (experiments/throughput.py; make throughput), records with kind == "prefill".
"""

from __future__ import annotations

import sys
from pathlib import Path

from mamba2_jax.eval import reported

from . import style

NAME = "fig3_prefill"
TITLE = "prefill throughput and MFU"
DESCRIPTION = """
    Batch-1 prefill of L tokens (last-position logits), median over repetitions after a warm-up compile. (a)
    tokens/s (log scale when the values span more than 20x), bars labelled with achieved TFLOP/s (analytic FLOPs,
    mamba2_jax/eval/flops.py). (b) MFU = achieved FLOP/s / the device's peak for the precision used. Dashed: the
    paper's {mfu} (about {tflops}) on {device}, a reference mark only."""
NOTE = ("On CPU the peak is measured at run start (a jitted matmul), so MFU is relative to that measurement, not a "
        "datasheet number.")


def build(results: Path) -> style.Figure:
    mfu_claim, tflops_claim = reported.claim("prefill_mfu"), reported.claim("prefill_tflops")
    paper_mfu, paper_dev = 100 * float(mfu_claim["value"]), reported.device_name(mfu_claim)
    docs = style.need(results, "throughput", "prefill")
    models = style.models_of(docs, "prefill")
    series, rows = style.bar_series(docs, "prefill", lambda r: f"L={r['length']}", sort=lambda r: r["length"])
    tps, mfu, ann_t, ann_m, peak_notes = {}, {}, {}, {}, set()
    for s, dev, r in rows:
        tps[(s, r["model"])] = r["tokens_per_s"]
        ann_t[(s, r["model"])] = f"{r['tflops']:.3g} TF/s" if r.get("tflops") is not None else None
        if r.get("mfu") is not None:
            mfu[(s, r["model"])] = 100 * r["mfu"]
            ann_m[(s, r["model"])] = f"{100 * r['mfu']:.1f}%"
        if r.get("peak_note"):
            peak_notes.add(f"{dev}: {r['peak_note']} = {style.fmt_si(r.get('peak_flops'))}FLOP/s")
    wide = max(tps.values()) / max(min(tps.values()), 1e-30) > 20      # log scale only for a wide range
    headroom = 1.35 + 0.12 * len(series)                                 # room for labels + legend
    fig = style.bar_figure(models, series, [
        style.BarPanel(tps, ann_t, "prefill tokens / s (batch 1)" + (" [log]" if wide else ""),
                       "(a) prefill throughput (label: achieved TFLOP/s)", log=wide,
                       ytop=max(tps.values()) * headroom),
        style.BarPanel(mfu, ann_m, "MFU (% of peak FLOP/s)", "(b) model FLOP utilisation",
                       ytop=max(list(mfu.values()) + [paper_mfu]) * headroom, reference=paper_mfu,
                       reference_label=f"paper: {paper_mfu:g}% MFU ({paper_dev}, reported)",
                       empty="no MFU in these results\n(no FLOP count recorded, e.g. make bench)")])
    description = style.prose(DESCRIPTION, mfu=mfu_claim["display"], device=paper_dev,
                              tflops=f"{tflops_claim['value']:g} {tflops_claim['unit']}")
    return style.Figure(fig, NAME, TITLE, description, style.bench_provenance_lines(docs),
                        sorted(peak_notes) + [NOTE], style.bench_footer(docs))


main = style.figure_main(NAME, build, __doc__)


if __name__ == "__main__":
    sys.exit(main())
