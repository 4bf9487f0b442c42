"""Figure 6: WikiText-103 perplexity, JAX vs the reference backends.

Input: results/perplexity/<model>/<protocol>*.json (experiments/perplexity.py; make perplexity).
"""

from __future__ import annotations

import sys
from pathlib import Path

from mamba2_jax.eval import report, reported
from mamba2_jax.eval.windows import primary_metric

from . import style

NAME = "fig6_perplexity"
TITLE = "WikiText-103 perplexity, JAX vs reference"
DESCRIPTION = """
    (a) perplexity of every backend on identical scoring windows (word perplexity for the lm-evaluation-harness
    rolling protocol, token perplexity for the strided protocol) against the reference backend's; every point on
    y = x is agreement at this scale. (b) |perplexity - reference perplexity| per backend; dashed: the paper's
    +-{tol:g} (against mamba_ssm v2.2.2 with its Triton kernels, {cite}, which names the validation split). Model
    names without 'mamba2-'; rolling = lm_eval_rolling; * = a subset of the test set (smoke run)."""
NOTE = ("Synthetic (random-init) models have perplexities near the vocabulary size: they check the pipeline and the "
        "agreement between backends, not a language model.")
BACKEND_COLORS = {"jax_fp32": "#0072B2", "jax_bf16": "#56B4E9", "transformers": "#009E73",
                  "mamba_ssm_ref_cpu": "#000000", "mamba_ssm_triton": "#D55E00"}


def metric_of(d) -> str:
    return (d.get("comparison") or {}).get("primary_metric") or primary_metric(d["protocol"])


def build(results: Path) -> style.Figure:
    import matplotlib.pyplot as plt
    import numpy as np

    claim = reported.claim("perplexity_delta")
    paper_tol = float(claim["tolerance"]["value"])      # the paper's +- around the reference perplexity
    # JAX against JAX (a 16-bit SSM state against the float32 one, make perplexity-state-dtype) is the
    # state_dtype table's, not this comparison of implementations
    docs = [(p, d) for p, d in style.need(results, "perplexity")
            if not str((d.get("comparison") or {}).get("reference_backend")).startswith("jax_")]
    rows = []   # (label, doc, metric, ref backend)
    refs_all = [(d.get("comparison") or {}).get("reference_backend") for _, d in docs]
    main_ref = max(set(refs_all), key=refs_all.count) if refs_all else None
    for p, d in docs:
        ref = (d.get("comparison") or {}).get("reference_backend")
        proto = {"lm_eval_rolling": "rolling"}.get(d["protocol"], d["protocol"])
        star = "" if d.get("scope") == "full test set" else "*"
        # runs of one model and protocol differ by their reference (e.g. the Triton smoke run): say which
        other = f" vs {ref.removeprefix('mamba_ssm_')}" if ref and ref != main_ref else ""
        rows.append((f"{d['model']['label'].removeprefix('mamba2-')}\n{proto}{star}{other}", p, d, metric_of(d), ref))
    backends = list(dict.fromkeys(b for _, _, d, _, _ in rows for b, v in d["backends"].items()
                                  if v.get("status") == "ok"))
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11.0, 4.2))
    # (a) backend perplexity against the reference's, log-log, y = x drawn: points on the line agree
    x = np.arange(len(rows))
    allv = []
    for k, b in enumerate(backends):
        xs, ys = [], []
        for _, _, d, metric, ref in rows:
            v, r = d["backends"].get(b) or {}, d["backends"].get(ref) or {}
            if b == ref or v.get("status") != "ok" or r.get("status") != "ok":
                continue
            if v.get(metric) is None or r.get(metric) is None:
                continue
            xs.append(r[metric])
            ys.append(v[metric])
        allv += xs + ys
        if xs:
            ax0.plot(xs, ys, ls="none", marker=style.MARKERS[k % len(style.MARKERS)], ms=7, mfc="none", mew=1.3,
                     color=BACKEND_COLORS.get(b, style.PALETTE[k % len(style.PALETTE)]), label=b)
    if allv:
        lo, hi = min(allv) / 1.6, max(allv) * 1.6
        ax0.plot([lo / 10, hi], [lo / 10, hi], color=style.REFERENCE_GREY, lw=0.8, zorder=0, label="y = x")
        lo = lo / 20      # room on the left for the labels
        ax0.set_xlim(lo, hi)
        ax0.set_ylim(lo, hi)
        # labels in a column at the left (the empty side of y = x), each at least a line apart, joined to its
        # point by a thin leader: labels of points at nearby perplexities were printed over each other
        pts = sorted(((label, (d["backends"].get(ref) or {}).get(metric)) for label, _, d, metric, ref in rows),
                     key=lambda lr: lr[1] or 0.0)
        pts = [(lab, r) for lab, r in pts if r is not None]
        # from the top down, evenly spaced, the largest perplexity first
        gap = min(0.075, 0.6 / max(len(pts), 1))
        for i, (label, r) in enumerate(reversed(pts)):
            y = 0.93 - i * gap
            ax0.annotate(label.replace("\n", " ") + f": {r:.6g}", (r, r), xytext=(0.02, y),
                         textcoords="axes fraction", fontsize=6.5, color="#333333", ha="left", va="center",
                         arrowprops={"arrowstyle": "-", "color": "#aaaaaa", "lw": 0.6, "shrinkB": 4,
                                     "relpos": (1.0, 0.5)})
    ax0.set_xscale("log")
    ax0.set_yscale("log")
    refs = sorted({r[4] for r in rows if r[4]})
    ax0.set_xlabel(f"reference perplexity ({', '.join(refs) or 'reference'})")
    ax0.set_ylabel("backend perplexity (word ppl: rolling; token ppl: strided)")
    ax0.set_title("(a) perplexity: backend vs reference")
    ax0.legend(loc="lower right")
    # (b) |delta| vs the reference backend, log scale, with the paper's +- (reported.yaml)
    for k, b in enumerate(backends):
        xs, ys = [], []
        for i, (_, _, d, metric, ref) in enumerate(rows):
            if b == ref:
                continue
            c = ((d.get("comparison") or {}).get("vs_reference") or {}).get(b) or {}
            delta = (c.get(metric) or {}).get("delta")
            if delta is not None:
                xs.append(i + (k - (len(backends) - 1) / 2) * 0.12)
                ys.append(max(abs(delta), 1e-12))
        if xs:
            ax1.plot(xs, ys, ls="none", marker=style.MARKERS[k % len(style.MARKERS)], ms=6,
                     color=BACKEND_COLORS.get(b, style.PALETTE[k % len(style.PALETTE)]), label=b)
    ax1.axhline(paper_tol, color="#D55E00", ls="--", lw=1.0, label=f"paper: ±{paper_tol:g}")
    ax1.set_yscale("log")
    ax1.set_xticks(x)
    ax1.set_xticklabels([r[0].replace("\n", " ") for r in rows], fontsize=7, rotation=20, ha="right")
    ax1.set_ylabel("|ppl − reference ppl|")
    ax1.set_title("(b) absolute difference from the reference")
    # outside the axes: inside, it covered the paper's ±tolerance line and its label
    ax1.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    ax1.margins(x=0.15)
    prov_lines, foot = [], []
    for _, p, d, metric, ref in rows:
        prov = d.get("provenance") or {}
        dev = report.jax_device(prov)
        pol = ((d["backends"].get("jax_fp32") or {}).get("run") or {}).get("policy") or {}
        prec = f"JAX fp32 (matmul {pol.get('matmul_precision', '?')}) and bf16 params"
        w = d["model"].get("weights")
        split = (d.get("data") or {}).get("split")
        foot.append((f"JAX on {dev}; reference {ref}", prec, w))
        prov_lines.append(f"- `{report.rel(p)}`: {d['model']['label']}, {d['protocol']}, {metric}, WikiText-103 "
                          f"{split} split, {d.get('scope')}; JAX on {dev}; {prec}; weights: {w}; reference "
                          f"{ref}; git {report.short_sha(prov)}; {prov.get('date_utc')}")
    description = style.prose(DESCRIPTION, tol=paper_tol, cite=reported.cite(claim))
    return style.Figure(fig, NAME, TITLE, description, prov_lines, [NOTE], style.footer_text(foot))


main = style.figure_main(NAME, build, __doc__)


if __name__ == "__main__":
    sys.exit(main())
