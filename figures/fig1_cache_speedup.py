"""Figure 1: cached decode vs full-prefix recompute, speedup vs context length, per model.

Input: results/cache_speedup/*.json (experiments/cache_speedup.py; make cache-speedup).
"""

from __future__ import annotations

import sys
from pathlib import Path

from matplotlib.lines import Line2D

from mamba2_jax.eval import reported

from . import style

NAME = "fig1_cache_speedup"
TITLE = "cached decode vs full-prefix recompute"
DESCRIPTION = """
    (a) ms per token, cached decode (filled) and whole-prefix recompute (open); marker shape is the run.
    (b) speedup, recompute / cached. {runs_note} Grey: the paper's range ({display}, {device}), a reference
    mark, not measured here."""
NOTES = ["Speedups measured on a CPU are not comparable with the paper's {device} numbers "
         "(see paper/tables/comparison.md).",
         "Timings are medians of alternating repetitions (experiments/cache_speedup.py)."]


def build(results: Path) -> style.Figure:
    import matplotlib.pyplot as plt

    claim = reported.claim("cache_speedup_4096")      # the paper's range at its context, a reference mark
    paper_lo, paper_hi = (float(v) for v in claim["value"])
    paper_ctx, paper_dev = int(claim["comparable_when"]["context"]), reported.device_name(claim)
    docs = style.need(results, "cache_speedup")
    models = style.models_of(docs)
    colors = style.model_colors(models)
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(9.0, 3.5))
    contexts, speedups = set(), []
    run_handles = []
    labels = []     # (context, speedup, colour) of the headline points
    per_run = []    # contexts of each run: points of different runs are not joined into a trend
    for i, (_, d) in enumerate(docs):
        ls, mk = style.run_legend(docs, i, run_handles)
        for m in models:
            recs = sorted((r for r in d["records"] if r["model"] == m), key=lambda r: r["context"])
            if not recs:
                continue
            x = [r["context"] for r in recs]
            contexts.update(x)
            ax0.plot(x, [r["recompute_ms_per_token"] for r in recs], color=colors[m], ls="--", marker=mk, mfc="white")
            ax0.plot(x, [r["cached_ms_per_token"] for r in recs], color=colors[m], ls="-", marker=mk)
            ax1.plot(x, [r["speedup"] for r in recs], color=colors[m], ls=ls, marker=mk)
            per_run.append(len(x))
            speedups += [r["speedup"] for r in recs]
            labels += [(r["context"], r["speedup"], colors[m]) for r in recs if r.get("headline")]
    # labels at one context in the order of their values (highest on top), 11 points apart: models
    # with similar speedups were printed over each other
    for ctx in sorted({c for c, _, _ in labels}):
        at = sorted((lab for lab in labels if lab[0] == ctx), key=lambda lab: -lab[1])
        for k, (c, v, color) in enumerate(at):
            ax1.annotate(f"{v:.1f}x", (c, v), textcoords="offset points", xytext=(6, 11 * ((len(at) - 1) / 2 - k)),
                         fontsize=7, color=color, va="center")
    # the paper's reported range, as a reference mark (a different device: see the caption)
    mid = (paper_lo + paper_hi) / 2
    ax1.errorbar([paper_ctx], [mid], yerr=[[mid - paper_lo], [paper_hi - mid]], fmt="none",
                 ecolor=style.REFERENCE_GREY, elinewidth=6, alpha=0.6)
    style.pow2_axis(ax0, contexts)
    style.pow2_axis(ax1, contexts | {paper_ctx})
    for ax in (ax0, ax1):
        ax.set_xlabel("context length (tokens)")
    ax0.set_yscale("log")
    style.plain_log(ax0)
    ax0.set_ylabel("ms per generated token")
    ax0.set_title("(a) cost per token: cached decode vs recompute")
    ax1.set_yscale("log")
    ax1.set_ylim(min(speedups + [paper_lo]) / 2, max(speedups + [paper_hi]) * 3)
    style.plain_log(ax1)
    ax1.set_ylabel("speedup (recompute / cached)")
    ax1.set_title("(b) cached-decode speedup")
    model_handles = style.model_handles(models, colors)
    single = per_run and max(per_run) == 1
    # markers only when no run has a line to draw: a solid / dashed key would name lines that are not there
    kind_handles = [Line2D([], [], color="#555555", ls="none" if single else "-", marker="o",
                           label="cached decode (filled)"),
                    Line2D([], [], color="#555555", ls="none" if single else "--", marker="o", mfc="white",
                           label="full recompute (open)")]
    ax0.legend(handles=model_handles + kind_handles, loc="best")
    paper_h = Line2D([], [], color=style.REFERENCE_GREY, lw=6, alpha=0.6,
                     label=f"paper: {paper_lo:g}-{paper_hi:g}x at {paper_ctx} ({paper_dev}, reported)")
    if single:
        for h in run_handles:
            h.set_linestyle("none")
    ax1.legend(handles=run_handles + [paper_h], loc="best")
    runs_note = ("Each run measured one context: points are separate runs, not a trend." if single
                 else "Lines join the contexts of one run.")
    if single:
        ax1.text(0.02, 0.02, "one context per run: not a trend", transform=ax1.transAxes, fontsize=7,
                 color="#555555", va="bottom")
    words = {"runs_note": runs_note, "display": claim["display"], "device": paper_dev, "cite": reported.cite(claim),
             "n_paper": reported.count_word(len(reported.paper_models()))}
    return style.Figure(fig, NAME, TITLE, style.prose(DESCRIPTION, **words), style.bench_provenance_lines(docs),
                        [n.format(**words) for n in NOTES], style.bench_footer(docs))


main = style.figure_main(NAME, build, __doc__)


if __name__ == "__main__":
    sys.exit(main())
