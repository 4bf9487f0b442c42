"""Figure 1: cached decode vs full-prefix recompute, speedup vs context length, per model.

Input: results/cache_speedup/*.json (experiments/cache_speedup.py; make cache-speedup).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import style  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

NAME = "fig1_cache_speedup"
PAPER_RANGE = (27.0, 36.0)   # arXiv 2603.09555 v2 abstract: 27x-36x at 4096 tokens, TPU v6e, five checkpoints
PAPER_CONTEXT = 4096


def build(results: Path) -> style.Figure:
    import matplotlib.pyplot as plt

    docs = style.load_bench(results, "cache_speedup")
    if not docs:
        raise style.MissingInput(f"no results/cache_speedup/*.json under {results} (run `make cache-speedup`)")
    models = sorted({r["model"] for _, d in docs for r in d["records"]}, key=style.model_key)
    colors = style.model_colors(models)
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(9.0, 3.5))
    contexts, speedups = set(), []
    run_handles = []
    for i, (p, d) in enumerate(docs):
        ls, mk = style.LINESTYLES[i % len(style.LINESTYLES)], style.MARKERS[i % len(style.MARKERS)]
        run_handles.append(Line2D([], [], color="#555555", ls=ls, marker=mk,
                                  label=f"{style.bench_device_short(d)} ({d.get('run')})"))
        for m in models:
            recs = sorted((r for r in d["records"] if r["model"] == m), key=lambda r: r["context"])
            if not recs:
                continue
            x = [r["context"] for r in recs]
            contexts.update(x)
            ax0.plot(x, [r["recompute_ms_per_token"] for r in recs], color=colors[m], ls="--", marker=mk, mfc="white")
            ax0.plot(x, [r["cached_ms_per_token"] for r in recs], color=colors[m], ls="-", marker=mk)
            ax1.plot(x, [r["speedup"] for r in recs], color=colors[m], ls=ls, marker=mk)
            speedups += [r["speedup"] for r in recs]
            for r in recs:
                if r.get("headline"):
                    k = models.index(m)          # stagger labels of models with similar speedups
                    ax1.annotate(f"{r['speedup']:.1f}x", (r["context"], r["speedup"]), textcoords="offset points",
                                 xytext=(5, 6 - 10 * k), fontsize=7, color=colors[m], va="center")
    # the paper's reported range, as a reference mark (a different device: see the caption)
    ax1.errorbar([PAPER_CONTEXT], [sum(PAPER_RANGE) / 2], yerr=[[sum(PAPER_RANGE) / 2 - PAPER_RANGE[0]],
                 [PAPER_RANGE[1] - sum(PAPER_RANGE) / 2]], fmt="none", ecolor="#999999", elinewidth=6, alpha=0.6)
    style.pow2_axis(ax0, contexts)
    style.pow2_axis(ax1, contexts | {PAPER_CONTEXT})
    for ax in (ax0, ax1):
        ax.set_xlabel("context length (tokens)")
    ax0.set_yscale("log")
    style.plain_log(ax0)
    ax0.set_ylabel("ms per generated token")
    ax0.set_title("(a) cost per token: cached decode vs recompute")
    ax1.set_yscale("log")
    ax1.set_ylim(min(speedups + [PAPER_RANGE[0]]) / 2, max(speedups + [PAPER_RANGE[1]]) * 3)
    style.plain_log(ax1)
    ax1.set_ylabel("speedup (recompute / cached)")
    ax1.set_title("(b) cached-decode speedup")
    model_handles = [Line2D([], [], color=colors[m], lw=2, label=m) for m in models]
    kind_handles = [Line2D([], [], color="#555555", ls="-", label="cached decode"),
                    Line2D([], [], color="#555555", ls="--", marker="o", mfc="white", label="full recompute")]
    ax0.legend(handles=model_handles + kind_handles, loc="best")
    paper_h = Line2D([], [], color="#999999", lw=6, alpha=0.6, label="paper: 27-36x at 4096 (TPU v6e, reported)")
    ax1.legend(handles=run_handles + [paper_h], loc="best")
    fig.tight_layout()
    style.add_footer(fig, style.bench_footer(docs))
    return style.Figure(
        fig=fig, stem=NAME, title="cached decode vs full-prefix recompute",
        description=("(a) ms per generated token of the compiled cached decode loop (solid) and of a full "
                     "last-position prefill over the whole prefix (dashed), per model, vs context length. "
                     "(b) speedup = recompute ms / cached ms; the headline context is annotated. The grey bar is "
                     "the range the paper reports (27x-36x at 4096 tokens on one TPU v6e, five checkpoints, "
                     "arXiv 2603.09555 v2 abstract); it is a reference mark, not a measurement on this device."),
        provenance=style.bench_provenance_lines(docs),
        notes=["Speedups measured on a CPU are not comparable with the paper's TPU v6e numbers "
               "(see paper/tables/comparison.md).",
               "Timings are medians of alternating repetitions (experiments/cache_speedup.py)."])


def main(argv=None) -> int:
    return style.run_figure(NAME, build, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
