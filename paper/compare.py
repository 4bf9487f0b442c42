"""Reported vs reproduced: the paper's claims (paper/reported.yaml) against the results in results/.

    python paper/compare.py [--results results] [--reported paper/reported.yaml]   # prints the table

Every claim is evaluated once per result group (one benchmark run, one parity reference backend and
label, one perplexity model x protocol).  A group that does not meet the claim's ``comparable_when``
(device, paper checkpoint weights, full split, reference backend, sequence length) gets the status
``not comparable: <reasons>`` and is never called a match; only comparable groups get PASS / FAIL
against the claim's tolerance.  ``paper/make_tables.py`` renders the rows as LaTeX and Markdown.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "figures"))

import style  # noqa: E402  (figures/style.py: result loaders and provenance helpers)

REPORTED = HERE / "reported.yaml"
DEVICE_NAMES = style.DEVICE_NAMES
PAPER_MODEL_RE = re.compile(r"(?:^|[_/-])(mamba2-(?:130m|370m|780m|1\.3b|2\.7b))$")
REFERENCE_NAMES = {"mamba_ssm_triton": "mamba_ssm Triton/CUDA kernels",
                   "mamba_ssm_ref_cpu": "mamba_ssm PyTorch reference functions on CPU",
                   "transformers": "HF transformers (torch path)"}
MAKE_TARGET = {"throughput": "make throughput", "sweep": "make sweep", "cache_speedup": "make cache-speedup",
               "perplexity": "make perplexity", "parity": "make parity"}


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


def load_reported(path: Path = REPORTED) -> dict[str, Any]:
    return yaml.safe_load(Path(path).read_text())


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
    target = DEVICE_NAMES.get(want, want)
    if pname == want and hw.get("matches_device"):
        return None
    if pname == want:
        return f"{actual} vs {target} (run with {target} peaks but not on that device)"
    return f"{actual} vs {target}"


def paper_model(name: str | None) -> str | None:
    m = PAPER_MODEL_RE.search(str(name or ""))
    return m.group(1) if m else None


def bench_weights_reasons(doc: dict[str, Any], recs: list[dict[str, Any]]) -> list[str]:
    out = []
    if any(r.get("weights") == "random-init" for r in recs):
        out.append("synthetic weights")
    others = sorted({r["model"] for r in recs if r.get("weights") != "random-init" and not paper_model(r["model"])})
    if others:
        out.append(f"{', '.join(others)} not among the paper's checkpoints")
    return out


def weights_reasons_parity(d: dict[str, Any]) -> list[str]:
    kind = (d.get("checkpoint") or {}).get("kind")
    if kind == "random-init":
        return ["synthetic weights"]
    if not paper_model(d.get("model")):
        return [f"{d.get('model')} not among the paper's checkpoints"]
    return []


def weights_reasons_ppl(d: dict[str, Any]) -> list[str]:
    m = d.get("model") or {}
    if m.get("synthetic"):
        return ["synthetic weights"]
    if not paper_model(m.get("name")):
        return [f"{m.get('name')} not among the paper's checkpoints"]
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


def bench_setup(p: Path, doc: dict[str, Any], recs: list[dict[str, Any]]) -> str:
    w = "; ".join(sorted({style.record_weights(r, doc) for r in recs}))
    prec = "; ".join(sorted({style.record_precision(r, doc) for r in recs}))
    return f"{style.bench_device(doc)}; {prec}; {w}; run {doc.get('run')}"


def scales_note(models: list[str]) -> str:
    n = len({paper_model(m) for m in models if paper_model(m)})
    return f"; {n} of 5 paper scales" if n and n < 5 else ""


# ------------------------------------------------------------------------------ per-experiment evaluation
def eval_throughput(c: dict[str, Any], results: Path) -> list[Row]:
    cw = c.get("comparable_when") or {}
    kind = "decode" if c["id"] == "decode_hbu" else "prefill"
    rows = []
    for p, d in style.load_bench(results, "throughput"):
        recs = [r for r in d["records"] if r.get("kind") == kind]
        if not recs:
            continue
        reasons = [x for x in [bench_device_reason(d, cw.get("device"))] if x] + bench_weights_reasons(d, recs)
        want_len = cw.get("length")
        if want_len and kind == "prefill":
            at = [r for r in recs if int(r.get("length", -1)) == int(want_len)]
            if at:
                recs = at
            else:
                reasons.append(f"prefill length {', '.join(str(x) for x in sorted({r['length'] for r in recs}))}"
                               f" vs {want_len}")
        if c["id"] == "prefill_tflops":
            best = max(recs, key=lambda r: r.get("tflops") or 0)
            value = best.get("tflops")
            text = (f"{value:.3g} TFLOPS ({best['model']}, L={best['length']}{scales_note([r['model'] for r in recs])})"
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
            text = (f"{100 * value:.3g}% ({best['model']}, {best.get('ms_per_token', 0):.3g} ms/token"
                    f"{scales_note([r['model'] for r in recs])})" if value is not None else "n/a (no bandwidth)")
        rows.append(Row(c["id"], c["claim"], paper_value(c), tolerance_text(c), text, bench_setup(p, d, recs),
                        status_of(c, value, reasons), reasons, value, [style.rel(p)]))
    return rows


def eval_cache_speedup(c: dict[str, Any], results: Path) -> list[Row]:
    cw = c.get("comparable_when") or {}
    rows = []
    for p, d in style.load_bench(results, "cache_speedup"):
        recs = d["records"]
        reasons = [x for x in [bench_device_reason(d, cw.get("device"))] if x] + bench_weights_reasons(d, recs)
        want = cw.get("context")
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
                f"({', '.join(sorted({r['model'] for r in at}, key=style.model_key))}"
                f"{scales_note([r['model'] for r in at])})")
        rows.append(Row(c["id"], c["claim"], paper_value(c), tolerance_text(c), text, bench_setup(p, d, at),
                        status_of(c, vals, reasons), reasons, vals, [style.rel(p)]))
    return rows


def eval_sweep(c: dict[str, Any], results: Path) -> list[Row]:
    cw = c.get("comparable_when") or {}
    rows = []
    for p, d in style.load_bench(results, "sweep"):
        recs = [r for r in d["records"] if r.get("kind") == "decode"]
        if not recs:
            continue
        reasons = [x for x in [bench_device_reason(d, cw.get("device"))] if x] + bench_weights_reasons(d, recs)
        worst, worst_m, ctxs = 0.0, None, sorted({r["context"] for r in recs})
        for m in sorted({r["model"] for r in recs}, key=style.model_key):
            ys = [r["ms_per_token"] for r in recs if r["model"] == m]
            ratio = max(ys) / min(ys)
            if ratio >= worst:
                worst, worst_m = ratio, m
        text = f"max/min = {worst:.3f} ({worst_m}, contexts {ctxs[0]}-{ctxs[-1]}{scales_note([r['model'] for r in recs])})"
        rows.append(Row(c["id"], c["claim"], paper_value(c), tolerance_text(c), text, bench_setup(p, d, recs),
                        status_of(c, worst, reasons), reasons, worst, [style.rel(p)]))
    return rows


def parity_setup(d: dict[str, Any]) -> str:
    prov = d.get("provenance") or {}
    be = (prov.get("jax") or {}).get("backend") or "?"
    dev = style.cpu_desc(prov) if be == "cpu" else be
    ref = d.get("reference") or {}
    kind = (d.get("checkpoint") or {}).get("kind")
    w = "synthetic weights (random init)" if kind == "random-init" else f"checkpoint {(d.get('checkpoint') or {}).get('source')}"
    return f"JAX on {dev} vs {ref.get('backend')} on {ref.get('device')}; {w}"


def eval_parity(c: dict[str, Any], results: Path) -> list[Row]:
    cw = c.get("comparable_when") or {}
    # one row per (label, reference backend, comparability): models with the same reasons are pooled
    groups: dict[tuple, list[tuple[Path, dict[str, Any]]]] = {}
    for p, d in style.load_parity(results):
        be = (d.get("reference") or {}).get("backend")
        reasons = weights_reasons_parity(d)
        r = reference_reason(be, cw.get("reference_backends"), reference_interpreted(d.get("reference")))
        if r:
            reasons.append(r)
        groups.setdefault((d.get("label"), be, tuple(reasons)), []).append((p, d))
    rows = []
    for (label, be, reasons), items in groups.items():
        models = ", ".join(d["model"] for _, d in items)
        setup = "; ".join(dict.fromkeys(parity_setup(d) for _, d in items)) + f"; label {label}"
        if c["id"] == "greedy_64":
            match = sum(d["greedy_summary"]["tokens_matching_total"] for _, d in items)
            total = sum(d["greedy_summary"]["tokens_total"] for _, d in items)
            ident = sum(d["greedy_summary"]["identical_64_of_64"] for _, d in items)
            prompts = sum(d["greedy_summary"]["prompts"] for _, d in items)
            n_new = sorted({int(d.get("n_new") or 0) for _, d in items})
            value = match / total if total else None
            text = (f"{match}/{total} tokens identical, {ident}/{prompts} prompts x {'/'.join(map(str, n_new))} "
                    f"steps ({models})")
            rs = list(reasons) + ([f"{n_new} steps vs 64"] if n_new != [64] else [])
        else:
            worst = max(items, key=lambda x: x[1]["hidden_worst"]["max_rel"])[1]
            value = worst["hidden_worst"]["max_rel"]
            text = (f"max_rel {value:.2e} ({worst['hidden_worst'].get('ulps', float('nan')):.0f} ulps; "
                    f"{worst['model']}); models: {models}")
            rs = list(reasons)
        rows.append(Row(c["id"], c["claim"], paper_value(c), tolerance_text(c), text, setup,
                        status_of(c, value, rs), rs, value, [style.rel(p) for p, _ in items]))
    return rows


def eval_perplexity(c: dict[str, Any], results: Path) -> list[Row]:
    cw = c.get("comparable_when") or {}
    rows = []
    for p, d in style.load_perplexity(results):
        comp = d.get("comparison") or {}
        ref = comp.get("reference_backend")
        metric = comp.get("primary_metric") or "word_perplexity"
        reasons = weights_reasons_ppl(d)
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
                    f"{rb[metric]:.6g}; {d['model']['label']}, {d['protocol']}, {(d.get('data') or {}).get('split')} split)")
        prov = d.get("provenance") or {}
        be = (prov.get("jax") or {}).get("backend") or "?"
        dev = style.cpu_desc(prov) if be == "cpu" else be
        setup = f"JAX on {dev} vs {ref}; {d['model'].get('weights')}; {d.get('scope')}"
        rows.append(Row(c["id"], c["claim"], paper_value(c), tolerance_text(c), text, setup,
                        status_of(c, value, reasons), reasons, value, [style.rel(p)]))
    return rows


EVALUATORS = {"throughput": eval_throughput, "cache_speedup": eval_cache_speedup, "sweep": eval_sweep,
              "parity": eval_parity, "perplexity": eval_perplexity}


def compare(results: Path = style.RESULTS, reported: dict[str, Any] | Path | None = None) -> list[Row]:
    rep = reported if isinstance(reported, dict) else load_reported(reported or REPORTED)
    out = []
    for c in rep["claims"]:
        rows = EVALUATORS[c["experiment"]](c, Path(results))
        if not rows:
            rows = [Row(c["id"], c["claim"], paper_value(c), tolerance_text(c), "-",
                        f"no results/{c['experiment']}/ yet", f"not run: {MAKE_TARGET[c['experiment']]}")]
        out += rows
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="reported vs reproduced")
    ap.add_argument("--results", type=Path, default=style.RESULTS)
    ap.add_argument("--reported", type=Path, default=REPORTED)
    a = ap.parse_args(argv)
    for r in compare(a.results, a.reported):
        print(f"{r.claim_id:20s} {r.status}\n    paper {r.paper}; reproduced {r.reproduced}\n    {r.setup}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
