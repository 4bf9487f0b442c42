"""Figure 8: the paper's TPU v6e claims against the compiled (not run) v6e programs, per scale.

Input: results/tpu_compile/*.json (experiments/tpu_compile.py; make reproduce-tpu on a machine
without a TPU), read through mamba2_jax.eval.compiled; the paper's numbers from paper/reported.yaml.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mamba2_jax.eval import compiled, report, reported

from . import style

NAME = "fig8_tpu_compiled"
TITLE = "TPU v6e claims vs the compiled v6e programs (compiled, not run)"
DESCRIPTION = """
    Compiled for TPU v6e, not run: {n_have} of the suite's {n_suite} programs (the other {n_rest}, {rest_kind},
    not compiled). (a) prefill bound, TFLOP/s per chip, from the program's bytes (dark) or XLA's (light);
    dashed: the paper's ~140. (b) decode-step tokens/s at 100% HBU; dashed: the paper's 64% HBU, a claim.
    (c) HBM the decode step and the 4096-token prefill need per chip, vs the chip's {hbm}."""


def suite_programs(doc) -> list[str]:
    """The program keys of the full suite a compiled file's run belongs to (its recorded ``config.suite``), in the
    order of experiments/tpu_compile.py's ``programs(suite, "all")``: step, the decode loops, every prefill length."""
    suite = (doc.get("config") or {}).get("suite") or {}
    lengths = sorted(set(suite.get("prefill_lengths") or []) | set(suite.get("throughput_prefill_lengths") or [])
                     | ({suite["headline_length"]} if suite.get("headline_length") else set()))
    return (["step"] + [f"generate-n{n}" for n in suite.get("decode_tokens") or []]
            + [f"prefill-L{L}" for L in lengths])


def missing_text(lacking: dict[str, list[str]], suite: dict[str, list[str]]) -> str:
    """'prefill except L4096 (130m, 2.7b); prefill at every length (370m, ...)' from {model: missing keys}."""
    groups: dict[str, list[str]] = {}
    for m, ks in lacking.items():
        if not ks:
            continue
        pre = [k for k in ks if k.startswith("prefill-")]
        every = [k for k in suite[m] if k.startswith("prefill-")]
        what = ("" if not pre else "prefill at every length" if len(pre) == len(every) else
                "prefill except " + ", ".join(k.removeprefix("prefill-") for k in every if k not in pre))
        what = ", ".join([w for w in [what] if w] + [k for k in ks if not k.startswith("prefill-")])
        groups.setdefault(what, []).append(report.short_model(m))
    return "; ".join(f"{w} ({', '.join(ms)})" for w, ms in groups.items()) or "none"


def not_compiled(ax, models: list[str], have: set[str], program: str, dx: float = 0.0) -> None:
    """'not compiled' in the empty slot of each scale without ``program``; ``dx``: the slot's offset from the
    group's centre (a bar beside it in the same group is not written over)."""
    for j, m in enumerate(models):
        if m not in have:
            ax.text(j + dx, 0.03, f"{program}\nnot compiled", transform=ax.get_xaxis_transform(), ha="center",
                    va="bottom", rotation=90, fontsize=6.5, color="#777777")


def build(results: Path) -> style.Figure:
    import matplotlib.pyplot as plt

    comp = compiled.load_compiled(results)
    if not comp:
        raise style.MissingInput("no results/tpu_compile/*.json (run `make reproduce-tpu`)")
    pre = {x["model"]: x for x in compiled.implications(reported.claim("prefill_tflops"), comp)}
    dec = {x["model"]: x for x in compiled.implications(reported.claim("decode_hbu"), comp)}
    models = sorted(comp, key=report.model_key)
    fig, (a0, a1, a2) = plt.subplots(1, 3, figsize=(11.0, 3.6))
    # (a) prefill
    series = ["bound (min bytes)", "with XLA's byte count"]
    vals = {}
    for m in models:
        if m in pre:
            vals[(series[0], m)] = pre[m]["bound_tflops"]
            vals[(series[1], m)] = pre[m]["xla_bound_tflops"]
    cols = {series[0]: style.PALETTE[0], series[1]: "#9CC3E0"}
    style.grouped_bars(a0, models, series, vals, colors=cols, log=True)
    not_compiled(a0, models, {m for m in models if m in pre}, "prefill-L4096")
    a0.axhline(float(reported.claim("prefill_tflops")["value"]), color=style.REFERENCE_GREY, ls="--", lw=1.2,
               label="paper ~140 TFLOPS")
    a0.set_ylim(min([*vals.values(), 140.0]) / 4, max([*vals.values(), 140.0]) * 3)  # no prefill compiled: the claim
    a0.set_ylabel("TFLOP/s per chip (upper bound)")
    a0.set_title("(a) prefill, L = 4096, batch 1")
    a0.legend(loc="upper right")
    # (b) decode
    # the bound is a bar; the paper's 64% HBU is a claim, drawn as a dashed reference mark on each bar
    # (grey bars beside the bound read as measurements)
    s2 = ["100% HBU (bound)"]
    v2 = {(s2[0], m): dec[m]["bound_tokens_per_s"] for m in models if m in dec}
    style.grouped_bars(a1, models, s2, v2, colors={s2[0]: style.PALETTE[2]}, log=True)
    for j, m in enumerate(models):
        if m in dec:
            a1.hlines(dec[m]["claim_tokens_per_s"], j - 0.46, j + 0.46, colors="#333333", linestyles="--", lw=1.3,
                      label=None if j else "paper's 64% HBU as tokens/s (a claim, not run)")
    not_compiled(a1, models, set(dec), "step")
    a1.set_ylim(min(min(v2.values()), min(x["claim_tokens_per_s"] for x in dec.values())) / 4,
                max(v2.values()) * 3)
    a1.set_ylabel("decode tokens/s per chip")
    a1.set_title("(b) cached decode step, batch 1")
    a1.legend(loc="upper right")
    # (c) HBM: the same programs at every scale (like with like), not each scale's largest
    hbm = None
    s3 = ["step", "prefill-L4096"]
    v3 = {}
    for m in models:
        recs = comp[m]["records"]
        hbm = hbm or next(iter(recs.values()))["hbm_bytes_per_device"]
        for k in s3:
            if k in recs:
                v3[(k, m)] = recs[k]["bytes_needed_per_device"] / 2**30
    style.grouped_bars(a2, models, s3, v3, colors={s3[0]: style.PALETTE[2], s3[1]: style.PALETTE[0]})
    # the prefill's slot is the right half of each group (grouped_bars: 2 series of width 0.4)
    not_compiled(a2, models, {m for m in models if ("prefill-L4096", m) in v3}, "prefill-L4096", dx=0.2)
    if hbm:
        a2.axhline(hbm / 2**30, color="#777777", lw=1.0, label=f"HBM per chip ({hbm / 2**30:.1f} GiB)")
    a2.set_ylabel("GiB per chip")
    a2.set_title("(c) HBM needed per chip")
    a2.set_ylim(0, (hbm or max(v3.values()) * 2**30) / 2**30 * 1.25)
    a2.legend(loc="center right")
    for ax in (a0, a1, a2):
        ax.tick_params(axis="x", labelrotation=30)
    suite = {m: suite_programs(comp[m]["doc"]) for m in models}
    n_have = sum(len(comp[m]["records"]) for m in models)
    n_suite = sum(len(v) for v in suite.values())
    lacking = {m: [k for k in suite[m] if k not in comp[m]["records"]] for m in models}
    fig.suptitle(f"{n_have} of the suite's {n_suite} programs compiled; not compiled: {missing_text(lacking, suite)}",
                 fontsize=8, color="#555555", y=1.0)
    notes = [f"Compiled {n_have} of the suite's {n_suite} programs (experiments/tpu_compile.py, every program that "
             f"profile=paper measures: {len(next(iter(suite.values())))} per scale)."]
    for m in models:
        c = comp[m]
        phase = ((c["doc"].get("config") or {}).get("phase")) or "?"
        notes.append(f"{m}: {len(c['records'])} programs compiled ({', '.join(sorted(c['records']))}; run with "
                     f"--phase {phase}); not compiled: {', '.join(lacking[m]) or 'none'}")
        if m in pre:
            notes.append(f"{m} prefill-L4096: {pre[m]['flops'] / 1e12:.3g} TFLOP, bound {pre[m]['bound_tflops']:.4g} "
                         f"TFLOP/s; paper 140: {pre[m]['verdict']}")
        if m in dec:
            notes.append(f"{m} step: {dec[m]['min_bytes'] / 1e9:.3g} GB per token, bound "
                         f"{dec[m]['bound_tokens_per_s']:,.0f} tokens/s; 64% HBU = {dec[m]['claim_tokens_per_s']:,.0f}")
    prov = []
    for m in models:
        d = comp[m]["doc"]
        v = (d.get("provenance") or {}).get("compile") or {}
        prov.append(f"- {m}: {d.get('status')}; topology {v.get('topology')}; jax {v.get('jax')}, libtpu "
                    f"{v.get('libtpu')}; git {report.short_sha(d.get('provenance'))}; {report.rel(comp[m]['path'])}")
    desc = style.prose(DESCRIPTION, hbm=f"{hbm / 2**30:.1f} GiB" if hbm else "HBM", n_have=n_have,
                       n_suite=n_suite, n_rest=n_suite - n_have,
                       rest_kind="prefills" if all(k.startswith("prefill-") for v in lacking.values() for k in v)
                       else "programs",
                       cite=reported.cite(reported.claim("prefill_tflops")))
    summary = "Device: TPU v6e (compiled by libtpu, not run)\nPrecision: the paper profile's (float32 params, " \
              "matmul precision default)\nWeights: none (shapes only)"
    return style.Figure(fig, NAME, TITLE, desc, prov, notes, summary)


main = style.figure_main(NAME, build, __doc__)


if __name__ == "__main__":
    sys.exit(main())
