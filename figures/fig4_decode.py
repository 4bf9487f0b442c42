"""Figure 4: cached decode tokens/s and HBM bandwidth utilisation (HBU) per model.

Input: results/throughput/*.json (experiments/throughput.py; make throughput), records with kind == "decode".
"""

from __future__ import annotations

import sys
from pathlib import Path

from mamba2_jax.eval import reported

from . import style

NAME = "fig4_decode"
TITLE = "decode throughput and bandwidth utilisation"
DESCRIPTION = """
    Cached decode at batch 1: a compiled loop of N steps started from a cache prefilled to the given context,
    median over repetitions. (a) tokens/s, bars labelled with ms/token. (b) HBU = (bytes read and written per step:
    weights + state, mamba2_jax/eval/flops.py) / (s per token) / the device's bandwidth. Dashed: the paper's
    up-to-{hbu:g}% on {device}, a reference mark only."""
NOTE = ("On CPU the bandwidth is measured at run start (a jitted donated copy); a CPU's caches can hold part of a "
        "small model, so HBU above 100% is possible there.")


def build(results: Path) -> style.Figure:
    claim = reported.claim("decode_hbu")
    paper_hbu, paper_dev = 100 * float(claim["value"]), reported.device_name(claim)
    docs = style.need(results, "throughput", "decode")
    models = style.models_of(docs, "decode")
    series, rows = style.bar_series(docs, "decode", lambda r: f"ctx {r.get('context')}")
    tps, hbu, ann_t, ann_h, bw = {}, {}, {}, {}, set()
    for s, dev, r in rows:
        tps[(s, r["model"])] = r["tokens_per_s"]
        ann_t[(s, r["model"])] = f"{r['ms_per_token']:.3g} ms"
        if r.get("hbu") is not None:
            hbu[(s, r["model"])] = 100 * r["hbu"]
            ann_h[(s, r["model"])] = f"{100 * r['hbu']:.0f}%"
        if r.get("bandwidth"):
            bw.add(f"{dev}: bandwidth {style.fmt_si(r['bandwidth'])}B/s; bytes per step "
                   f"{style.fmt_si(r.get('bytes_per_step'))}B ({r['model']})")
    fig = style.bar_figure(models, series, [
        style.BarPanel(tps, ann_t, "decode tokens / s (batch 1)", "(a) cached decode throughput (label: ms/token)",
                       ytop=max(tps.values()) * (1.35 + 0.12 * len(series))),   # headroom for labels + legend
        style.BarPanel(hbu, ann_h, "HBU (% of memory bandwidth)", "(b) bandwidth utilisation",
                       ytop=max(list(hbu.values()) + [paper_hbu, 100]) * (1.1 + 0.1 * len(series)),
                       reference=paper_hbu, reference_label=f"paper: {claim['display']} ({paper_dev}, reported)",
                       labels_inside=True)])     # the paper's line sits at the bars' height
    return style.Figure(fig, NAME, TITLE, style.prose(DESCRIPTION, hbu=paper_hbu, device=paper_dev),
                        style.bench_provenance_lines(docs), sorted(bw) + [NOTE], style.bench_footer(docs))


main = style.figure_main(NAME, build, __doc__)


if __name__ == "__main__":
    sys.exit(main())
