"""Reported vs reproduced: the paper's claims (paper/reported.yaml) against the results in results/.

    python -m paper.compare [--results results] [--reported paper/reported.yaml]   # prints the table

Every claim is evaluated once per result group (one benchmark run, one parity reference backend and
label, one perplexity model x protocol).  A group that does not meet the claim's ``comparable_when``
(device, paper checkpoint weights, full split, reference backend, sequence length) gets the status
``not comparable: <reasons>`` and is never called a match; only comparable groups get PASS / FAIL
against the claim's tolerance.  ``python -m paper.make_tables`` renders the rows as LaTeX and Markdown.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mamba2_jax.eval import report, reported
from mamba2_jax.eval.report import MAKE_TARGET
from mamba2_jax.eval.results import load_results
from mamba2_jax.paths import results_dir

REFERENCE_NAMES = {"mamba_ssm_triton": "mamba_ssm Triton/CUDA kernels",
                   "mamba_ssm_ref_cpu": "mamba_ssm PyTorch reference functions on CPU",
                   "transformers": "HF transformers (torch path)"}


@dataclass
class Row:
    claim_id: str
    claim: str
    paper: str                 # the reported value, with its source
    tolerance: str
    reproduced: str            # the measured value (shown even when not comparable)
    setup: str                 # device; weights; run
    status: str                # PASS | FAIL | not comparable: ... | not run: ...
    reasons: list[str] = field(default_factory=list)
    value: Any = None
    sources: list[str] = field(default_factory=list)

    @property
    def comparable(self) -> bool:
        return not self.reasons and self.status in ("PASS", "FAIL")


# ------------------------------------------------------------------------------ formatting
def paper_value(c: dict[str, Any]) -> str:
    if c.get("display"):
        return str(c["display"])
    v, u = c["value"], c.get("unit", "")
    if isinstance(v, list):
        s = f"{v[0]:g}-{v[1]:g}{u}"
    elif u == "fraction":
        s = f"{100 * v:g}%"
    elif isinstance(v, (int, float)):
        s = f"{v:g} {u}".strip()
    else:
        s = str(v)
    return s


def tolerance_text(c: dict[str, Any]) -> str:
    t = c["tolerance"]
    k, v = t["kind"], t["value"]
    pct = c.get("unit") == "fraction"
    if k == "relative":
        s = f"+-{100 * v:g}% (relative)"
    elif k == "absolute":
        s = f"+-{100 * v:g} pp" if pct else f"+-{v:g}"
    elif k == "max":
        s = f"<= {v:g}"
    elif k == "min":
        s = f">= {v:g}"
    else:
        s = f"{k} {v}"
    return s + f" [{t.get('source', '?')}]"


def check(c: dict[str, Any], value: Any) -> bool:
    t = c["tolerance"]
    k, tol, target = t["kind"], float(t["value"]), c["value"]
    if value is None:
        return False
    if isinstance(target, list):                       # a range: every value inside the widened range
        lo, hi = float(target[0]), float(target[1])
        vals = value if isinstance(value, (list, tuple)) else [value]
        if k == "relative":
            lo, hi = lo * (1 - tol), hi * (1 + tol)
        elif k == "absolute":
            lo, hi = lo - tol, hi + tol
        return all(lo <= float(v) <= hi for v in vals)
    if k == "relative":
        return abs(float(value) - float(target)) <= tol * abs(float(target))
    if k == "absolute":
        return abs(float(value) - float(target)) <= tol
    if k == "max":
        return float(value) <= tol
    if k == "min":
        return float(value) >= tol
    raise ValueError(f"unknown tolerance kind {k!r}")


def status_of(c: dict[str, Any], value: Any, reasons: list[str]) -> str:
    if reasons:
        return "not comparable: " + "; ".join(reasons)
    if value is None:
        return "FAIL"          # comparable setting, but the result lacks the number
    return "PASS" if check(c, value) else "FAIL"


# ------------------------------------------------------------------------------ comparability
def bench_device_reason(doc: dict[str, Any], want: str | None) -> str | None:
    if not want:
        return None
    hw = doc.get("hardware") or {}
    prof = hw.get("profile") or {}
    pname = prof.get("name") if isinstance(prof, dict) else None
    dev = hw.get("device") or {}
    actual = "CPU" if dev.get("platform") == "cpu" else str(dev.get("device_kind") or dev.get("platform") or "?")
    target = reported.DEVICE_NAMES.get(want, want)
    if pname == want and hw.get("matches_device"):
        return None
    if pname == want:
        return f"{actual} vs {target} (run with {target} peaks but not on that device)"
    return f"{actual} vs {target}"


def paper_model(name: str | None, paper: tuple[str, ...]) -> str | None:
    """The paper checkpoint ``name`` stands for ('state-spaces__mamba2-130m' -> 'mamba2-130m'), or None."""
    m = re.search(r"(?:^|[_/-])(" + "|".join(map(re.escape, paper)) + r")$", str(name or ""))
    return m.group(1) if m else None


def bench_weights_reasons(recs: list[dict[str, Any]], paper: tuple[str, ...]) -> list[str]:
    out = []
    if any(r.get("weights") == "random-init" for r in recs):
        out.append("synthetic weights")
    others = sorted({r["model"] for r in recs if r.get("weights") != "random-init"
                     and not paper_model(r["model"], paper)})
    if others:
        out.append(f"{', '.join(others)} not among the paper's checkpoints")
    return out


def model_weights_reasons(name: str | None, synthetic: bool, paper: tuple[str, ...]) -> list[str]:
    if synthetic:
        return ["synthetic weights"]
    if not paper_model(name, paper):
        return [f"{name} not among the paper's checkpoints"]
    return []


TRITON_INTERPRETED_REASON = "the same Triton kernels, interpreted on CPU rather than compiled for a GPU"


def reference_interpreted(meta: dict[str, Any] | None) -> bool:
    """Whether a reference run's metadata says it ran mamba_ssm's Triton kernels through the interpreter."""
    meta = meta or {}
    return bool((meta.get("backend_meta") or {}).get("triton_interpret")) or \
        str(meta.get("device", "")).endswith("(Triton interpreter)")


def reference_reason(backend: str | None, allowed: list[str] | None, interpreted: bool = False) -> str | None:
    if not allowed or backend in allowed:
        if backend == "mamba_ssm_triton" and interpreted:
            return TRITON_INTERPRETED_REASON
        return None
    want = " / ".join(REFERENCE_NAMES.get(a, a) for a in allowed)
    return f"reference {backend} vs the paper's {want}"


def scales_note(models: list[str], paper: tuple[str, ...]) -> str:
    n = len({paper_model(m, paper) for m in models if paper_model(m, paper)})
    return f"; {n} of {len(paper)} paper scales" if n and n < len(paper) else ""


def row(c: dict[str, Any], text: str, setup: str, value: Any, reasons: list[str], sources: list[Path]) -> Row:
    return Row(c["id"], c["claim"], paper_value(c), tolerance_text(c), text, setup, status_of(c, value, reasons),
               reasons, value, [report.rel(p) for p in sources])


# ------------------------------------------------------------------------------ per-experiment evaluation
def bench_groups(c: dict[str, Any], results: Path, experiment: str, kind: str | None, paper: tuple[str, ...]):
    """``(path, doc, records, reasons, setup)`` per benchmark run holding ``kind`` records: the device
    and weights reasons the run is not comparable with the claim, and its setup text."""
    want = (c.get("comparable_when") or {}).get("device")
    for p, d in load_results(experiment, results, include_bench=True):
        recs = [r for r in d["records"] if kind is None or r.get("kind") == kind]
        if recs:
            reasons = [x for x in [bench_device_reason(d, want)] if x] + bench_weights_reasons(recs, paper)
            yield p, d, recs, reasons


def bench_setup(p: Path, doc: dict[str, Any], recs: list[dict[str, Any]]) -> str:
    f = report.run_facts(p, doc, recs)
    return f"{f['device']}; {f['precision']}; {f['weights']}; run {f['run']}"


def eval_throughput(c: dict[str, Any], results: Path, paper: tuple[str, ...]) -> list[Row]:
    kind = "decode" if c["id"] == "decode_hbu" else "prefill"
    want_len = (c.get("comparable_when") or {}).get("length")
    rows = []
    for p, d, recs, reasons in bench_groups(c, results, "throughput", kind, paper):
        if want_len and kind == "prefill":
            at = [r for r in recs if int(r.get("length", -1)) == int(want_len)]
            if at:
                recs = at
            else:
                reasons.append(f"prefill length {', '.join(str(x) for x in sorted({r['length'] for r in recs}))}"
                               f" vs {want_len}")
        note = scales_note([r["model"] for r in recs], paper)
        if c["id"] == "prefill_tflops":
            best = max(recs, key=lambda r: r.get("tflops") or 0)
            value = best.get("tflops")
            text = (f"{value:.3g} TFLOPS ({best['model']}, L={best['length']}{note})"
                    if value is not None else f"n/a: no FLOP count in this result ({best.get('tokens_per_s', 0):,.0f} "
                    f"tokens/s, {best['model']}, L={best['length']})")
        elif c["id"] == "prefill_mfu":
            best = max(recs, key=lambda r: r.get("tflops") or 0)
            value = best.get("mfu_vs_bf16_peak", best.get("mfu"))
            text = (f"{100 * value:.3g}% of bf16 peak ({100 * (best.get('mfu') or 0):.3g}% of the {best.get('dtype')} "
                    f"peak; {best['model']}, L={best['length']})" if value is not None
                    else "n/a: no FLOP count or peak in this result")
        else:
            best = max(recs, key=lambda r: r.get("hbu") or 0)
            value = best.get("hbu")
            text = (f"{100 * value:.3g}% ({best['model']}, {best.get('ms_per_token', 0):.3g} ms/token{note})"
                    if value is not None else "n/a (no bandwidth)")
        rows.append(row(c, text, bench_setup(p, d, recs), value, reasons, [p]))
    return rows


def eval_cache_speedup(c: dict[str, Any], results: Path, paper: tuple[str, ...]) -> list[Row]:
    want = (c.get("comparable_when") or {}).get("context")
    rows = []
    for p, d, recs, reasons in bench_groups(c, results, "cache_speedup", None, paper):
        at = [r for r in recs if want and int(r["context"]) == int(want)]
        if not at:
            head = [r for r in recs if r.get("headline")] or recs
            ctx = max(r["context"] for r in head)
            at = [r for r in head if r["context"] == ctx]
            if want:
                reasons.append(f"context {ctx} vs {want}")
        vals = [r["speedup"] for r in at]
        rng = f"{min(vals):.3g}x" if len(vals) == 1 else f"{min(vals):.3g}x-{max(vals):.3g}x"
        text = (f"{rng} at context {at[0]['context']} "
                f"({', '.join(sorted({r['model'] for r in at}, key=report.model_key))}"
                f"{scales_note([r['model'] for r in at], paper)})")
        rows.append(row(c, text, bench_setup(p, d, at), vals, reasons, [p]))
    return rows


def eval_sweep(c: dict[str, Any], results: Path, paper: tuple[str, ...]) -> list[Row]:
    rows = []
    for p, d, recs, reasons in bench_groups(c, results, "sweep", "decode", paper):
        worst, worst_m, ctxs = 0.0, None, sorted({r["context"] for r in recs})
        for m in sorted({r["model"] for r in recs}, key=report.model_key):
            ys = [r["ms_per_token"] for r in recs if r["model"] == m]
            ratio = max(ys) / min(ys)
            if ratio >= worst:
                worst, worst_m = ratio, m
        text = (f"max/min = {worst:.3f} ({worst_m}, contexts {ctxs[0]}-{ctxs[-1]}"
                f"{scales_note([r['model'] for r in recs], paper)})")
        rows.append(row(c, text, bench_setup(p, d, recs), worst, reasons, [p]))
    return rows


def parity_setup(d: dict[str, Any]) -> str:
    ref = d.get("reference") or {}
    return (f"JAX on {report.jax_device(d.get('provenance'))} vs {ref.get('backend')} on {ref.get('device')}; "
            f"{report.parity_weights(d)}")


def eval_parity(c: dict[str, Any], results: Path, paper: tuple[str, ...]) -> list[Row]:
    cw = c.get("comparable_when") or {}
    # one row per (label, reference backend, comparability): models with the same reasons are pooled
    groups: dict[tuple, list[tuple[Path, dict[str, Any]]]] = {}
    for p, d in load_results("parity", results):
        be = (d.get("reference") or {}).get("backend")
        reasons = model_weights_reasons(d.get("model"), (d.get("checkpoint") or {}).get("kind") == "random-init",
                                        paper)
        r = reference_reason(be, cw.get("reference_backends"), reference_interpreted(d.get("reference")))
        if r:
            reasons.append(r)
        groups.setdefault((d.get("label"), be, tuple(reasons)), []).append((p, d))
    rows = []
    for (label, _, reasons), items in groups.items():
        models = ", ".join(d["model"] for _, d in items)
        setup = "; ".join(dict.fromkeys(parity_setup(d) for _, d in items)) + f"; label {label}"
        if c["id"] == "greedy_64":
            gs = [d["greedy_summary"] for _, d in items]
            match, total = sum(g["tokens_matching_total"] for g in gs), sum(g["tokens_total"] for g in gs)
            ident, prompts = sum(g["identical_64_of_64"] for g in gs), sum(g["prompts"] for g in gs)
            n_new = sorted({int(d.get("n_new") or 0) for _, d in items})
            value = match / total if total else None
            text = (f"{match}/{total} tokens identical, {ident}/{prompts} prompts x {'/'.join(map(str, n_new))} "
                    f"steps ({models})")
            steps = cw.get("steps")
            rs = list(reasons) + ([f"{n_new} steps vs {steps}"] if steps and n_new != [int(steps)] else [])
        else:
            hidden = [x for x in items if "max_rel" in (x[1].get("hidden_worst") or {})]
            if not hidden:  # a logits-only backend (llama.cpp): nothing to say about hidden states
                continue
            worst = max(hidden, key=lambda x: x[1]["hidden_worst"]["max_rel"])[1]
            value = worst["hidden_worst"]["max_rel"]
            text = (f"max_rel {value:.2e} ({worst['hidden_worst'].get('ulps', float('nan')):.0f} ulps; "
                    f"{worst['model']}); models: {models}")
            rs = list(reasons)
        rows.append(row(c, text, setup, value, rs, [p for p, _ in items]))
    return rows


def eval_perplexity(c: dict[str, Any], results: Path, paper: tuple[str, ...]) -> list[Row]:
    cw = c.get("comparable_when") or {}
    rows = []
    for p, d in load_results("perplexity", results):
        comp = d.get("comparison") or {}
        ref = comp.get("reference_backend")
        if str(ref).startswith("jax_"):  # JAX against JAX (a 16-bit state vs float32): not the claim's comparison
            continue
        metric = comp.get("primary_metric") or "word_perplexity"
        m = d.get("model") or {}
        reasons = model_weights_reasons(m.get("name"), bool(m.get("synthetic")), paper)
        if cw.get("full_split") and d.get("scope") != "full test set":
            reasons.append(f"subset ({d.get('scope')})")
        ref_meta = (((((d.get("backends") or {}).get(ref) or {}).get("run") or {}).get("backend_extra") or {})
                    .get("meta"))
        r = reference_reason(ref, cw.get("reference_backends"), reference_interpreted(ref_meta))
        if r:
            reasons.append(r)
        jb = (d.get("backends") or {}).get("jax_fp32") or {}
        rb = (d.get("backends") or {}).get(ref) or {}
        delta = (((comp.get("vs_reference") or {}).get("jax_fp32") or {}).get(metric) or {}).get("delta")
        if jb.get("status") != "ok" or rb.get("status") != "ok" or delta is None:
            value, text = None, f"n/a (jax_fp32 {jb.get('status')}, {ref} {rb.get('status')})"
            if not reasons:
                reasons.append("reference or JAX result missing")
        else:
            value = abs(delta)
            text = (f"|delta| = {value:.2e} ({metric.replace('_perplexity', ' ppl')} {jb[metric]:.6g} vs "
                    f"{rb[metric]:.6g}; {m['label']}, {d['protocol']}, {(d.get('data') or {}).get('split')} split)")
        setup = f"JAX on {report.jax_device(d.get('provenance'))} vs {ref}; {m.get('weights')}; {d.get('scope')}"
        rows.append(row(c, text, setup, value, reasons, [p]))
    return rows


EVALUATORS = {"throughput": eval_throughput, "cache_speedup": eval_cache_speedup, "sweep": eval_sweep,
              "parity": eval_parity, "perplexity": eval_perplexity}


def compare(results: Path | None = None, reported_claims: dict[str, Any] | Path | None = None) -> list[Row]:
    """One row per claim and result group (see the module docstring); ``reported_claims`` defaults to
    paper/reported.yaml (mamba2_jax.eval.reported)."""
    rep = reported.load_reported(reported_claims)
    paper = reported.paper_models(rep)
    results = Path(results) if results is not None else results_dir()
    out = []
    for c in rep["claims"]:
        rows = EVALUATORS[c["experiment"]](c, results, paper)
        if not rows:
            rows = [Row(c["id"], c["claim"], paper_value(c), tolerance_text(c), "-",
                        f"no results/{c['experiment']}/ yet", f"not run: {MAKE_TARGET[c['experiment']]}")]
        out += rows
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="reported vs reproduced")
    ap.add_argument("--results", type=Path, default=None, help="results directory (default: results/)")
    ap.add_argument("--reported", type=Path, default=None, help="claims file (default: paper/reported.yaml)")
    a = ap.parse_args(argv)
    for r in compare(a.results, a.reported):
        print(f"{r.claim_id:20s} {r.status}\n    paper {r.paper}; reproduced {r.reproduced}\n    {r.setup}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
