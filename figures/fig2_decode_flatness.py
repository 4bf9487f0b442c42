"""Figure 2: decode ms/token vs context length (flatness of the O(1) cache), per model and device.

Input: results/sweep/*.json (experiments/sweep.py; make sweep), records with kind == "decode".
"""

from __future__ import annotations

import sys
from pathlib import Path

from mamba2_jax.eval import report, reported

from . import style

NAME = "fig2_decode_flatness"
TITLE = "decode ms/token vs context length"
DESCRIPTION = """
    (a) median ms per generated token of the compiled decode loop, started from a cache prefilled to each context
    length, per model (colour) and device/run (line style). (b) the same normalised to the shortest context: a flat
    line is sequence-length-independent decode (the O(1) cache). The paper reports sequence-length-independent
    decode on {device} across all model scales ({cite})."""


def build(results: Path) -> style.Figure:
    import matplotlib.pyplot as plt

    claim = reported.claim("decode_flat_l40s")
    flat_band = float(claim["tolerance"]["value"]) - 1.0   # max/min within 1 + band counts as flat
    docs = style.need(results, "sweep", "decode")
    models = style.models_of(docs)
    colors = style.model_colors(models)
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(9.0, 3.5))
    contexts, run_handles, spreads, ally = set(), [], [], []
    for i, (_, d) in enumerate(docs):
        ls, mk = style.run_legend(docs, i, run_handles)
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
            spreads.append(f"{m} on {report.bench_device_short(d)}: max/min ms/token = {max(y) / min(y):.3f} over "
                           f"contexts {x[0]}..{x[-1]}")
    for ax in (ax0, ax1):
        style.pow2_axis(ax, contexts)
        ax.set_xlabel("context length before decoding (tokens)")
    ax0.set_yscale("log")
    ax0.set_ylim(min(ally) / 2.5, max(ally) * 2.5)   # at least a decade: a flat curve looks flat
    style.plain_log(ax0)
    ax0.set_ylabel("decode ms per token")
    ax0.set_title("(a) cached decode latency")
    ax1.axhspan(1 - flat_band, 1 + flat_band, color=style.REFERENCE_GREY, alpha=0.15, lw=0)
    ax1.axhline(1.0, color="#777777", lw=0.8)
    ax1.set_ylabel("ms/token relative to shortest context")
    ax1.set_title(f"(b) flatness (grey: +-{flat_band:.0%})")
    lo, hi = ax1.get_ylim()
    ax1.set_ylim(min(lo, 0.5), max(hi, 1.5))
    ax0.legend(handles=style.model_handles(models, colors), loc="best")
    # long handles: at the default length the marker hides the dashes and every run looked solid
    ax1.legend(handles=run_handles, loc="upper left", handlelength=4.5, title="run (line style, marker)",
               title_fontsize=7.5)
    description = style.prose(DESCRIPTION, device=reported.device_name(claim), cite=reported.cite(claim))
    return style.Figure(fig, NAME, TITLE, description, style.bench_provenance_lines(docs), spreads,
                        style.bench_footer(docs))


main = style.figure_main(NAME, build, __doc__)


if __name__ == "__main__":
    sys.exit(main())
