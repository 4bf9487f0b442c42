"""Figure 9: this project against its CPU peers, one alternating run (make bench-peers).

Input: results/peers/*.json (experiments/peers.py), records with metric ``tokens_per_s`` and a
``task`` (prefill_{full,last}_<L>, decode, batched_b<b>, with a ``_<variant>`` suffix for the
lower-precision rows).  One figure per newest peers document that has per-task records.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mamba2_jax.eval.results import load_results

from . import style

NAME = "fig9_peers"
TITLE = "CPU peers: prefill, decode and batched decode, one alternating run"
DESCRIPTION = """
    Median tokens/s over the rounds of one run in which every peer (this project; mamba2-jax 1.1.2; HF
    transformers, torch eager; llama.cpp through its C API) ran all its tasks in turn on the same random weights.
    (a) prefill at each prompt length, with the logits of every position ("full") or of the last one ("last");
    mamba2-jax 1.1.2 always computes full logits. (b) decode at batch 1 after a 128-token prompt, and batched decode
    (tokens/s over all rows) at each batch size. Hatched bars are lower precision (this project in bf16; llama.cpp
    GGUF f16 / bf16 / q8_0): shown, never ranked against fp32."""

PEER_ORDER = ["ours", "llama_cpp", "hf_transformers", "mamba2_jax_1_1_2"]
HATCH = {"bf16": "//", "f16": "\\\\", "q8_0": "xx"}  # lower-precision variants, one pattern each
PEER_LABEL = {"ours": "this project", "llama_cpp": "llama.cpp", "hf_transformers": "HF transformers",
              "mamba2_jax_1_1_2": "mamba2-jax 1.1.2"}


def _docs(results: Path):
    out = []
    for p, d in load_results("peers", results):
        if any(r.get("metric") == "tokens_per_s" and r.get("task") for r in d.get("records") or []):
            for r in d["records"]:
                r.setdefault("weights", "random-init")
            out.append((p, d))
    return out


def _series(recs, want):
    """{(peer, variant, lower_precision): {task_label: tokens/s}} for the records ``want`` accepts."""
    out: dict = {}
    for r in recs:
        if r.get("metric") != "tokens_per_s" or not r.get("task") or not want(r):
            continue
        key = (r["peer"], r.get("variant") or "fp32", bool(r.get("lower_precision")))
        out.setdefault(key, {})[_label(r)] = r["value"]
    return out


def _label(r) -> str:
    if r.get("kind") == "prefill":
        return f"L={r['length']}\n{r.get('logits')}"
    if r.get("kind") == "decode":
        return "decode\nb=1"
    return f"batched\nb={r.get('batch')}"


def _bars(ax, series, title):
    import numpy as np

    cats = list(dict.fromkeys(c for s in series.values() for c in s))
    keys = sorted(series, key=lambda k: (PEER_ORDER.index(k[0]) if k[0] in PEER_ORDER else 9, k[2], k[1]))
    w = 0.8 / max(1, len(keys))
    colors = {}
    for i, k in enumerate(keys):
        peer, variant, lowp = k
        col = colors.setdefault(peer, style.PALETTE[len(colors) % len(style.PALETTE)])
        x = np.arange(len(cats)) + (i - (len(keys) - 1) / 2) * w
        y = [series[k].get(c, np.nan) for c in cats]
        hatch = HATCH.get(variant.removeprefix("gguf-"), "..") if lowp else None
        ax.bar(x, y, w, label=f"{PEER_LABEL.get(peer, peer)} {variant}" + (" (lower precision)" if lowp else ""),
               color=col, hatch=hatch, edgecolor="black" if lowp else None, lw=0.3)
    ax.set_xticks(np.arange(len(cats)))
    ax.set_xticklabels(cats, fontsize=7)
    ax.set_yscale("log")
    style.plain_log(ax)
    ax.set_ylabel("tokens/s (median)")
    ax.set_title(title)


def build(results: Path) -> style.Figure:
    import matplotlib.pyplot as plt

    docs = _docs(results)
    if not docs:
        raise style.MissingInput(f"no per-task peers records in results/peers/*.json under {results} "
                                 f"(run `make bench-peers`)")
    p, d = max(docs, key=lambda pd: str((pd[1].get("provenance") or {}).get("date_utc", "")))
    fig = plt.figure(figsize=(12.0, 4.8))
    grid = fig.add_gridspec(2, 2, height_ratios=[1, 6])
    ax_legend, ax0, ax1 = fig.add_subplot(grid[0, :]), fig.add_subplot(grid[1, 0]), fig.add_subplot(grid[1, 1])
    recs = d["records"]
    _bars(ax0, _series(recs, lambda r: r.get("kind") == "prefill"), "(a) prefill")
    _bars(ax1, _series(recs, lambda r: r.get("kind") in ("decode", "batched")), "(b) decode and batched decode")
    # one legend for both panels, in its own row above them: inside a panel it covers bars
    labels: dict = {}
    for ax in (ax0, ax1):
        for h, lab in zip(*ax.get_legend_handles_labels()):
            labels.setdefault(lab, h)
    ax_legend.axis("off")
    ax_legend.legend(list(labels.values()), list(labels), loc="center", ncol=4, fontsize=7, frameon=False)
    notes = [f"Skipped peers: {', '.join(f'{k} ({v.splitlines()[0]})' for k, v in (d.get('skipped') or {}).items())}"
             if d.get("skipped") else "No peer was skipped.",
             "Ratios (this project ÷ peer, fp32 rows only) are in the results document's `ratios`; the targets in "
             "`targets`."]
    return style.Figure(fig, NAME, TITLE, style.prose(DESCRIPTION), style.bench_provenance_lines([(p, d)]), notes,
                        style.bench_footer([(p, d)]))


main = style.figure_main(NAME, build, __doc__)


if __name__ == "__main__":
    sys.exit(main())
