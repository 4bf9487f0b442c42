"""Figure 11: this artifact beside the paper's own package (mamba2-jax 1.1.2), both compiled for TPU v6e.

Input: results/tpu_compile/*.json (experiments/tpu_compile.py) and results/tpu_compile_anchor/*.json
(experiments/tpu_compile_anchor.py, make tpu-compile-anchor), paired per scale and program by
mamba2_jax.eval.compiled.side_by_side: our step beside its cached one-token forward, our prefill
beside its full-logits prefill at the same length.  Ours is the record's ``ours_same_run``: compiled
with full logits just before the anchor's program, in the same run.  A program one side has not
compiled is marked "not compiled" in its slot.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mamba2_jax.eval import compiled, report

from . import style

NAME = "fig11_anchor_compile"
TITLE = "This artifact vs the paper's package (mamba2-jax 1.1.2), compiled for TPU v6e (not run)"
DESCRIPTION = """
    The same programs compiled for TPU v6e by libtpu in one run, nothing run: ours, compiled just before each
    of mamba2-jax 1.1.2's (its decode is its forward on one token padded to a chunk; both prefills return
    full logits). (a) compile seconds on a
    shared 2-core host, (b) XLA FLOPs, (c) temporary memory per device, (d) roofline bound in tokens/s.
    L=4096: the 4096-token prefill. {n_missing} of {n_slots} slots not compiled."""
SIDES = ("ours", "mamba2-jax 1.1.2")
COLORS = {SIDES[0]: style.PALETTE[0], SIDES[1]: style.PALETTE[1]}


def label(x: dict) -> str:
    prog = "decode" if x["program"] == "step" else "L=" + x["program"].split("-L")[1]   # short: 10 slots a panel
    return f"{report.short_model(x['model'])}\n{prog}"


def panels() -> list[tuple]:
    """(title, y label, log axis, value of a record) per panel."""
    return [("(a) compile time", "seconds (wall)", True, lambda r: r.get("compile_s")),
            ("(b) XLA FLOPs per call", "FLOPs", True, lambda r: r.get("flops")),
            ("(c) temp memory per device", "MiB", False,
             lambda r: None if r.get("temp_bytes") is None else r["temp_bytes"] / 2**20),
            # the anchor's record holds its bound at the top level, ours (ours_same_run) in its roofline
            ("(d) roofline bound", "tokens/s (upper bound)", True,
             lambda r: r.get("bound_tokens_per_s") or (r.get("roofline") or {}).get("bound_tokens_per_s"))]


def build(results: Path) -> style.Figure:
    import matplotlib.pyplot as plt

    pairs = sorted(compiled.side_by_side(results), key=lambda x: (report.model_key(x["model"]), x["program"] != "step",
                                                                  x["program"]))
    if not pairs:
        raise style.MissingInput("no results/tpu_compile_anchor/*.json (run `make tpu-compile-anchor`)")
    # like with like: ours as compiled just before the anchor's program in the same run (its prefill has full
    # logits, like the anchor's), not our last-position suite program; where the anchor's run has not reached
    # a program, neither side of it is compiled
    pairs = [{**x, "ours": (x["anchor"] or {}).get("ours_same_run")} for x in pairs]
    slots = [label(x) for x in pairs]
    fig, axes = plt.subplots(2, 2, figsize=(11.0, 6.6))
    width = 0.4
    for ax, (title, ylabel, log, get) in zip(axes.flat, panels(), strict=True):
        vals = {}
        for x, s in zip(pairs, slots, strict=True):
            for side, rec in zip(SIDES, (x["ours"], x["anchor"]), strict=True):
                v = get(rec) if rec is not None else None
                if v is not None and (not log or v > 0):
                    vals[(side, s)] = v
        style.grouped_bars(ax, slots, list(SIDES), vals, colors=COLORS, log=log,
                           annotate={k: style.fmt_si(v) for k, v in vals.items()}, rotation=90)  # 20 bars a panel
        ax.set_xticklabels(slots, rotation=0, fontsize=7)
        # a side without the program: "not compiled" in its slot, never an empty gap
        for j, x in enumerate(pairs):
            for i, (side, rec) in enumerate(zip(SIDES, (x["ours"], x["anchor"]), strict=True)):
                if rec is None:
                    ax.text(j - 0.4 + width * (i + 0.5), 0.03, f"{side}\nnot compiled",
                            transform=ax.get_xaxis_transform(), ha="center", va="bottom", rotation=90, fontsize=6.5,
                            color="#777777")
        if log and vals:
            lo, hi = min(vals.values()), max(vals.values())
            ax.set_ylim(lo / 5, hi * 25)     # room for the rotated labels under the legend
        elif vals:
            ax.set_ylim(0, max(vals.values()) * 1.3 or 1.0)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        if vals:
            ax.legend(loc="upper left", ncol=2)
    n_missing = sum((x["ours"] is None) + (x["anchor"] is None) for x in pairs)
    notes, prov = [], []
    for x in pairs:
        for side, rec in zip(SIDES, (x["ours"], x["anchor"]), strict=True):
            key = x["program"] if side == SIDES[0] else x["anchor_program"]
            if rec is None:
                notes.append(f"{x['model']} {key} ({side}): not compiled")
                continue
            ro = rec.get("roofline") or {}
            pads = (rec.get("anchor") or {}).get("seq_pads")
            notes.append(f"{x['model']} {key} ({side}): {rec.get('compile_s', float('nan')):.1f} s (load "
                         f"{rec.get('load_avg_1m') or 'not recorded'}), {rec['flops']:.4g} FLOPs, "
                         f"{rec['bytes_accessed']:.4g} bytes (XLA), argument/temp/output "
                         f"{rec.get('argument_bytes')}/{rec.get('temp_bytes')}/{rec.get('output_bytes')} bytes per "
                         f"device, fits {rec.get('fits')}, bound {ro.get('bound_tokens_per_s') or float('nan'):,.0f} "
                         f"tokens/s ({ro.get('bound')})" + (f"; sequence paddings {pads}" if pads else ""))
    docs = {**{("ours", m): c for m, c in compiled.load_compiled(results).items()
               if any(x["model"] == m for x in pairs)},
            **{("anchor", m): c for m, c in compiled.anchor_documents(results).items()}}
    for (side, m), c in sorted(docs.items(), key=lambda kv: (report.model_key(kv[0][1]), kv[0][0])):
        d = c["doc"]
        v = (d.get("provenance") or {}).get("compile") or {}
        who = f"{v.get('anchor')} ({v.get('anchor_dir')})" if side == "anchor" else "this artifact"
        prov.append(f"- {m}, {who}: {d.get('status')}; topology {v.get('topology')}; jax {v.get('jax')}, libtpu "
                    f"{v.get('libtpu')}; git {report.short_sha(d.get('provenance'))}; {report.rel(c['path'])}")
    desc = style.prose(DESCRIPTION, n_missing=n_missing, n_slots=2 * len(pairs))
    summary = ("Device: TPU v6e (compiled by libtpu, not run)\nPrecision: float32 params, default matmul precision "
               "(both)\nWeights: none (shapes only)")
    return style.Figure(fig, NAME, TITLE, desc, prov, notes, summary)


main = style.figure_main(NAME, build, __doc__)


if __name__ == "__main__":
    sys.exit(main())
