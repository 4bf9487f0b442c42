"""Figure 4: cached decode tokens/s and HBM bandwidth utilisation (HBU) per model.

Input: results/throughput/*.json (experiments/throughput.py; make throughput), records with kind == "decode".
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import style  # noqa: E402

NAME = "fig4_decode"
PAPER_HBU = 0.64        # arXiv 2603.09555: decode up to 64% bandwidth utilisation, TPU v6e


def build(results: Path) -> style.Figure:
    import matplotlib.pyplot as plt

    docs = [(p, d) for p, d in style.load_bench(results, "throughput")
            if any(r.get("kind") == "decode" for r in d["records"])]
    if not docs:
        raise style.MissingInput(f"no decode records in results/throughput/*.json under {results} "
                                 f"(run `make throughput`)")
    models = sorted({r["model"] for _, d in docs for r in d["records"] if r.get("kind") == "decode"},
                    key=style.model_key)
    series, tps, hbu, ann_t, ann_h, bw = [], {}, {}, {}, {}, set()
    for p, d in docs:
        dev = style.bench_device_short(d)
        for r in (r for r in d["records"] if r.get("kind") == "decode"):
            s = f"{dev}, ctx {r.get('context')}" + (f" ({d['run']})" if len(docs) > 1 else "")
            if s not in series:
                series.append(s)
            tps[(s, r["model"])] = r["tokens_per_s"]
            ann_t[(s, r["model"])] = f"{r['ms_per_token']:.3g} ms"
            if r.get("hbu") is not None:
                hbu[(s, r["model"])] = 100 * r["hbu"]
                ann_h[(s, r["model"])] = f"{100 * r['hbu']:.0f}%"
            if r.get("bandwidth"):
                bw.add(f"{dev}: bandwidth {style.fmt_si(r['bandwidth'])}B/s; bytes per step "
                       f"{style.fmt_si(r.get('bytes_per_step'))}B ({r['model']})")
    colors = style.series_colors(series)
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(9.0, 3.6))
    style.grouped_bars(ax0, models, series, tps, colors=colors, annotate=ann_t)
    ax0.set_ylabel("decode tokens / s (batch 1)")
    ax0.set_title("(a) cached decode throughput (label: ms/token)")
    ax0.set_ylim(0, max(tps.values()) * (1.35 + 0.12 * len(series)))   # headroom for labels + legend
    style.grouped_bars(ax1, models, series, hbu, colors=colors, annotate=ann_h)
    ax1.axhline(100 * PAPER_HBU, color="#999999", ls="--", lw=1.0, label="paper: up to 64% HBU (TPU v6e, reported)")
    ax1.set_ylabel("HBU (% of memory bandwidth)")
    ax1.set_title("(b) bandwidth utilisation")
    ax1.set_ylim(0, max(list(hbu.values()) + [100 * PAPER_HBU, 100]) * (1.1 + 0.1 * len(series)))
    ax0.legend(loc="upper right")
    ax1.legend(loc="upper right")
    for ax in (ax0, ax1):
        ax.set_xlabel("model (130m = mamba2-130m, ...)" if any(m.startswith("mamba2-") for m in models) else "model")
    fig.tight_layout()
    style.add_footer(fig, style.bench_footer(docs))
    return style.Figure(
        fig=fig, stem=NAME, title="decode throughput and bandwidth utilisation",
        description=("Cached decode at batch 1: a compiled loop of N steps started from a cache prefilled to the "
                     "given context, median over repetitions. (a) tokens/s, bars labelled with ms/token. "
                     "(b) HBU = (bytes read and written per step: weights + state, mamba2_jax/eval/flops.py) / "
                     "(s per token) / the device's bandwidth. Dashed: the paper's up-to-64% on TPU v6e, a "
                     "reference mark only."),
        provenance=style.bench_provenance_lines(docs),
        notes=sorted(bw) + ["On CPU the bandwidth is measured at run start (a jitted donated copy); a CPU's caches "
                            "can hold part of a small model, so HBU above 100% is possible there."])


def main(argv=None) -> int:
    return style.run_figure(NAME, build, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
