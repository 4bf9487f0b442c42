"""Figure 10: serving, `mamba2-jax serve` against llama.cpp's llama-server and our static-batch Generator
(make bench-serve).

Input: results/serve/*.json (experiments/serve_bench.py); the document's ``summary`` (medians over the rounds
of one alternating run, per model / workload variant / system).  Drawn from the newest document.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mamba2_jax.eval.results import load_results

from . import style

NAME = "fig10_serving"
TITLE = "Serving: throughput against concurrency, and time to first token with the prefix cache on and off"
DESCRIPTION = """
    One alternating run of the same request trace (WikiText-103 validation prompts as token ids, greedy,
    every request generating its full max_tokens) through one asyncio streaming client, medians over the rounds.
    (a) output tokens/s of a closed loop at each concurrency (prompts of 128-512 tokens, 128 output tokens in the
    full profile): mamba2-jax serve (continuous batching over S state slots), llama.cpp's llama-server (-np S,
    continuous batching) on a GGUF f32 of the same weights, and our Generator with static batches of
    `concurrency` prompts. (b) median time to first token of the shared-prefix workload (one long prefix,
    distinct short suffixes) and the multi-turn workload (each turn is the whole conversation so far plus new
    tokens), with our prefix-state cache on and off, and llama-server."""

SYSTEM_LABEL = {"ours": "mamba2-jax serve", "ours_nocache": "mamba2-jax serve, prefix cache off",
                "llama_server": "llama-server", "generator": "Generator, static batches"}
SYSTEM_ORDER = ["ours", "ours_nocache", "llama_server", "generator"]


def _docs(results: Path):
    return [(p, d) for p, d in load_results("serve", results) if d.get("summary")]


def build(results: Path) -> style.Figure:
    import matplotlib.pyplot as plt
    import numpy as np

    docs = _docs(results)
    if not docs:
        raise style.MissingInput(f"no serving results in results/serve/*.json under {results} "
                                 f"(run `make bench-serve`)")
    p, d = max(docs, key=lambda pd: str((pd[1].get("provenance") or {}).get("date_utc", "")))
    summ = list(d["summary"].values())
    colors = {s: style.PALETTE[i] for i, s in enumerate(SYSTEM_ORDER)}
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11.0, 4.2))

    conc = [s for s in summ if s.get("workload") == "concurrency" and s.get("output_tok_s")]
    models = list(dict.fromkeys(s["model"] for s in conc))
    for mi, m in enumerate(models):
        for sysname in SYSTEM_ORDER:
            pts = sorted((int(s["concurrency"]), s["output_tok_s"]) for s in conc
                         if s["model"] == m and s["system"] == sysname)
            if pts:
                ax0.plot([x for x, _ in pts], [y for _, y in pts], color=colors[sysname],
                         ls=style.LINESTYLES[mi % len(style.LINESTYLES)], marker=style.MARKERS[mi],
                         label=f"{SYSTEM_LABEL.get(sysname, sysname)} ({m})")
    if conc:
        style.pow2_axis(ax0, sorted({int(s["concurrency"]) for s in conc}))
        ax0.set_yscale("log")
        style.plain_log(ax0)
        ax0.legend(fontsize=6.5)
    else:
        ax0.text(0.5, 0.5, "no concurrency workload in this run", ha="center", va="center", transform=ax0.transAxes)
    ax0.set_xlabel("concurrency (closed-loop clients)")
    ax0.set_ylabel("output tokens/s (median)")
    ax0.set_title("(a) throughput against concurrency")

    pre = [s for s in summ if s.get("workload") in ("shared_prefix", "multiturn") and s.get("ttft_p50_s")]
    cats = list(dict.fromkeys(f"{s['model']}\n{s['variant']}" for s in pre))
    systems = [s for s in SYSTEM_ORDER if any(x["system"] == s for x in pre)]
    w = 0.8 / max(1, len(systems))
    for i, sysname in enumerate(systems):
        vals = {f"{s['model']}\n{s['variant']}": s["ttft_p50_s"] * 1e3 for s in pre if s["system"] == sysname}
        x = np.arange(len(cats)) + (i - (len(systems) - 1) / 2) * w
        y = [vals.get(c, np.nan) for c in cats]
        ax1.bar(x, y, w, color=colors[sysname], label=SYSTEM_LABEL.get(sysname, sysname))
        for xi, yi in zip(x, y):
            if np.isfinite(yi):
                ax1.annotate(f"{yi:,.0f}" if yi >= 10 else f"{yi:.2g}", (xi, yi), ha="center", va="bottom", fontsize=6)
    ax1.set_xticks(np.arange(len(cats)))
    ax1.set_xticklabels(cats, fontsize=7)
    if pre:
        ax1.set_yscale("log")
        style.plain_log(ax1)
        ax1.legend(fontsize=6.5)
    else:
        ax1.text(0.5, 0.5, "no prefix workload in this run", ha="center", va="center", transform=ax1.transAxes)
    ax1.set_ylabel("time to first token, p50 (ms)")
    ax1.set_title("(b) prefix cache on / off")

    notes = []
    for k, r in (d.get("ratios") or {}).items():
        if r.get("cache_off_over_on_ttft_p50") is not None:
            notes.append(f"{k}: TTFT p50 cache off ÷ on = {r['cache_off_over_on_ttft_p50']:.3g}")
        if r.get("ours_over_llama_server_output_tok_s") is not None:
            notes.append(f"{k}: output tok/s ours ÷ llama-server = {r['ours_over_llama_server_output_tok_s']:.3g}")
    if d.get("skipped"):
        notes.append("Skipped: " + ", ".join(f"{k} ({str(v).splitlines()[0]})" for k, v in d["skipped"].items()))
    notes.append("Every number, the targets and the commands are in the results document and its .md beside it.")
    return style.Figure(fig, NAME, TITLE, style.prose(DESCRIPTION), style.bench_provenance_lines([(p, d)]), notes,
                        style.bench_footer([(p, d)]))


main = style.figure_main(NAME, build, __doc__)


if __name__ == "__main__":
    sys.exit(main())
