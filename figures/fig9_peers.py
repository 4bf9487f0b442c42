"""Figure 9: this project against its CPU peers, one alternating run (make bench-peers).

Input: results/peers/*.json (experiments/peers.py), records with metric ``tokens_per_s`` and a
``task`` (prefill_{full,last}_<L>, decode, batched_b<b>, with a ``_<variant>`` suffix for the
lower-precision rows).  One figure per newest peers document that has per-task records.

Documents with ``peers_schema`` >= 2 (issue 28): ``llama_cpp`` is llama.cpp measured by its own tools
(llama-bench, llama-batched-bench) and ``llama_cpp_capi`` the C-API runner (full-logit prefill and the
calibration against the tools, in ``calibration``); before, ``llama_cpp`` was the C-API runner.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from matplotlib.ticker import LogLocator

from mamba2_jax.eval.results import load_results

from . import style

NAME = "fig9_peers"
TITLE = "CPU peers: prefill, decode and batched decode, one alternating run"
DESCRIPTION = """
    Median tokens/s of every peer, alternated in one run on the same random weights. (a) prefill per prompt
    length, logits of every position ("full") or the last ("last"); (b) decode at batch 1 and batched decode
    (all rows). Hatched: lower precision, never ranked. Grey x: a task that peer does not run (the notes say
    why)."""
# why a peer has no bar in a slot: the tasks its runner lists at setup (experiments/peers_runners/*.py)
NOT_RUN = {
    ("mamba2_jax_1_1_2", "prefill"): "its API has no last-position option: every prefill computes full logits",
    ("mamba2_jax_1_1_2", "batched"): "its runner has no batched decode (a Python decode loop at batch 1)",
    ("hf_transformers", "batched"): "its runner times batch-1 decode only",
    ("llama_cpp", "prefill"): "the lower-precision GGUFs run last-position prefill at the first length only",
    ("llama_cpp_capi", "batched"): "the C-API runner runs batch 1 only (peers.llama_cpp.capi_batch_sizes)",
    ("ours", "decode"): "bf16 runs batched decode only (peers.batch_dtypes); batch 1 is the batched b=1 bar",
}

PEER_ORDER = ["ours", "llama_cpp", "llama_cpp_capi", "hf_transformers", "mamba2_jax_1_1_2"]
HATCH = {"bf16": "//", "f16": "\\\\", "q8_0": "xx"}  # lower-precision variants, one pattern each
PEER_LABEL = {"ours": "this project", "llama_cpp": "llama.cpp", "hf_transformers": "HF transformers",
              "mamba2_jax_1_1_2": "mamba2-jax 1.1.2", "llama_cpp_capi": "llama.cpp C API"}
# peers_schema >= 2: llama_cpp is measured by llama.cpp's own tools
TOOL_LABELS = {"llama_cpp": "llama.cpp (llama-bench / llama-batched-bench)"}
TOOL_NOT_RUN = {("llama_cpp", "prefill"): "llama-bench's pp test returns the last position's logits only (full "
                                          "logits: the C-API runner); lower-precision GGUFs at the first length only"}


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


def _bars(ax, series, title, log=True):
    """Grouped bars; a slot a peer does not run gets a grey x at the axis base.  Returns the empty slots
    as (peer, variant, category)."""
    import numpy as np

    cats = list(dict.fromkeys(c for s in series.values() for c in s))
    keys = sorted(series, key=lambda k: (PEER_ORDER.index(k[0]) if k[0] in PEER_ORDER else 9, k[2], k[1]))
    w = 0.8 / max(1, len(keys))
    colors, empty = {}, []
    for i, k in enumerate(keys):
        peer, variant, lowp = k
        col = colors.setdefault(peer, style.PALETTE[len(colors) % len(style.PALETTE)])
        x = np.arange(len(cats)) + (i - (len(keys) - 1) / 2) * w
        y = [series[k].get(c, np.nan) for c in cats]
        hatch = HATCH.get(variant.removeprefix("gguf-"), "..") if lowp else None
        ax.bar(x, y, w, label=f"{PEER_LABEL.get(peer, peer)} {variant}" + (" (lower precision)" if lowp else ""),
               color=col, hatch=hatch, edgecolor="black" if lowp else None, lw=0.3)
        gaps = [(xx, c) for xx, c, v in zip(x, cats, y, strict=True) if np.isnan(v)]
        if gaps:
            ax.plot([g[0] for g in gaps], [0.03] * len(gaps), ls="none", marker="x", ms=4, color="#888888",
                    transform=ax.get_xaxis_transform(), label="not run by that peer (see notes)")
        empty += [(peer, variant, c) for _, c in gaps]
    ax.set_xticks(np.arange(len(cats)))
    ax.set_xticklabels(cats, fontsize=7)
    vals = [v for s in series.values() for v in s.values()]
    if log:
        # the base at the decade below the smallest bar, ticks at 1-2-5: the axis had two ticks and bars
        # rising from an arbitrary cut
        ax.set_yscale("log")
        ax.set_ylim(10 ** math.floor(math.log10(min(vals))), max(vals) * 1.5)
        style.plain_log(ax)
        ax.yaxis.set_minor_locator(LogLocator(base=10, subs="auto"))
    else:
        ax.set_ylim(0, max(vals) * 1.12)
    ax.set_ylabel("tokens/s (median" + (", log axis)" if log else ")"))
    ax.set_title(title)
    return empty


def _gap_notes(empty) -> list[str]:
    """One note per (peer, kind) without bars: which slots, and why (NOT_RUN)."""
    by: dict = {}
    for peer, variant, cat in empty:
        kind = "prefill" if cat.startswith("L=") else "decode" if cat.startswith("decode") else "batched"
        by.setdefault((peer, kind), []).append(f"{variant} {cat.replace(chr(10), ' ')}")
    return [f"Not run: {PEER_LABEL.get(p, p)}, {', '.join(v)}: {NOT_RUN.get((p, k), 'not in its task list')}."
            for (p, k), v in by.items()]


def build(results: Path) -> style.Figure:
    import matplotlib.pyplot as plt

    docs = _docs(results)
    if not docs:
        raise style.MissingInput(f"no per-task peers records in results/peers/*.json under {results} "
                                 f"(run `make bench-peers`)")
    p, d = max(docs, key=lambda pd: str((pd[1].get("provenance") or {}).get("date_utc", "")))
    tools = int(d.get("peers_schema") or 1) >= 2
    PEER_LABEL.update(TOOL_LABELS if tools else {"llama_cpp": "llama.cpp"})
    NOT_RUN.update(TOOL_NOT_RUN if tools else {
        ("llama_cpp", "prefill"): "the lower-precision GGUFs run last-position prefill at the first length only"})
    fig = plt.figure(figsize=(12.0, 4.8))
    grid = fig.add_gridspec(2, 2, height_ratios=[1, 6])
    ax_legend, ax0, ax1 = fig.add_subplot(grid[0, :]), fig.add_subplot(grid[1, 0]), fig.add_subplot(grid[1, 1])
    recs = d["records"]
    pre = _series(recs, lambda r: r.get("kind") == "prefill")
    vals = [v for s in pre.values() for v in s.values()]
    empty = _bars(ax0, pre, "(a) prefill", log=max(vals) / min(vals) > 20)      # linear from 0 when narrow
    empty += _bars(ax1, _series(recs, lambda r: r.get("kind") in ("decode", "batched")),
                   "(b) decode and batched decode")
    # one legend for both panels, in its own row above them: inside a panel it covers bars
    labels: dict = {}
    for ax in (ax0, ax1):
        for h, lab in zip(*ax.get_legend_handles_labels()):
            labels.setdefault(lab, h)
    gap = "not run by that peer (see notes)"
    if gap in labels:
        labels[gap] = labels.pop(gap)      # last
    ax_legend.axis("off")
    ax_legend.legend(list(labels.values()), list(labels), loc="center", ncol=4, fontsize=7, frameon=False)
    skipped = ", ".join(f"{k} ({v.splitlines()[0]})" for k, v in (d.get("skipped") or {}).items())
    cal = d.get("calibration") or {}
    cal_note = ([("Calibration, llama.cpp C API ÷ its own tools (same rounds): "
                  + ", ".join(f"{k} {v['capi_over_tool']:.2f}" + (" (FLAGGED)" if v.get("flag") else "")
                              for k, v in cal.items()) + ".")] if cal else [])
    notes = _gap_notes(empty) + cal_note + [f"Skipped peers: {skipped}" if skipped else "No peer was skipped.",
             "Ratios (this project ÷ peer, fp32 rows only) are in the results document's `ratios`; the targets in "
             "`targets`."]
    return style.Figure(fig, NAME, TITLE, style.prose(DESCRIPTION), style.bench_provenance_lines([(p, d)]), notes,
                        style.bench_footer([(p, d)]))


main = style.figure_main(NAME, build, __doc__)


if __name__ == "__main__":
    sys.exit(main())
