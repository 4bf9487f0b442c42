"""Generate the paper's tables from results/: LaTeX (paper/tables/*.tex) and Markdown twins (*.md).

    python -m paper.make_tables [--results results] [--out paper/tables] [--reported paper/reported.yaml]

Tables: throughput, sweep, cache_speedup, perplexity, parity, comparison (reported vs reproduced,
paper/compare.py), comparison_cpu, compiled_tpu, compiled_anchor (ours beside the paper's package compiled
for the same target), and provenance (the paper's appendix: per table and
figure, its result files and the git sha, machine, precision and weights each records).  A table with
no input is still written (one row saying which make target fills it), so paper/main.tex always
compiles.  A LaTeX table is a ``table`` float, or a ``longtable`` that breaks across pages (booktabs,
graphicx, array, longtable), with a short caption (at most CAPTION_WORDS words); the Markdown twin
keeps the long caption and the provenance lines.  No cell is ``nan`` or ``None``: a missing value is
``n/a`` with a footnote that says why.  Results are read through mamba2_jax.eval.results.load_results,
the paper's numbers through mamba2_jax.eval.reported.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from mamba2_jax.eval import compiled, report, reported
from mamba2_jax.eval.report import MAKE_TARGET, tex
from mamba2_jax.eval.results import load_results
from mamba2_jax.eval.windows import primary_metric
from mamba2_jax.fileio import atomic_write_text
from mamba2_jax.paths import checkout_root, results_dir

from . import compare

HERE = Path(__file__).resolve().parent
OUT = HERE / "tables"
FIG_OUT = (checkout_root() or HERE.parent) / "figures" / "out"
TABLES = ("throughput", "sweep", "cache_speedup", "perplexity", "parity", "comparison", "comparison_cpu",
          "compiled_tpu", "compiled_anchor", "state_dtype")
STATE_BACKENDS = {"bfloat16": "jax_fp32_state_bf16", "float16": "jax_fp32_state_fp16"}


def md(s: Any) -> str:
    return ("" if s is None else str(s)).replace("|", "\\|").replace("\n", " ")


def fmt(x: Any, spec: str = ".3g", pct: bool = False) -> str:
    if x is None:
        return "n/a"
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if v != v:  # nan
        return "n/a"
    return f"{100 * v:{spec}}%" if pct else f"{v:{spec}}"


CAPTION_WORDS = 60                             # the paper's captions: what is plotted, the one thing to see
NA_LOGITS = "n/a*"
NA_LOGITS_NOTE = "* n/a: this reference (llama.cpp) returns logits only, no per-layer hidden states."
COLSPEC = re.compile(r"[lcr]|p\{[^}]*\}")
RAGGED = r">{\raggedright\arraybackslash}"     # p{} columns: ragged right (array package)


_LONG_TOKEN = re.compile(r"[^\s]{9,}")


def ltex(s: Any) -> str:
    """``tex(s)`` with break points after / and _ inside long tokens (paths, file and backend names), so
    that narrow p{} columns wrap them instead of overflowing."""
    marked = _LONG_TOKEN.sub(lambda m: re.sub(r"([/_])(?=.)", "\\1\x00", m.group(0)), "" if s is None else str(s))
    return tex(marked).replace("\x00", r"\allowbreak{}")


class TexCell(str):
    """A cell whose Markdown text is the string and whose LaTeX is given (e.g. a \\ref to a label)."""

    def __new__(cls, text: str, latex: str):
        obj = super().__new__(cls, text)
        obj.latex = latex
        return obj


def cell_tex(x: Any) -> str:
    return x.latex if isinstance(x, TexCell) else ltex(x)


class Table:
    """Columns + rows of plain strings, rendered to LaTeX and Markdown."""

    def __init__(self, name: str, title: str, columns: list[str], align: str, rows: list[list[str]],
                 caption: str, provenance: list[str], empty: str | None = None, notes: list[str] | None = None,
                 size: str = "footnotesize", short: str | None = None, long: bool = False,
                 md_notes: list[str] | None = None, group: int = 0):
        """``caption`` and ``provenance`` go to the Markdown twin; the LaTeX caption is ``short`` (at most
        CAPTION_WORDS words: what is plotted and the one thing to see; the paper's appendix holds the
        provenance).  ``notes`` (footnotes such as why a cell is n/a) go to both, ``md_notes`` to the
        Markdown only.  ``long``: a longtable that breaks across pages (its p{} widths must fit).  ``group``:
        in LaTeX, the first ``group`` cells of a row that repeat the row above are left blank, and a small
        space separates the groups."""
        self.colspecs = COLSPEC.findall(align)
        assert "".join(self.colspecs) == align and len(self.colspecs) == len(columns), (name, align, columns)
        for r in rows:
            assert len(r) == len(columns), (name, r)
        self.name, self.title, self.columns, self.align, self.rows = name, title, columns, align, rows
        self.caption, self.provenance, self.empty, self.notes = caption, provenance, empty, notes or []
        self.size, self.short, self.long, self.md_notes = size, short or caption, long, md_notes or []
        self.sources: list[str] = []       # the result files the table reads (the paper's appendix)
        self.group = group
        assert len(self.short.split()) <= CAPTION_WORDS, (name, len(self.short.split()))

    def latex(self) -> str:
        n = len(self.columns)
        cols = "".join(RAGGED + c if c.startswith("p") else c for c in self.colspecs)
        head = " & ".join(r"\textbf{" + tex(c) + "}" for c in self.columns) + r" \\"
        label = r"\label{tab:" + self.name.replace("_", "-") + "}"
        caption = r"\caption{" + tex(self.short) + "}"
        if self.rows:
            body, prev = [], None
            for r in self.rows:
                key = r[:self.group]
                same = self.group and key == prev
                if self.group and prev is not None:
                    body.append(r"\addlinespace[1pt]" if same else r"\addlinespace[4pt]")
                cells = [("" if same and i < self.group else cell_tex(x)) for i, x in enumerate(r)]
                body.append(" & ".join(cells) + r" \\")
                prev = key
        else:
            body = [r"\multicolumn{" + str(n) + "}{c}{" + tex(self.empty or "no results") + r"} \\"]
        notes = [r"\par\smallskip{\scriptsize " + ltex(note) + "}" for note in self.notes]
        out = ["% Generated by paper/make_tables.py from results/ -- do not edit by hand.", f"% {self.title}"]
        if self.long:       # breaks across pages; the header repeats
            out += [r"\begingroup" + "\\" + self.size + r"\setlength{\tabcolsep}{3pt}",
                    r"\begin{longtable}{" + cols + "}", caption + label + r" \\", r"\toprule", head,
                    r"\midrule", r"\endfirsthead", r"\multicolumn{" + str(n) + r"}{l}{\emph{(continued)}} \\",
                    r"\toprule", head, r"\midrule", r"\endhead", *body, r"\bottomrule", r"\end{longtable}"]
            out += [n_.replace(r"\par\smallskip", r"\par\noindent") for n_ in notes] + [r"\endgroup", ""]
            return "\n".join(out)
        out += [r"\begin{table}[htbp]", r"\centering", "\\" + self.size, caption, label,
                # shrink to the text width only when wider (graphicx; no adjustbox needed)
                r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%",
                r"\begin{tabular}{" + cols + "}", r"\toprule", head, r"\midrule", *body,
                r"\bottomrule", r"\end{tabular}}", *notes, r"\end{table}", ""]
        return "\n".join(out)

    def markdown(self) -> str:
        out = [f"# {self.title}", "", "<!-- Generated by paper/make_tables.py from results/ -- do not edit. -->", "",
               self.caption, ""]
        if self.provenance:
            out += ["Produced by:", ""] + [f"- {p}" for p in self.provenance] + [""]
        out += ["| " + " | ".join(md(c) for c in self.columns) + " |",
                "|" + "|".join("---:" if a == "r" else "---" for a in self.colspecs) + "|"]
        if self.rows:
            out += ["| " + " | ".join(md(x) for x in r) + " |" for r in self.rows]
        else:
            out += ["| " + md(self.empty or "no results") + " |" + " |" * (len(self.columns) - 1)]
        out.append("")
        notes = self.notes + self.md_notes
        out += [f"{n}" for n in notes] + ([""] if notes else [])
        return "\n".join(out)


# ------------------------------------------------------------------------------ shared table shapes
def empty_text(experiment: str) -> str:
    pattern = "*/*.json" if experiment == "perplexity" else "*.json"
    return f"no results/{experiment}/{pattern}: run `{MAKE_TARGET[experiment]}`"


def bench_table(results: Path, experiment: str, title: str, columns: list[str], align: str, caption: str,
                rows_of: Callable[[dict[str, Any]], Iterable[list[str]]], short: str | None = None,
                na_note: str | None = None) -> Table:
    """A benchmark table: one Device column, then ``rows_of(doc)`` per run; its provenance lines;
    ``na_note``: the footnote that says why a cell is n/a, printed when one is."""
    items = load_results(experiment, results, include_bench=True)
    rows = [[report.bench_device_short(d), *r] for _, d in items for r in rows_of(d)]
    prov = []
    for p, d in items:
        f = report.run_facts(p, d)
        prov.append(f"{f['run']}: {f['device']}; {f['precision']}; {f['weights']}; git {f['git']}, {f['date']} "
                    f"({f['file']}).")
    has_na = any("n/a" in x for r in rows for x in r)
    t = Table(experiment, title, ["Device", *columns], "l" + align, rows, caption, prov,
              empty=empty_text(experiment), short=short, notes=[na_note] if na_note and has_na else [])
    t.sources = [report.rel(p) for p, _ in items]
    return t


# ------------------------------------------------------------------------------ tables
def throughput_rows(d: dict[str, Any]) -> Iterable[list[str]]:
    for r in sorted(d["records"], key=lambda r: (report.model_key(r["model"]), r.get("kind") != "prefill",
                                                 r.get("length", 0))):
        if r.get("kind") == "prefill":
            yield [r["model"], "prefill", str(r["length"]), fmt(1e3 * r["median_s"], ".4g"),
                   fmt(r.get("tokens_per_s"), ",.0f"), fmt(r.get("tflops"), ".3g"), fmt(r.get("mfu"), ".3g", pct=True),
                   "-", fmt(r.get("compile_s"), ".3g")]
        elif r.get("kind") == "decode":
            yield [r["model"], f"decode (ctx {r.get('context')})", str(r["length"]),
                   fmt(r.get("ms_per_token"), ".4g") + "/tok", fmt(r.get("tokens_per_s"), ",.1f"), "-",
                   fmt(r.get("mfu"), ".2g", pct=True), fmt(r.get("hbu"), ".3g", pct=True),
                   fmt(r.get("compile_s"), ".3g")]


def throughput_table(results: Path, rep: dict[str, Any]) -> Table:
    return bench_table(
        results, "throughput", "Throughput: batch-1 prefill and cached decode",
        ["Model", "Phase", "Tokens", "Median ms", "Tokens/s", "TFLOP/s", "MFU", "HBU", "Compile s"], "llrrrrrrr",
        "Batch-1 prefill (last-position logits) and cached decode (a compiled loop of the given number of "
        "tokens), medians after a warm-up compile; MFU and HBU against the device's peak FLOP/s and "
        "memory bandwidth (measured at run start on CPU).", throughput_rows,
        short="Batch-1 prefill and cached decode: median time, tokens/s, achieved TFLOP/s, and MFU and HBU "
              "against the peak FLOP/s and memory bandwidth measured at the start of the run. On a CPU these "
              "numbers orient; they do not reproduce the paper's accelerator numbers.",
        na_note="n/a: the make bench run (results/bench) counts FLOPs for prefill only (its TFLOP/s and MFU: "
                "that count over the median time), so its decode has no MFU. -: not applicable to the phase.")


def sweep_rows(d: dict[str, Any]) -> Iterable[list[str]]:
    by: dict[tuple, dict] = {}
    for r in d["records"]:
        by.setdefault((r["model"], r["context"]), {})[r.get("kind")] = r
    for (m, c), k in sorted(by.items(), key=lambda kv: (report.model_key(kv[0][0]), kv[0][1])):
        dec, pre = k.get("decode") or {}, k.get("prefill") or {}
        yield [m, str(c), fmt(dec.get("ms_per_token"), ".4g"), fmt(dec.get("tokens_per_s"), ",.1f"),
               fmt(dec.get("hbu"), ".3g", pct=True),
               fmt(1e3 * pre["median_s"] if pre.get("median_s") is not None else None, ".4g"),
               fmt(pre.get("tokens_per_s"), ",.0f"), fmt(pre.get("mfu"), ".3g", pct=True)]


def sweep_table(results: Path, rep: dict[str, Any]) -> Table:
    return bench_table(
        results, "sweep", "Sweep: decode and prefill vs context length",
        ["Model", "Context", "Decode ms/tok", "Decode tok/s", "Decode HBU", "Prefill ms", "Prefill tok/s",
         "Prefill MFU"], "lrrrrrrr",
        "Decode ms/token from a cache prefilled to each context (flat = sequence-length independent) and "
        "the prefill of that context, timed round-robin.", sweep_rows,
        short="Decode ms/token from a cache prefilled to each context, and the prefill of that context, timed "
              "round-robin. Decode time stays flat as the context grows (the O(1) cache); prefill time grows "
              "with it.",
        na_note="n/a: the make bench run (results/bench) times decode after each context, not the prefill of "
                "that context.")


def cache_speedup_table(results: Path, rep: dict[str, Any]) -> Table:
    c = reported.claim("cache_speedup_4096", rep)

    def rows_of(d):
        for r in sorted(d["records"], key=lambda r: (report.model_key(r["model"]), r["context"])):
            yield [r["model"], str(r["context"]) + (" *" if r.get("headline") else ""),
                   fmt(r["cached_ms_per_token"], ".4g"), fmt(r["recompute_ms_per_token"], ".4g"),
                   fmt(r["speedup"], ".3g") + "x"]

    return bench_table(
        results, "cache_speedup", "Cached decode vs full-prefix recompute",
        ["Model", "Context", "Cached ms/tok", "Recompute ms/tok", "Speedup"], "lrrrr",
        "Cost of one new token: the compiled cached decode loop vs a last-position prefill over the whole "
        f"prefix, timed alternately; * = the run's headline context (the paper reports {c['display']} on "
        f"{reported.device_name(c)}).", rows_of,
        short="Cost of one new token: the cached decode loop against a last-position prefill over the whole "
              "prefix, timed alternately. The speedup grows with the context; * marks each run's headline "
              "context.")


def perplexity_table(results: Path, rep: dict[str, Any]) -> Table:
    c = reported.claim("perplexity_delta", rep)
    items = [(p, d) for p, d in load_results("perplexity", results) if not _state_dtype_run(d)]
    rows, prov = [], []
    for p, d in items:
        comp = d.get("comparison") or {}
        ref = comp.get("reference_backend")
        metric = comp.get("primary_metric") or primary_metric(d["protocol"])
        b = d.get("backends") or {}

        def val(name, b=b, metric=metric):
            v = b.get(name) or {}
            return fmt(v.get(metric), ".6f") if v.get("status") == "ok" else (v.get("status") or "n/a")

        delta = (((comp.get("vs_reference") or {}).get("jax_fp32") or {}).get(metric) or {}).get("delta")
        rows.append([d["model"]["label"] + (" (synthetic)" if d["model"].get("synthetic") else ""),
                     d["protocol"], metric.replace("_perplexity", " ppl"), d.get("scope") or "?",
                     val("jax_fp32"), val("jax_bf16"), val("transformers"), f"{val(ref)} ({ref})",
                     "n/a" if delta is None else f"{delta:+.2e}",
                     fmt((b.get("jax_fp32") or {}).get("n_tokens"), ".0f")])
        pv = d.get("provenance") or {}
        prov.append(f"{d['model']['label']} / {d['protocol']}: JAX on {report.jax_device(pv)}; JAX fp32 = float32 "
                    f"params, matmul precision highest; JAX bf16 = bfloat16 params, float32 state and accumulation; "
                    f"weights: {d['model'].get('weights')}; WikiText-103 {(d.get('data') or {}).get('split')} split; "
                    f"git {report.short_sha(pv)}, {pv.get('date_utc', '?')} ({report.rel(p)}).")
    na = ["n/a: that run did not score this backend."] if any(x == "n/a" for r in rows for x in r[4:8]) else []
    return _with_sources(items, Table("perplexity", "WikiText-103 perplexity: JAX vs reference",
                 ["Model", "Protocol", "Metric", "Scope", "JAX fp32", "JAX bf16", "transformers", "Reference",
                  "Delta fp32-ref", "Tokens"], "p{2.3cm}llp{1.9cm}rrrp{2.5cm}rr", rows,
                 "Perplexity of every backend on identical scoring windows (lm-evaluation-harness rolling "
                 "windows: word perplexity; strided: token perplexity). The paper reports agreement within "
                 f"+-{float(c['tolerance']['value']):g} with mamba_ssm v2.2.2.", prov, empty=empty_text("perplexity"),
                 notes=na,
                 short="WikiText-103 perplexity of every backend on identical scoring windows (subsets of the test "
                       "split). The column to read is Delta fp32-ref, JAX fp32 minus the reference, against the "
                       f"paper's ±{float(c['tolerance']['value']):g}."))


def parity_table(results: Path, rep: dict[str, Any]) -> Table:
    items = load_results("parity", results)
    rows, prov = [], []
    logits_only = False
    for _, d in items:
        g = d["greedy_summary"]
        ck = d.get("checkpoint") or {}
        hw = d.get("hidden_worst") or {}
        logits_only |= "max_rel" not in hw
        rows.append([d["model"], "synthetic" if ck.get("kind") == "random-init" else "checkpoint",
                     d["reference"]["backend"], fmt(hw.get("max_rel"), ".2e").replace("n/a", NA_LOGITS),
                     fmt(hw.get("ulps"), ".1f").replace("n/a", NA_LOGITS), f"{d['logits_worst']['max_rel']:.2e}",
                     f"{g['identical_64_of_64']}/{g['prompts']}", f"{g['tokens_matching_total']}/{g['tokens_total']}",
                     "PASS" if d.get("pass") else "FAIL"])
    seen = set()
    for _, d in items:
        key = (d.get("label"), (d.get("provenance") or {}).get("date_utc"))
        if key in seen:
            continue
        seen.add(key)
        pv, j = d.get("provenance") or {}, d.get("jax") or {}
        prov.append(f"label {d.get('label')}: JAX on {report.jax_device(pv)}, "
                    f"{j.get('param_dtype')} params, matmul precision {j.get('matmul_precision')}; references on "
                    f"{d['reference'].get('device')} in {d['reference'].get('dtype')}; git {report.short_sha(pv)}, "
                    f"{pv.get('date_utc', '?')}.")
    seen = set()
    for _, d in items:  # the references against each other: the fp32 noise scale
        for pair, v in (d.get("reference_spread") or {}).items():
            if (d["model"], pair) not in seen:
                seen.add((d["model"], pair))
                hid = v["hidden"].get("max_rel")  # None: a reference without hidden states
                hid = f"{hid:.2e}" if hid is not None else "n/a (logits only)"
                prov.append(f"Reference spread, {d['model']}, {pair}: hidden max rel {hid}, "
                            f"logits max rel {v['logits']['max_rel']:.2e}, greedy identical "
                            f"{v['greedy_identical_prompts']}/{v['prompts']}.")
    tol = next(((d.get("tolerance") or {}).get("max_rel") for _, d in items), None)
    verdict = ("Every row passes." if rows and all(r[-1] == "PASS" for r in rows)
               else "Rows marked FAIL exceed the tolerance or diverge." if rows else "")
    return _with_sources(items, Table("parity", "Parity with mamba_ssm v2.2.2 and HF transformers",
                 ["Model", "Weights", "Reference", "Hidden max rel", "Hidden ulps", "Logits max rel",
                  "Prompts identical", "Tokens identical", "Pass"], "lllrrrrrl", rows,
                 "Worst relative error max|JAX-ref|/max|ref| over layers and prompts (ulps: in units of the float32 "
                 "spacing at max|ref|), and greedy continuations identical to the reference"
                 + (f"; pass = max rel <= {tol:g} and every greedy token identical (or each divergence below the "
                    f"reference's noise floor)." if tol else "."), prov,
                 empty=empty_text("parity"), notes=[NA_LOGITS_NOTE] if logits_only else [],
                 short="Worst relative error max|JAX − ref| / max|ref| of the hidden states and logits over layers "
                       "and prompts against each reference (ulps: float32 spacings at max|ref|), and greedy tokens "
                       + (f"identical to the reference; pass: max rel ≤ {tol:g} and every token identical. "
                          if tol else "identical to the reference. ") + verdict))


def _state_dtype_run(d: dict[str, Any]) -> bool:
    """A perplexity run of the 16-bit state backends against the float32 state (make perplexity-state-dtype)."""
    return any(b in (d.get("backends") or {}) for b in STATE_BACKENDS.values())


SHAPE_130M = "130m shape (random init)"


def _state_model(label: str) -> str:
    """One row name for the 130m shape's random inits (the perplexity run's synthetic-d768-l24-s*, the
    fidelity run's random-mamba2-130m): the state's rounding is measured on the shape, not on weights."""
    return SHAPE_130M if label.startswith(("synthetic-d768-l24", "random-mamba2-130m")) else label


def state_dtype_table(results: Path, rep: dict[str, Any]) -> Table:
    """A 16-bit SSM state against the float32 state: perplexity Δ per protocol (make perplexity-state-dtype)
    and the decode path's greedy agreement and logits (make state-dtype-fidelity), per model and dtype."""
    ppl_items = [(p, d) for p, d in load_results("perplexity", results) if _state_dtype_run(d)]
    fid_items = load_results("state_dtype", results)
    cells: dict[tuple[str, str], dict[str, str]] = {}
    prov = []
    for p, d in ppl_items:
        metric = (d.get("comparison") or {}).get("primary_metric") or primary_metric(d["protocol"])
        vs = (d.get("comparison") or {}).get("vs_reference") or {}
        for sdt, b in STATE_BACKENDS.items():
            rel = ((vs.get(b) or {}).get(metric) or {}).get("rel")
            if rel is not None:
                c = cells.setdefault((_state_model(d["model"]["label"]), sdt), {})
                c[d["protocol"]] = f"{rel:+.1e} ({d.get('scope') or '?'})"
        pv = d.get("provenance") or {}
        prov.append(f"{d['model']['label']} / {d['protocol']}: perplexity, float32 params, JAX on "
                    f"{report.jax_device(pv)}; git {report.short_sha(pv)} ({report.rel(p)}).")
    for p, d in fid_items:
        for key, v in (d.get("summary") or {}).items():
            model, sdt = key.rsplit("/", 1)
            c = cells.setdefault((_state_model(model), sdt), {})
            c["greedy"] = f"{v['tokens_agree']}/{v['tokens']} ({v['prompts_all_agree']}/{v['prompts']} prompts)"
            c["logits"] = fmt(v.get("logits_max_rel"), ".1e")
        pv = d.get("provenance") or {}
        prov.append(f"greedy and logits: {', '.join(d.get('models') or {})}; git {report.short_sha(pv)} "
                    f"({report.rel(p)}).")
    order = [SHAPE_130M, *report.model_order()]
    rows = [[model, sdt, c.get("lm_eval_rolling", "n/a"), c.get("strided", "n/a"), c.get("greedy", "n/a"),
             c.get("logits", "n/a")]
            for (model, sdt), c in sorted(cells.items(), key=lambda kv: (
                order.index(kv[0][0]) if kv[0][0] in order else len(order), kv[0][0], kv[0][1]))]
    na = ["n/a: no run of that measurement for this model and state dtype."] \
        if any(x == "n/a" for r in rows for x in r[2:]) else []
    return _with_sources(ppl_items + fid_items, Table(
        "state_dtype", "A 16-bit SSM state against the float32 state",
        ["Model", "State", "Rolling ppl rel. Δ", "Strided ppl rel. Δ", "Greedy tokens equal", "Logits max rel."],
        "p{2.6cm}lp{2.4cm}p{2.4cm}p{2.6cm}r", rows,
        "The SSM state stored in bfloat16 or float16 (float32 math inside the step), against the float32 "
        "state, float32 parameters: the relative perplexity difference on the WikiText-103 test split (each "
        "window scored as prefill calls of 256 tokens, the state stored between calls as a server's chunked "
        "prefill stores it; scope in brackets), and on the decode path (the state stored every token) the "
        "greedy tokens over 64 steps "
        "equal to the float32 state's on the parity prompts, and the largest relative logit difference "
        "along the float32 state's greedy path.", prov,
        empty="no results/perplexity/*/*-state_dtype.json or results/state_dtype/*.json: run "
              "`make perplexity-state-dtype` and `make state-dtype-fidelity`", notes=na,
        short="A 16-bit SSM state against the float32 state: perplexity difference (state stored every 256 "
              "tokens) and, on the decode path (stored every token), greedy tokens equal over 64 steps and "
              "the largest relative logit difference."))


def _with_sources(items: list[tuple[Path, Any]], t: Table) -> Table:
    t.sources = [report.rel(p) for p, _ in items]
    return t


def _hardware_claim(c: dict[str, Any]) -> bool:
    return bool((c.get("comparable_when") or {}).get("device"))


def _cpu_row(r: compare.Row) -> bool:
    """A row whose result ran on the CPU while its claim names an accelerator."""
    return any(x.startswith("CPU vs ") for x in r.reasons)


def split_comparison(results: Path, rep: dict[str, Any]) -> tuple[list[compare.Row], list[compare.Row]]:
    """(rows of the main table, CPU-analogue rows).  A claim about a TPU or a GPU keeps in the main table
    only results from an accelerator; when there is none, its one row says it was not tested here."""
    rows = compare.compare(results, rep)
    comp = compiled.load_compiled(results)
    claims = {c["id"]: c for c in rep["claims"]}
    main, cpu = [], []
    for cid, c in claims.items():
        mine = [r for r in rows if r.claim_id == cid]
        if not _hardware_claim(c):
            main += mine
            continue
        cpu += [r for r in mine if _cpu_row(r)]
        accel = [r for r in mine if not _cpu_row(r) and not r.status.startswith("not run: ")]
        main += accel or [compare.Row(cid, c["claim"], compare.paper_value(c), compare.tolerance_text(c),
                                      _compiled_summary(c, comp), f"needs {reported.device_name(c)}",
                                      compiled.NOT_TESTED)]
    return main, cpu


def _rng(xs, spec: str, pct: bool = False) -> str:
    lo, hi = min(xs), max(xs)
    f = (lambda v: f"{100 * v:{spec}}%") if pct else (lambda v: f"{v:{spec}}")
    return f(lo) if f(lo) == f(hi) else f"{f(lo)}-{f(hi)}"


def _compiled_summary(c: dict[str, Any], comp: dict[str, Any]) -> str:
    """One line on what the compiled v6e programs imply for a TPU claim (details: compiled_tpu.md)."""
    xs = compiled.implications(c, comp) if (c.get("comparable_when") or {}).get("device") == "tpu_v6e" else []
    if not xs:
        return "-"
    n = f"{len(xs)} scale(s), compiled for TPU v6e, not run"
    if c["id"] == "prefill_tflops":
        ok = sum(x["verdict"] == compiled.PLAUSIBLE for x in xs)
        return (f"bound {_rng([x['bound_tflops'] for x in xs], '.4g')} TFLOP/s per chip "
                f"({_rng([x['xla_bound_tflops'] for x in xs], '.4g')} with XLA's bytes; {n}); within the bound at "
                f"{ok} of {len(xs)} scales: plausible, not reproduced")
    if c["id"] == "prefill_mfu":
        # with the minimum bytes the bound is the peak (100%); XLA's bytes bracket it from below
        return (f"bound MFU {_rng([x['bound_mfu'] for x in xs], '.3g', True)} with the minimum bytes, "
                f"{_rng([x['xla_bound_mfu'] for x in xs], '.3g', True)} with XLA's bytes ({n})")
    if c["id"] == "decode_hbu":
        return (f"step bound {_rng([x['bound_tokens_per_s'] for x in xs], ',.0f')} tokens/s at 100% HBU "
                f"({_rng([x['xla_bound_tokens_per_s'] for x in xs], ',.0f')} with XLA's bytes); 64% HBU = "
                f"{_rng([x['claim_tokens_per_s'] for x in xs], ',.0f')} tokens/s ({n})")
    if c["id"] == "cache_speedup_4096":
        return (f"roofline recompute/cached ratio {_rng([x['roofline_ratio'] for x in xs], '.3g')}x ({n}; a ratio of "
                f"bounds, not of achieved times)")
    return "-"


def comparison_table(results: Path, rep: dict[str, Any]) -> Table:
    rows, _ = split_comparison(results, rep)
    body = [[r.claim, r.paper, r.tolerance, r.reproduced, r.setup, r.status] for r in rows]
    sources = list(dict.fromkeys(s for r in rows for s in r.sources))
    paper = rep["paper"]
    t = Table("comparison", "Reported vs this artifact",
                 ["Claim", "Paper", "Tolerance", "Result here", "Setup (device; precision; weights)", "Status"],
                 "p{2.2cm}p{1.4cm}p{1.8cm}p{3.0cm}p{3.3cm}p{3.8cm}", body,
                 f"The paper's claims (paper/reported.yaml; arXiv {paper['arxiv']} "
                 f"{'/'.join(paper.get('versions') or {})} abstracts) against this "
                 "artifact's results. No TPU or GPU claim was tested here: this machine has no TPU or GPU, so "
                 "each such claim's row says so; what the TPU v6e programs, compiled by the TPU compiler but not "
                 "run, imply for those claims is in the compiled-programs table, and the CPU numbers are in the "
                 "separate CPU-analogue table. PASS/FAIL only where the result is comparable (same device "
                 "class, the paper's checkpoints, the paper's reference and setting); every other row says why "
                 "it is not comparable and is not a reproduction of the paper's number.", [],
                 notes=["Tolerances marked 'ours' are this artifact's reading of an unquantified statement."],
                 md_notes=["Result files: " + ", ".join(sources) + "."] if sources else [],
                 size="scriptsize", long=True, group=3,
                 short="The paper's claims against this artifact's results. PASS or FAIL only where a result is "
                       "comparable (same device class, the paper's checkpoints and reference); every other row says "
                       "why it is not. No TPU or GPU was available here, so no speed claim was tested.")
    t.sources = sources
    return t


def _probe(r: compare.Row, results: Path) -> str:
    if r.claim_id != "decode_hbu":
        return "-"
    if any("[make bench]" in x or "make bench" in r.setup for x in [r.setup]):
        return "interleaved median StreamBench of the same run (make bench)"
    return "best StreamBench round at run start (this run has no interleaved probe)"


def cpu_analogue_table(results: Path, rep: dict[str, Any]) -> Table:
    _, rows = split_comparison(results, rep)
    body = [[r.claim, r.paper, r.reproduced, r.setup, _probe(r, results)] for r in rows]
    sources = list(dict.fromkeys(s for r in rows for s in r.sources))
    t = Table("comparison_cpu", "CPU analogues of the paper's TPU and GPU claims (not reproductions)",
                 ["Claim (device of the paper)", "Paper", "CPU analogue here", "Setup", "Bandwidth probe (HBU)"],
                 "p{3.0cm}p{1.8cm}p{3.6cm}p{4.2cm}p{3.0cm}", body,
                 "The same metrics measured on this CPU, for orientation only. A CPU number is never a "
                 "reproduction of a TPU or GPU number: different device, different roofline, and (here) random "
                 "weights. HBU-like fractions on CPU are bytes per step / time / the streaming bandwidth named "
                 "in the last column.", [],
                 empty="no CPU benchmark results (run `make bench` or `make throughput-smoke`)",
                 md_notes=(["Result files: " + ", ".join(sources) + "."] if sources else []), size="scriptsize",
                 long=True, group=2,
                 short="The paper's TPU and GPU metrics measured on this CPU, for orientation only: another device "
                       "with another roofline, and random weights. No row reproduces a number of the paper.")
    t.sources = sources
    return t


def _gb(x) -> str:
    return "n/a" if x is None else f"{x / 1e9:.3g} GB"


def compiled_table(results: Path, rep: dict[str, Any]) -> Table:
    comp = compiled.load_compiled(results)
    rows = []
    for c in rep["claims"]:
        if (c.get("comparable_when") or {}).get("device") != "tpu_v6e":
            continue
        for x in sorted(compiled.implications(c, comp), key=lambda x: report.model_key(x["model"])):
            fit = (f"{x['hbm_needed'] / 2**30:.3g} of {x['hbm'] / 2**30:.3g} GiB on {x['chips']} chip(s): "
                   f"{'fits' if x['fits'] else 'does not fit'}" if x["hbm_needed"] is not None else "n/a")
            if c["id"] in ("prefill_tflops", "prefill_mfu"):
                prog = (f"{x['program']}: {x['flops'] / 1e12:.3g} TFLOP; {_gb(x['min_bytes'])} min, "
                        f"{_gb(x['xla_bytes'])} XLA")
                if c["id"] == "prefill_tflops":
                    bound = (f"<= {x['bound_tflops']:.4g} TFLOP/s ({x['xla_bound_tflops']:.4g} with XLA bytes); "
                             f"140 TFLOP/s = {1e3 * x['claim_time_s']:.3g} ms")
                else:
                    bound = f"MFU <= {x['bound_mfu']:.1%} ({x['xla_bound_mfu']:.1%} with XLA bytes)"
                verdict = x["verdict"]
                roof = f"{1e3 * x['min_time_s']:.3g} ms ({1e3 * x['xla_time_s']:.3g} ms with XLA bytes)"
            elif c["id"] == "decode_hbu":
                prog = (f"step: {x['flops'] / 1e9:.3g} GFLOP; {_gb(x['min_bytes'])} min, {_gb(x['xla_bytes'])} XLA")
                bound = (f"<= {x['bound_tokens_per_s']:,.0f} tok/s at 100% HBU; 64% HBU = "
                         f"{x['claim_tokens_per_s']:,.0f} tok/s ({x['xla_bound_tokens_per_s']:,.0f} with XLA bytes)")
                verdict = x["verdict"]
                roof = f"{1e3 * x['min_time_s']:.3g} ms ({1e3 * x['xla_time_s']:.3g} ms with XLA bytes)"
            else:
                prog = f"{x['program']}"
                bound = (f"roofline recompute/cached = {x['roofline_ratio']:.3g}x (min bytes), "
                         f"{x['xla_roofline_ratio']:.3g}x (XLA bytes)")
                lo, hi = x["claim_range"]
                verdict = ("paper's range below both roofline ratios: consistent with decode running further below "
                           "its bound than prefill, not a bound" if hi <= min(x['roofline_ratio'],
                                                                            x['xla_roofline_ratio'])
                           else "a ratio of two achieved times, not bounded by the roofline ratio")
                roof = (f"recompute {1e3 * x['recompute_time_s']:.3g} ms, cached {1e3 * x['cached_time_s']:.3g} ms")
            rows.append([compare.paper_value(c), x["model"], prog, roof, bound, fit, verdict])
    prov = []
    for m, c in sorted(comp.items(), key=lambda kv: report.model_key(kv[0])):
        d = c["doc"]
        v = (d.get("provenance") or {}).get("compile") or {}
        prov.append(f"{m}: {d.get('status')}; {len(c['records'])} programs; topology {v.get('topology')}; jax "
                    f"{v.get('jax')}, libtpu {v.get('libtpu')}; git {report.short_sha(d.get('provenance'))} "
                    f"({report.rel(c['path'])}).")
    t = Table("compiled_tpu", "The paper's TPU v6e claims against the compiled v6e programs (compiled, not run)",
                 ["Paper", "Scale", "Compiled v6e program (per chip)", "Roofline time", "Bound", "HBM",
                  "Paper's number"],
                 "p{1.4cm}p{1.4cm}p{3.0cm}p{2.0cm}p{3.0cm}p{2.0cm}p{2.7cm}", rows,
                 "Each TPU claim against the program the paper's setting compiles to, built by libtpu's TPU v6e "
                 "compiler on a machine without a TPU (experiments/tpu_compile.py, make reproduce-tpu): XLA's "
                 "FLOPs and bytes, the roofline time max(FLOPs / 918 TFLOP/s, bytes / 1.64 TB/s) and the bound "
                 "that follows. 'min bytes' = the program's arguments + outputs (weights and cache read, cache and "
                 "logits written once): the least any program can move, so an upper bound on speed. 'XLA bytes' = "
                 "XLA:TPU's cost-model byte count, which also counts the weights' copies into on-chip VMEM and "
                 "their reads there: not HBM traffic, shown for information only. Within the bound means "
                 "plausible, not reproduced: nothing was run.", prov,
                 empty="no results/tpu_compile/*.json: run `make reproduce-tpu` (compiles for TPU v6e without a TPU)",
                 notes=["FLOPs are XLA:TPU's count for the compiled program (it counts a batch-1 vector-matrix "
                        "product as 1.5x its 2mnk, see tests/test_compile.py); the paper's TFLOPS may use another "
                        "FLOP count. HBM: the largest of the scale's compiled programs (every prefill length, the "
                        "step and the decode loop)."], size="scriptsize", long=True, group=1,
                 short="Each TPU v6e claim against the program the paper's setting compiles to (libtpu's compiler, "
                       "no TPU, nothing run): XLA's FLOPs and bytes, the roofline time and the bound on speed that "
                       "follows. Within the bound means plausible, not reproduced.")
    t.sources = [report.rel(c["path"]) for _, c in sorted(comp.items(), key=lambda kv: report.model_key(kv[0]))]
    return t


def _side_cells(r: dict[str, Any] | None) -> list[str]:
    """Compile s, XLA FLOPs, XLA bytes, argument / temp / output bytes per device, fits, bound of one record."""
    if r is None:
        return [compiled.NOT_COMPILED] + ["-"] * 7
    ro = r.get("roofline") or {}
    bound = (f"<= {ro['bound_tokens_per_s']:,.0f} tok/s ({ro.get('bound')})"
             if ro.get("bound_tokens_per_s") else "n/a")
    fit = "n/a" if r.get("fits") is None else ("yes" if r["fits"] else "no")
    fit += f" ({r['bytes_needed_per_device'] / 2**30:.3g} GiB)" if r.get("bytes_needed_per_device") is not None else ""
    return [fmt(r.get("compile_s"), ".0f"), report_si(r.get("flops")), _gb(r.get("bytes_accessed")),
            _mib(r.get("argument_bytes")), _mib(r.get("temp_bytes")), _mib(r.get("output_bytes")), fit, bound]


def report_si(x) -> str:
    if x is None:
        return "n/a"
    for div, suf in ((1e12, "T"), (1e9, "G"), (1e6, "M")):
        if abs(float(x)) >= div:
            return f"{float(x) / div:.3g} {suf}"
    return f"{float(x):.3g}"


def _mib(x) -> str:
    return "n/a" if x is None else f"{x / 2**20:,.1f}"


def anchor_table(results: Path, rep: dict[str, Any]) -> Table:
    """Ours beside mamba2-jax 1.1.2 (the paper's package), both compiled for TPU v6e by libtpu, per scale and
    program (mamba2_jax.eval.compiled.side_by_side)."""
    docs_all = compiled.anchor_documents(results)
    asked = {m: set((c["doc"].get("config") or {}).get("programs") or []) for m, c in docs_all.items()}
    phases = sorted({str(ph) for c in docs_all.values() if (ph := (c["doc"].get("config") or {}).get("phase"))})
    # a program the anchor's run neither compiled nor asked for (its phase left it out) has nothing to compare
    pairs = sorted((x for x in compiled.side_by_side(results)
                    if x["anchor"] is not None or x["anchor_program"] in asked.get(x["model"], ())),
                   key=lambda x: report.model_key(x["model"]))
    rows = []

    def two(o, a, key, f) -> str:
        """'ours / anchor' of one field (n/a where a side has no record or value)."""
        def one(r):
            v = None if r is None else r.get(key)
            return "n/a" if v is None else f(v)
        return f"{one(o)} / {one(a)}"

    for x in pairs:
        a = x["anchor"]  # None: the anchor's run has not reached this program (nor ours, compiled with it): n/a
        o = (a or {}).get("ours_same_run")  # ours, compiled just before it in the same run (prefill: full logits)
        if x["program"] == "step":
            pads = ((a or {}).get("anchor") or {}).get("pads_to_chunk")
            prog = "decode step" + (f" (its token padded to {a['policy']['scan_chunk_size']})"
                                    if pads and a.get("policy") else "")
        else:
            prog = f"prefill {x['program'].split('-L')[1]}, full logits"
        fits = two(o, a, "bytes_needed_per_device", lambda v: f"{v / 2**30:.2f}")
        rows.append([x["model"], prog, two(o, a, "compile_s", lambda v: f"{v:.0f}"),
                     two(o, a, "load_avg_1m", lambda v: f"{v[0]:.1f}"),
                     two(o, a, "flops", lambda v: f"{v / 1e9:,.0f}" if v >= 1e11 else f"{v / 1e9:.3g}"),
                     two(o, a, "temp_bytes", lambda v: f"{v / 2**20:,.0f}"), fits,
                     two(o, a, "roofline", lambda ro: "n/a" if not ro.get("bound_tokens_per_s")
                         else f"{ro['bound_tokens_per_s']:,.0f}")])
    paired = {x["model"] for x in pairs}
    docs = {(m, "anchor"): c for m, c in docs_all.items() if m in paired}
    prov = []
    for (m, side), c in sorted(docs.items(), key=lambda kv: (report.model_key(kv[0][0]), kv[0][1] != "ours")):
        d = c["doc"]
        v = (d.get("provenance") or {}).get("compile") or {}
        who = f"{v.get('anchor')} from {v.get('anchor_dir')}" if side == "anchor" else "this artifact"
        prov.append(f"{m}, {who}: {d.get('status')}; {len(c['records'])} programs; topology {v.get('topology')}; "
                    f"jax {v.get('jax')}, libtpu {v.get('libtpu')}; git {report.short_sha(d.get('provenance'))} "
                    f"({report.rel(c['path'])}).")
    t = Table("compiled_anchor", "This artifact beside the paper's package, both compiled for TPU v6e (not run)",
              ["Scale", "Program", "Compile s", "Load (1 min)", "XLA GFLOP", "Temp MiB", "GiB per chip",
               "Bound tok/s"],
              "p{1.4cm}p{2.6cm}rrrrrr", rows,
              "Each cell is this artifact / the paper's package mamba2-jax 1.1.2 (PyPI), the same program of the "
              "paper's setting (batch 1, float32, default matmul precision) built from shapes only by libtpu's "
              "TPU v6e compiler, no TPU, in one run: ours just before its, in its own process "
              "(experiments/tpu_compile_anchor.py). Prefill returns every position's logits (its API's only mode, "
              "so ours too); its decode step is its forward on one cached token. Compile s is wall time on a shared "
              "2-core host; the load is the 1-minute average at its start. Bytes are per device; both bounds come "
              "from mamba2_jax.compile.fit_and_bound. Nothing was run.", prov,
              empty="no results/tpu_compile_anchor/*.json: run `make tpu-compile-anchor` (the paper's package "
                    "compiled for TPU v6e without a TPU)",
              notes=["n/a: that side has no record or value (the anchor's run had not reached it). Listed: the "
                     "programs the anchor's run asked for" + (f" (phase {', '.join(phases)})" if phases else "") +
                     "; `--phase all` asks for every prefill length of the suite. Our decode loop (generate) "
                     "has no counterpart in its API and is not listed; our last-position prefills at every "
                     "length are in the compiled-suite table."],
              size="scriptsize", long=False, group=1,
              short="This artifact / the paper's own package (mamba2-jax 1.1.2): the same programs compiled for TPU "
                    "v6e by the same compiler in one run, without a TPU. Compile time, XLA's FLOPs, temporaries, "
                    "memory per chip and the roofline bound. Nothing was run.")
    t.sources = list(dict.fromkeys([report.rel(Path(x["anchor_path"])) for x in pairs if x["anchor_path"]]))
    return t


FIGURE_RESULT = re.compile(r"results/[\w./\-]+\.json")


def figure_sources(fig_dir: Path) -> dict[str, list[str]]:
    """{figure stem: the result files its caption file names} for every figures/out/*.caption.md."""
    return {cp.name.split(".")[0]: list(dict.fromkeys(FIGURE_RESULT.findall(cp.read_text())))
            for cp in sorted(fig_dir.glob("fig*.caption.md"))}


def result_facts(path: Path) -> tuple[str, str, str, str]:
    """(git sha, machine, precision, weights) of one result file, from its own provenance; "n/a" where the
    file does not say."""
    import json

    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return ("n/a", "n/a (file missing)", "n/a", "n/a")
    pv = d.get("provenance") or {}
    sha = ((pv.get("git") or {}).get("sha") or "n/a")[:8]
    machine = report.cpu_desc(pv) if pv.get("cpu_model") else "n/a"
    status = str(d.get("status") or "")
    exp = d.get("experiment")
    if "compiled for" in status:
        machine += f"; {status}"
    recs = d.get("records") or []
    if exp in ("tpu_compile", "gpu_compile", "gpu_export"):
        suite = (d.get("config") or {}).get("suite") or {}
        precision = (f"{suite.get('dtype')} params, matmul precision {suite.get('matmul_precision')}"
                     if suite else "n/a")
        weights = "none (shapes only)"
    elif exp == "parity":
        j = d.get("jax") or {}
        precision = f"{j.get('param_dtype')} params, matmul precision {j.get('matmul_precision')}"
        weights = report.parity_weights(d)
    elif exp == "perplexity":
        precision = "JAX float32 and bfloat16 params"
        weights = str((d.get("model") or {}).get("weights") or "n/a")
    elif recs and d.get("hardware"):
        f = report.run_facts(path, d)
        ws = [w for w in f["weights"].split("; ") if w and w != "weights unknown"]
        if not ws and "random-init" in str(d.get("label")):     # a run that names its weights in its label only
            ws = ["synthetic weights (random init)"]
        precision, weights = f["precision"] or "n/a", "; ".join(ws) or "n/a"
    else:
        precision = weights = "n/a"
    return (sha, machine, precision, weights)


def _files_text(files: list[str]) -> str:
    """results/parity/a.json, results/parity/b.json -> results/parity/: a.json, b.json."""
    by: dict[str, list[str]] = {}
    for f in files:
        d, _, b = f.rpartition("/")
        by.setdefault(d, []).append(b)
    return "; ".join(f"{d}/: {', '.join(bs)}" if len(bs) > 1 else f"{d}/{bs[0]}" for d, bs in by.items())


def provenance_table(tables: list[Table], fig_dir: Path, root: Path | None = None) -> Table:
    """The paper's appendix: one row per figure and table (a row per group of its result files that share
    a commit, machine, precision and weights)."""
    root = root or checkout_root() or HERE.parent
    items = [(TexCell(f"Table: {t.title}", rf"Table~\ref{{tab:{t.name.replace('_', '-')}}}: {tex(t.title)}"),
              t.sources) for t in tables]
    items += [(TexCell(f"Figure {stem}", rf"Figure~\ref{{fig:{stem}}} ({ltex(stem)})"), files)
              for stem, files in figure_sources(fig_dir).items()]
    rows = []
    for what, files in items:
        groups: dict[tuple[str, str, str, str], list[str]] = {}
        for f in files:
            groups.setdefault(result_facts(root / f), []).append(f)
        if not groups:
            rows.append([what, "n/a (no result file)", "n/a", "n/a", "n/a", "n/a"])
        for facts, fs in groups.items():
            rows.append([what, _files_text(fs), *facts])
    t = Table("provenance", "Provenance of every figure and table",
              ["Figure or table", "Result files", "Git sha", "Machine", "Precision", "Weights"],
              "p{2.2cm}p{4.4cm}p{1.3cm}p{2.3cm}p{2.3cm}p{2.6cm}", rows,
              "Each figure and table of the paper, the result files it is drawn from, and what each file records "
              "about its own run: the git commit, the machine, the precision and the weights.", [],
              notes=["n/a: the result file does not record this field."], size="scriptsize", long=True, group=1,
              short="The result files behind every figure and table, and what each file records about its run: "
                    "the git commit, the machine, the precision and the weights.")
    t.sources = list(dict.fromkeys(f for _, fs in items for f in fs))
    return t


TABLE_BUILDERS = (throughput_table, sweep_table, cache_speedup_table, perplexity_table, parity_table,
                  comparison_table, cpu_analogue_table, compiled_table, anchor_table, state_dtype_table)


def build_all(results: Path | None, out: Path, reported_claims: Path | dict | None = None,
              fig_dir: Path | None = None) -> list[Path]:
    results = Path(results) if results is not None else results_dir()
    rep = reported.load_reported(reported_claims)
    built = [build(results, rep) for build in TABLE_BUILDERS]
    built.append(provenance_table(built, fig_dir or FIG_OUT, results.resolve().parent))
    paths = []
    for t in built:
        paths += [atomic_write_text(out / f"{t.name}.tex", t.latex()), atomic_write_text(out / f"{t.name}.md",
                                                                                          t.markdown())]
    return paths


def main(argv: Iterable[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="generate paper/tables/*.tex and *.md from results/")
    ap.add_argument("--results", type=Path, default=None, help="results directory (default: results/)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--reported", type=Path, default=None, help="claims file (default: paper/reported.yaml)")
    ap.add_argument("--figures", type=Path, default=FIG_OUT, help="figure directory (for the provenance appendix)")
    a = ap.parse_args(list(argv) if argv is not None else None)
    paths = build_all(a.results, a.out, a.reported, a.figures)
    print("[tables] wrote " + ", ".join(report.rel(p) for p in paths if p.suffix == ".tex") + " (+ .md twins)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
