"""Figure 2: decode ms/token vs context length (flatness of the O(1) cache), per model and device.

Input: results/sweep/*.json (experiments/sweep.py; make sweep), records with kind == "decode".
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import style  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

NAME = "fig2_decode_flatness"
FLAT_BAND = 0.10   # the +-10% band drawn in panel (b); the comparison table uses the same threshold


def build(results: Path) -> style.Figure:
    import matplotlib.pyplot as plt

    docs = [(p, d) for p, d in style.load_bench(results, "sweep")
            if any(r.get("kind") == "decode" for r in d["records"])]
    if not docs:
        raise style.MissingInput(f"no decode records in results/sweep/*.json under {results} (run `make sweep`)")
    models = sorted({r["model"] for _, d in docs for r in d["records"]}, key=style.model_key)
    colors = style.model_colors(models)
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(9.0, 3.5))
    contexts, run_handles, spreads, ally = set(), [], [], []
    for i, (p, d) in enumerate(docs):
        ls, mk = style.LINESTYLES[i % len(style.LINESTYLES)], style.MARKERS[i % len(style.MARKERS)]
        run_handles.append(Line2D([], [], color="#555555", ls=ls, marker=mk,
                                  label=f"{style.bench_device_short(d)} ({d.get('run')})"))
        for m in models:
            recs = sorted((r for r in d["records"] if r["model"] == m and r.get("kind") == "decode"),
                          key=lambda r: r["context"])
            if not recs:
                continue
            x = [r["context"] for r in recs]
            y = [r["ms_per_token"] for r in recs]
            contexts.update(x)
            ally += y
            ax0.plot(x, y, color=colors[m], ls=ls, marker=mk, label=None)
            ax1.plot(x, [v / y[0] for v in y], color=colors[m], ls=ls, marker=mk)
            spreads.append(f"{m} on {style.bench_device_short(d)}: max/min ms/token = {max(y) / min(y):.3f} over "
                           f"contexts {x[0]}..{x[-1]}")
    for ax in (ax0, ax1):
        style.pow2_axis(ax, contexts)
        ax.set_xlabel("context length before decoding (tokens)")
    ax0.set_yscale("log")
    ax0.set_ylim(min(ally) / 2.5, max(ally) * 2.5)   # at least a decade: a flat curve looks flat
    style.plain_log(ax0)
    ax0.set_ylabel("decode ms per token")
    ax0.set_title("(a) cached decode latency")
    ax1.axhspan(1 - FLAT_BAND, 1 + FLAT_BAND, color="#999999", alpha=0.15, lw=0)
    ax1.axhline(1.0, color="#777777", lw=0.8)
    ax1.set_ylabel("ms/token relative to shortest context")
    ax1.set_title(f"(b) flatness (grey: +-{FLAT_BAND:.0%})")
    lo, hi = ax1.get_ylim()
    ax1.set_ylim(min(lo, 0.5), max(hi, 1.5))
    model_handles = [Line2D([], [], color=colors[m], lw=2, label=m) for m in models]
    ax0.legend(handles=model_handles, loc="best")
    ax1.legend(handles=run_handles, loc="upper left")
    fig.tight_layout()
    style.add_footer(fig, style.bench_footer(docs))
    return style.Figure(
        fig=fig, stem=NAME, title="decode ms/token vs context length",
        description=("(a) median ms per generated token of the compiled decode loop, started from a cache "
                     "prefilled to each context length, per model (colour) and device/run (line style). "
                     "(b) the same normalised to the shortest context: a flat line is sequence-length-independent "
                     "decode (the O(1) cache). The paper reports sequence-length-independent decode on NVIDIA "
                     "L40S across all model scales (arXiv 2603.09555 v2 abstract)."),
        provenance=style.bench_provenance_lines(docs), notes=spreads)


def main(argv=None) -> int:
    return style.run_figure(NAME, build, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
