"""Figure 3: batch-1 prefill throughput (tokens/s, TFLOPS) and MFU per model.

Input: results/throughput/*.json (experiments/throughput.py; make throughput), records with kind == "prefill".
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import style  # noqa: E402

NAME = "fig3_prefill"
PAPER_MFU = 0.15        # arXiv 2603.09555: ~140 TFLOPS single-stream prefill, 15% MFU, TPU v6e


def build(results: Path) -> style.Figure:
    import matplotlib.pyplot as plt

    docs = [(p, d) for p, d in style.load_bench(results, "throughput")
            if any(r.get("kind") == "prefill" for r in d["records"])]
    if not docs:
        raise style.MissingInput(f"no prefill records in results/throughput/*.json under {results} "
                                 f"(run `make throughput`)")
    models = sorted({r["model"] for _, d in docs for r in d["records"] if r.get("kind") == "prefill"},
                    key=style.model_key)
    series, tps, mfu, ann_t, ann_m, peak_notes = [], {}, {}, {}, {}, set()
    for p, d in docs:
        dev = style.bench_device_short(d)
        for r in sorted((r for r in d["records"] if r.get("kind") == "prefill"), key=lambda r: r["length"]):
            s = f"{dev}, L={r['length']}" + (f" ({d['run']})" if len(docs) > 1 else "")
            if s not in series:
                series.append(s)
            tps[(s, r["model"])] = r["tokens_per_s"]
            ann_t[(s, r["model"])] = f"{r['tflops']:.3g} TF/s" if r.get("tflops") is not None else None
            if r.get("mfu") is not None:
                mfu[(s, r["model"])] = 100 * r["mfu"]
                ann_m[(s, r["model"])] = f"{100 * r['mfu']:.1f}%"
            if r.get("peak_note"):
                peak_notes.add(f"{dev}: {r['peak_note']} = {style.fmt_si(r.get('peak_flops'))}FLOP/s")
    colors = style.series_colors(series)
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(9.0, 3.6))
    wide = max(tps.values()) / max(min(tps.values()), 1e-30) > 20      # log scale only for a wide range
    style.grouped_bars(ax0, models, series, tps, colors=colors, annotate=ann_t, log=wide)
    if wide:
        style.plain_log(ax0)
    else:
        ax0.set_ylim(0, max(tps.values()) * (1.35 + 0.12 * len(series)))   # headroom for labels + legend
    ax0.set_ylabel("prefill tokens / s (batch 1)" + (" [log]" if wide else ""))
    ax0.set_title("(a) prefill throughput (label: achieved TFLOP/s)")
    style.grouped_bars(ax1, models, series, mfu, colors=colors, annotate=ann_m)
    ax1.axhline(100 * PAPER_MFU, color="#999999", ls="--", lw=1.0, label="paper: 15% MFU (TPU v6e, reported)")
    ax1.set_ylabel("MFU (% of peak FLOP/s)")
    ax1.set_title("(b) model FLOP utilisation")
    if not mfu:
        ax1.text(0.5, 0.5, "no MFU in these results\n(no FLOP count recorded, e.g. make bench)", ha="center",
                 va="center", transform=ax1.transAxes, fontsize=8, color="#555555")
    ymax = max(list(mfu.values()) + [100 * PAPER_MFU])
    ax1.set_ylim(0, ymax * (1.35 + 0.12 * len(series)))
    ax0.legend(loc="upper right")
    ax1.legend(loc="upper right")
    for ax in (ax0, ax1):
        ax.set_xlabel("model (130m = mamba2-130m, ...)" if any(m.startswith("mamba2-") for m in models) else "model")
    fig.tight_layout()
    style.add_footer(fig, style.bench_footer(docs))
    return style.Figure(
        fig=fig, stem=NAME, title="prefill throughput and MFU",
        description=("Batch-1 prefill of L tokens (last-position logits), median over repetitions after a "
                     "warm-up compile. (a) tokens/s (log scale when the values span more than 20x), bars labelled with achieved TFLOP/s "
                     "(analytic FLOPs, mamba2_jax/eval/flops.py). (b) MFU = achieved FLOP/s / the device's peak for "
                     "the precision used. Dashed: the paper's ~15% MFU (about 140 TFLOPS) on TPU v6e, a "
                     "reference mark only."),
        provenance=style.bench_provenance_lines(docs),
        notes=sorted(peak_notes) + ["On CPU the peak is measured at run start (a jitted matmul), so MFU is "
                                    "relative to that measurement, not a datasheet number."])


def main(argv=None) -> int:
    return style.run_figure(NAME, build, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
