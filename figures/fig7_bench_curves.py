"""Figure 7: batched decode vs its roofline, and prefill cost per token vs prompt length.

Input: results/bench/*.json (experiments/bench.py; make bench), records with metric
``decode_batch_tokens_per_s`` (batch curve) and ``prefill_us_per_token`` (length curve).  One
series per results document, labelled with its device and git sha.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mamba2_jax.eval import flops, report
from mamba2_jax.eval.results import load_results

from . import style

NAME = "fig7_bench_curves"
TITLE = "batched decode and prefill length scaling"
DESCRIPTION = """
    (a) batched decode tokens/s and its roofline, the lower of two bounds from the same run: bytes (weights
    once per step, every row's state read and written) at the measured bandwidth, and the step's matmul
    FLOPs at the measured dense-matmul rate. (b) achieved / roofline; open markers: the matmul bound
    binds. (c) prefill time per token relative to the shortest
    length (labels: µs/token); flat means cost linear in length. Dotted: the project's own target
    ({target_src}), not a paper number."""


# where the prefill length-ratio target is set (recorded with the run, config.bench.targets)
TARGET_SRC = "mamba2_jax/eval/conf/bench.yaml, targets.prefill_length_ratio_max"


def _docs(results: Path):
    out = []
    for p, d in load_results("bench", results):
        curves = ("decode_batch_tokens_per_s", "prefill_us_per_token")
        if any(r.get("metric") in curves for r in d.get("records") or []):
            models = d.get("models") or {}
            for r in d["records"]:  # weights / precision live per dtype in the bench document
                info = models.get(r.get("dtype")) or {}
                r.setdefault("weights", info.get("weights"))
                r.setdefault("matmul_precision", (info.get("policy") or {}).get("matmul_precision"))
            out.append((p, d))
    return out


def build(results: Path) -> style.Figure:
    import matplotlib.pyplot as plt

    docs = _docs(results)
    if not docs:
        raise style.MissingInput(f"no batch / length curve records in results/bench/*.json under {results} "
                                 f"(run `make bench`)")
    fig, (ax0, ax1, ax2) = plt.subplots(1, 3, figsize=(12.0, 3.5))
    batches, lengths = set(), set()
    no_rate = []   # documents without a dense-matmul rate: their roofline is the bandwidth bound alone
    for i, (_, d) in enumerate(docs):
        mk = style.MARKERS[i % len(style.MARKERS)]
        label = f"{report.bench_device_short(d)}, git {report.short_sha(d.get('provenance'))}"
        brecs = [r for r in d["records"] if r.get("metric") == "decode_batch_tokens_per_s"]
        roof = {id(r): flops.batch_curve_roofline(d, r) for r in brecs}
        if brecs and not all(roof.values()):
            no_rate.append(label)
        frac = {id(r): (roof[id(r)] or {}).get("roofline_fraction", r["bandwidth_fraction"]) for r in brecs}
        for dt in dict.fromkeys(r.get("dtype") for r in brecs):  # one series per dtype, in run order
            bc = sorted((r for r in brecs if r.get("dtype") == dt), key=lambda r: r["batch"])
            x = [r["batch"] for r in bc]
            batches.update(x)
            w, _, sdt = str(dt).partition("/")  # "w/s": weights w, the SSM state stored in s
            dl = f"{w}{f', {sdt} state' if sdt else ''}, {label}"
            line, = ax0.plot(x, [r["value"] for r in bc], marker=mk, label=f"achieved ({dl})")
            ax0.plot(x, [(roof[id(r)] or {}).get("roofline_tokens_per_s", r["bound_tokens_per_s"]) for r in bc],
                     marker=mk, ls="--", mfc="white", color=line.get_color(), label=f"roofline ({dl})")
            ax1.plot(x, [100 * frac[id(r)] for r in bc], color=line.get_color(), label=dl)
            for r in bc:
                mm = (roof[id(r)] or {}).get("limited_by") == "matmul"
                ax1.plot([r["batch"]], [100 * frac[id(r)]], marker=mk, color=line.get_color(),
                         mfc="white" if mm else line.get_color(), ls="none")
                # at each batch the highest series is labelled above its point, the lowest below, any
                # between them to the right: no overprinting
                vals = sorted(frac[id(o)] for o in brecs if o["batch"] == r["batch"])
                v = frac[id(r)]
                pos = "above" if v >= vals[-1] else "below" if v <= vals[0] else "right"
                off, ha, va = {"above": ((0, 6), "center", "bottom"), "below": ((0, -7), "center", "top"),
                               "right": ((7, 0), "left", "center")}[pos]
                ax1.annotate(f"{100 * v:.0f}%", (r["batch"], 100 * v), textcoords="offset points", xytext=off,
                             fontsize=7, ha=ha, va=va, color=line.get_color())
        lc = sorted((r for r in d["records"] if r.get("metric") == "prefill_us_per_token"), key=lambda r: r["length"])
        if lc:
            x = [r["length"] for r in lc]
            lengths.update(x)
            ax2.plot(x, [r["ratio_to_shortest"] for r in lc], marker=mk,
                     label=f"{label}, {lc[0].get('n_layer', '?')} layers")
            for r in lc:
                ax2.annotate(f"{r['value']:.0f} µs", (r["length"], r["ratio_to_shortest"]), textcoords="offset points",
                             xytext=(0, 6), fontsize=7, ha="center")
    if batches:
        for ax in (ax0, ax1):
            style.pow2_axis(ax, batches)
            ax.set_xlabel("batch (rows decoded per step)")
        ax0.set_yscale("log")
        style.plain_log(ax0)
        ax0.legend(loc="best", fontsize=7)
        ax1.legend(loc="best", fontsize=7)
    ax0.set_ylabel("decode tokens/s (all rows)")
    ax0.set_title("(a) batched decode vs roofline")
    ax1.set_ylabel("achieved / roofline (%)")
    ax1.set_ylim(0, 100)
    ax1.set_title("(b) fraction of the roofline")
    # the experiment's own target (mamba2_jax/eval/conf/bench.yaml), as recorded with the run
    ratio_target = next((((d.get("config") or {}).get("bench") or {}).get("targets", {}).get("prefill_length_ratio_max")
                         for _, d in docs), None)
    if lengths:
        style.pow2_axis(ax2, lengths)
        if ratio_target:
            ax2.axhline(ratio_target, color=style.REFERENCE_GREY, ls=":", lw=1,
                        label=f"project target ≤ {ratio_target}x (bench.yaml; see caption)")
        ax2.legend(loc="best", fontsize=7)
    ax2.set_xlabel("prompt length (tokens)")
    ax2.set_ylabel("prefill time per token / at shortest")
    ax2.set_ylim(0, max(1.4, 1.1 * float(ratio_target or 0)))   # the target line inside the axes, not on its edge
    ax2.margins(x=0.1)
    ax2.set_title("(c) prefill cost per token vs length")
    notes = ["Medians of alternating rounds (experiments/bench.py); the load average "
             "is recorded in each record."]
    if no_rate:
        notes.append("No dense-matmul rate in " + "; ".join(no_rate) + ": its roofline is the bandwidth bound alone.")
    curves = ("decode_batch_tokens_per_s", "prefill_us_per_token")   # the footer describes the plotted records only
    plotted = [(p, {**d, "records": [r for r in d["records"] if r.get("metric") in curves]}) for p, d in docs]
    return style.Figure(fig, NAME, TITLE, style.prose(DESCRIPTION, target_src=TARGET_SRC),
                        style.bench_provenance_lines(docs), notes, style.bench_footer(plotted))


main = style.figure_main(NAME, build, __doc__)


if __name__ == "__main__":
    sys.exit(main())
