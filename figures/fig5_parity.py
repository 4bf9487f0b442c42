"""Figure 5: parity with the references: per-layer hidden-state error vs layer, and greedy-token match.

Input: results/parity/*.json (experiments/parity.py; make parity), one file per (model, reference backend).
"""

from __future__ import annotations

import sys
from pathlib import Path

from mamba2_jax.eval import report, reported

from . import style

NAME = "fig5_parity"
TITLE = "parity with the reference implementations (mamba_ssm, HF transformers, llama.cpp)"
DESCRIPTION = """
    (a) per layer, the worst over prompts of max|JAX - ref| / max|ref| of the hidden states (star: logits), per
    model (colour) and reference (line style); dashed: tolerance; dotted: float32 unit roundoff. (b) greedy
    tokens identical before the first divergence, coloured by share of the run's steps; grey: prompt not run
    (paper: {steps}/{steps})."""
NOTE = "Results from synthetic (random-init) weights test the implementation, not the paper's checkpoints."
FP32_EPS = 2.0 ** -23     # float32 unit roundoff (spacing at 1.0 is 2^-23)
BACKEND_STYLE = {"mamba_ssm_ref_cpu": ("-", "o"), "transformers": ("--", "s"), "mamba_ssm_triton": (":", "^"),
                 "llama_cpp": ("-.", "D")}  # llama.cpp: logits only (a diamond at the logits position)


def device_of(d) -> str:
    ref = d.get("reference") or {}
    return (f"JAX on {report.jax_device(d.get('provenance'), kinds=True)}; reference {ref.get('backend')} on "
            f"{ref.get('device')} ({ref.get('dtype')})")


def precision_of(d) -> str:
    j = d.get("jax") or {}
    return (f"JAX {j.get('param_dtype')} params (stored {j.get('stored_dtype')}), matmul precision "
            f"{j.get('matmul_precision')}")


def hidden_text(d) -> str:
    """The worst hidden-state error, or why there is none (llama.cpp returns logits only)."""
    v = (d.get("hidden_worst") or {}).get("max_rel")
    return "n/a (reference returns logits only)" if v is None or v != v else f"{v:.2e}"


def name_of(d) -> str:
    """'checkpoints__mamba2-tiny-wikitext' / 'state-spaces__mamba2-130m' -> the checkpoint's own name."""
    return str(d["model"]).split("__")[-1]


def build(results: Path) -> style.Figure:
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.lines import Line2D

    steps = int(reported.claim("greedy_64")["comparable_when"]["steps"])   # the paper's greedy steps
    docs = style.need(results, "parity")
    models = sorted({name_of(d) for _, d in docs}, key=report.model_key)
    colors = style.model_colors(models)
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10.5, max(3.8, 0.24 * len(docs) + 1.2)),
                                   gridspec_kw={"width_ratios": [1.25, 1]})
    tol = None
    # layers per model, from a backend that returns hidden states (llama.cpp returns logits only)
    n_layers = {name_of(d): len(d["hidden_per_layer"]) for _, d in docs if d["hidden_per_layer"]}
    for _, d in docs:
        be = d["reference"]["backend"]
        ls, mk = BACKEND_STYLE.get(be, ("-.", "D"))
        y = [x["max_rel"] for x in d["hidden_per_layer"]]
        x = np.arange(1, len(y) + 1)
        if y:
            ax0.plot(x, y, color=colors[name_of(d)], ls=ls, marker=mk, ms=3.5)
        # logits, one step to the right of the last layer
        ax0.plot([n_layers.get(name_of(d), len(y)) + 1], [d["logits_worst"]["max_rel"]], color=colors[name_of(d)],
                 marker="*" if y else mk, ms=8 if y else 5, ls="none")
        tol = (d.get("tolerance") or {}).get("max_rel", tol)
    if tol:
        ax0.axhline(tol, color="#444444", lw=1.0, ls="--")
    ax0.axhline(FP32_EPS, color="#777777", lw=0.8, ls=":")
    ax0.set_yscale("log")
    ax0.set_xlabel("layer (star: final logits)")
    ax0.set_ylabel("max |JAX - ref| / max |ref|")
    ax0.set_title("(a) hidden-state error per layer (worst over prompts)")
    lo = min(x["max_rel"] for _, d in docs for x in d["hidden_per_layer"] or [d["logits_worst"]])
    ax0.set_ylim(min(lo, FP32_EPS) / 3, max(tol or 1e-5, 1e-5) * 60)     # legend above the tolerance line
    handles = [Line2D([], [], color=colors[m], lw=2, label=m) for m in models]
    handles += [Line2D([], [], color="#555555", ls=BACKEND_STYLE.get(b, ("-.", "D"))[0],
                       marker=BACKEND_STYLE.get(b, ("-.", "D"))[1], ms=3.5, label=f"vs {b}")
                for b in sorted({d["reference"]["backend"] for _, d in docs})]
    if tol:
        handles.append(Line2D([], [], color="#444444", ls="--", label=f"project tolerance {tol:g}"))
    handles.append(Line2D([], [], color="#777777", ls=":", label="fp32 unit roundoff 2^-23"))
    ax0.legend(handles=handles, loc="upper left", ncol=2)

    # (b) greedy: matched prefix per prompt, per (model, backend)
    pairs = [(name_of(d), d["reference"]["backend"], d) for _, d in docs]
    prompts = list(dict.fromkeys(k for _, _, d in pairs for k in d.get("per_prompt", {})))
    n_new = max(int(d.get("n_new") or steps) for _, _, d in pairs)
    grid = np.full((len(pairs), len(prompts)), np.nan)
    n_steps = np.full((len(pairs), len(prompts)), np.nan)  # a model may run fewer greedy steps (its n_new)
    for i, (_, _, d) in enumerate(pairs):
        for j, k in enumerate(prompts):
            g = (d.get("per_prompt", {}).get(k) or {}).get("greedy")
            if g:
                grid[i, j] = g.get("matched_prefix", g.get("n_match_positions"))
                n_steps[i, j] = g.get("n") or n_new
    # colour: the fraction of that run's own steps (4/4 is as green as 64/64; the scale was 0..64)
    cmap = plt.get_cmap("RdYlGn").with_extremes(bad="#f2f2f2")
    im = ax1.imshow(100 * grid / n_steps, cmap=cmap, vmin=0, vmax=100, aspect="auto")
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            if np.isnan(grid[i, j]):
                ax1.text(j, i, "-", ha="center", va="center", fontsize=6.5, color="#999999")   # not run
            else:
                txt = f"{int(grid[i, j])}" if n_steps[i, j] == n_new else f"{int(grid[i, j])}/{int(n_steps[i, j])}"
                ax1.text(j, i, txt, ha="center", va="center", fontsize=6.5)
    ax1.set_xticks(range(len(prompts)))
    ax1.set_xticklabels(prompts, rotation=45, ha="right")
    ax1.set_yticks(range(len(pairs)))
    ax1.set_yticklabels([f"{m} vs {b}" for m, b, _ in pairs], fontsize=6.5)  # one line each: two overprint
    ax1.grid(False)
    ax1.set_title(f"(b) greedy tokens identical before first divergence (grey: not run; of {n_new} unless a/b)",
                  fontsize=9)
    cb = fig.colorbar(im, ax=ax1, fraction=0.04, pad=0.02)
    cb.set_label("% of the run's greedy steps identical\n(cell: count; a/b: a of b steps)")
    prov_lines = []
    for p, d in docs:
        g = d["greedy_summary"]
        prov_lines.append(
            f"- `{report.rel(p)}`: {d['model']} vs {d['reference']['backend']}; {device_of(d)}; {precision_of(d)}; "
            f"{report.parity_weights(d)}; label {d.get('label')}; git {report.short_sha(d.get('provenance'))}; "
            f"{(d.get('provenance') or {}).get('date_utc')}; "
            f"hidden max_rel {hidden_text(d)}, "
            f"greedy {g['tokens_matching_total']}/{g['tokens_total']} tokens, pass={d.get('pass')}")
    summary = style.footer_text((device_of(d), precision_of(d), report.parity_weights(d)) for _, d in docs)
    return style.Figure(fig, NAME, TITLE, style.prose(DESCRIPTION, steps=steps), prov_lines, [NOTE], summary)


main = style.figure_main(NAME, build, __doc__)


if __name__ == "__main__":
    sys.exit(main())
