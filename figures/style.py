"""Shared style, result loading and provenance for the figure scripts (figures/fig*.py).

Every figure script is ``python figures/figN_*.py [--results DIR] [--out DIR] [--strict]``:

* it reads the tidy results written by the experiments (``results/<experiment>/*.json``; the JSON is
  read rather than the CSV because only the JSON carries the provenance: device, precision, weights);
* it writes ``<out>/<stem>.png``, ``<out>/<stem>.pdf`` and ``<out>/<stem>.caption.md`` (which device,
  precision and weights produced every curve, and the result files it was drawn from);
* a missing input is reported on one line and skipped (exit 0), or is an error (exit 1) with
  ``--strict``.

Nothing here imports JAX: figures can be rebuilt from committed results without the model stack.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results"
OUT = REPO / "figures" / "out"

PAPER_MODELS = ("mamba2-130m", "mamba2-370m", "mamba2-780m", "mamba2-1.3b", "mamba2-2.7b")
DEVICE_NAMES = {"tpu_v6e": "TPU v6e", "l40s": "NVIDIA L40S", "h100_sxm": "NVIDIA H100 SXM", "cpu": "CPU",
                "unknown": "unknown device"}

# Okabe-Ito colour-blind-safe palette; models keep their colour across every figure.
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#000000", "#56B4E9", "#999933"]
MODEL_ORDER = list(PAPER_MODELS) + ["mamba2-tiny-wikitext", "tiny"]
LINESTYLES = ["-", "--", ":", "-."]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]

RC = {
    "figure.dpi": 100,
    "savefig.dpi": 200,
    "savefig.bbox": "tight",
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 7.5,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.6,
    "lines.markersize": 5,
    "legend.frameon": False,
    "pdf.fonttype": 42,          # embed TrueType: editable text in the PDF
    "svg.fonttype": "none",
}


def setup() -> None:
    plt.rcParams.update(RC)


class MissingInput(Exception):
    """Raised by a figure builder when the results it needs are absent."""


# ------------------------------------------------------------------------------ loading
def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        print(f"[figures] WARNING: cannot read {path}: {e}", file=sys.stderr)
        return None


def load_bench(results: Path, experiment: str, include_bench: bool = True) -> list[tuple[Path, dict[str, Any]]]:
    """Benchmark documents (throughput, sweep, cache_speedup: mamba2_jax.eval.bench.write_results) under
    ``results/<experiment>/*.json``, sorted by run name; plus, for those three experiments, the
    matching measurements of the issue-3 CPU benchmark (``results/bench/*.json``, make bench)
    converted to the same record layout (``from_bench``)."""
    out = []
    for p in sorted((Path(results) / experiment).glob("*.json")):
        d = read_json(p)
        if not d or d.get("experiment") != experiment or not d.get("records"):
            continue
        out.append((p, d))
    if include_bench and experiment in ("throughput", "sweep", "cache_speedup"):
        for p in sorted((Path(results) / "bench").glob("*.json")):
            d = read_json(p)
            if d and d.get("experiment") == "bench" and d.get("records"):
                c = from_bench(d, experiment)
                if c["records"]:
                    out.append((p, c))
    return out


def from_bench(doc: dict[str, Any], experiment: str) -> dict[str, Any]:
    """The records of a ``make bench`` document (one record per metric) as throughput / sweep /
    cache_speedup records, for its first (base) dtype only."""
    models = doc.get("models") or {}
    dtypes = list(((doc.get("config") or {}).get("bench") or {}).get("dtypes") or models.keys())
    base = dtypes[0] if dtypes else "float32"
    info = models.get(base) or {}
    common = {"dtype": base, "matmul_precision": (info.get("policy") or {}).get("matmul_precision"),
              "batch": int((doc.get("config") or {}).get("batch") or 1), "weights": info.get("weights", "?")}
    recs = [r for r in doc["records"] if r.get("dtype") in (base, None)]

    def find(metric, **kw):
        return next((r for r in recs if r.get("metric") == metric and all(r.get(k) == v for k, v in kw.items())),
                    None)

    out: list[dict[str, Any]] = []
    if experiment == "sweep":
        for r in recs:
            if r.get("metric") == "decode_ms_per_token" and r.get("context") is not None:
                bw = find("bandwidth_fraction_vs_start_best", context=r["context"])
                out.append({**common, "model": r.get("model"), "kind": "decode", "context": int(r["context"]),
                            "ms_per_token": r["value"], "tokens_per_s": common["batch"] * 1e3 / r["value"],
                            "median_s": r.get("median_s"), "hbu": bw["value"] if bw else None,
                            "compile_s": r.get("compile_s")})
    elif experiment == "cache_speedup":
        for r in recs:
            if r.get("metric") == "cached_over_recompute":
                out.append({**common, "model": r.get("model"), "context": int(r["context"]), "headline": True,
                            "cached_ms_per_token": r.get("cached_ms"), "recompute_ms_per_token": r.get("recompute_ms"),
                            "speedup": r["value"]})
    elif experiment == "throughput":
        for r in recs:
            if r.get("metric") == "prefill_tokens_per_s":
                out.append({**common, "model": r.get("model"), "kind": "prefill", "length": int(r["length"]),
                            "context": int(r["length"]), "median_s": r.get("median_s"), "tokens_per_s": r["value"],
                            "compile_s": r.get("compile_s"), "tflops": None, "mfu": None})
        dec = sorted((r for r in recs if r.get("metric") == "decode_ms_per_token" and r.get("context") is not None),
                     key=lambda r: r["context"])
        if dec:
            r = dec[0]
            bw = find("bandwidth_fraction_vs_start_best", context=r["context"])
            by = find("achieved_bytes_per_s", context=r["context"])
            peak_bw = find("stream_bandwidth_start")
            out.append({**common, "model": r.get("model"), "kind": "decode", "length": int(r.get("tokens") or 0),
                        "context": int(r["context"]), "median_s": r.get("median_s"), "ms_per_token": r["value"],
                        "tokens_per_s": common["batch"] * 1e3 / r["value"], "hbu": bw["value"] if bw else None,
                        "bytes_per_step": by.get("bytes_per_step") if by else None, "compile_s": r.get("compile_s"),
                        "bandwidth": peak_bw["value"] if peak_bw else None})
    return {**{k: v for k, v in doc.items() if k != "records"}, "experiment": experiment, "source_experiment": "bench",
            "run": f"{doc.get('run')} [make bench]", "records": out}


def load_parity(results: Path) -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for p in sorted((Path(results) / "parity").glob("*.json")):
        d = read_json(p)
        if d and "hidden_per_layer" in d and "greedy_summary" in d:
            out.append((p, d))
    return out


def load_perplexity(results: Path) -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for p in sorted((Path(results) / "perplexity").glob("*/*.json")):
        d = read_json(p)
        if d and d.get("kind") == "perplexity" and d.get("backends"):
            out.append((p, d))
    return out


def rel(p: Path) -> str:
    """Repository-relative path; for a results tree elsewhere (--results DIR), from its 'results' folder."""
    p = Path(p)
    try:
        return str(p.resolve().relative_to(REPO))
    except ValueError:
        parts = p.parts
        if "results" in parts:
            i = len(parts) - 1 - parts[::-1].index("results")
            return str(Path(*parts[i:]))
        return str(p)


# ------------------------------------------------------------------------------ provenance
def short_sha(prov: dict[str, Any] | None) -> str:
    g = (prov or {}).get("git") or {}
    sha = g.get("sha") or "?"
    return sha[:8] + ("+dirty" if g.get("dirty") else "")


def cpu_desc(prov: dict[str, Any] | None) -> str:
    prov = prov or {}
    model = prov.get("cpu_model") or "CPU"
    n = prov.get("cpu_count")
    return f"CPU ({model}{f', {n} cores' if n else ''})"


def bench_device(doc: dict[str, Any]) -> str:
    """The device a benchmark ran on (from jax.devices()), never the peak profile's name alone."""
    hw = doc.get("hardware") or {}
    dev = hw.get("device") or {}
    plat = str(dev.get("platform") or "?")
    if plat == "cpu":
        name = cpu_desc(doc.get("provenance"))
    else:
        name = str(dev.get("device_kind") or plat)
        if dev.get("count", 1) and int(dev.get("count", 1)) > 1:
            name += f" x{dev['count']}"
    prof = hw.get("profile") or {}
    pname = prof.get("name") if isinstance(prof, dict) else None
    if pname and not hw.get("matches_device", True):
        name += f" [peaks of profile {pname}: NOT this device]"
    return name


def bench_device_short(doc: dict[str, Any]) -> str:
    hw = doc.get("hardware") or {}
    dev = hw.get("device") or {}
    if str(dev.get("platform")) == "cpu":
        return "CPU"
    return str(dev.get("device_kind") or dev.get("platform") or "?")


def record_weights(rec: dict[str, Any], doc: dict[str, Any] | None = None) -> str:
    w = rec.get("weights")
    if w == "random-init":
        return "synthetic weights (random init)"
    if w == "checkpoint":
        ck = ((doc or {}).get("config") or {}).get("checkpoints") or {}
        src = ck.get(rec.get("model"))
        return f"checkpoint {src}" if src else "checkpoint weights"
    return str(w or "weights unknown")


def record_precision(rec: dict[str, Any], doc: dict[str, Any] | None = None) -> str:
    dt = rec.get("dtype") or ((doc or {}).get("config") or {}).get("dtype") or "?"
    mp = rec.get("matmul_precision")
    if mp is None and doc is not None:
        mp = (doc.get("config") or {}).get("matmul_precision")
        if mp is None:
            # the record lacks the field and the config left it to the library policy
            mp = {"float32": "highest (library policy)"}.get(dt, "default (library policy)")
    return f"{dt} params" + (f", matmul precision {mp}" if mp else "")


def bench_provenance_lines(items: Iterable[tuple[Path, dict[str, Any]]]) -> list[str]:
    lines = []
    for p, d in items:
        recs = d.get("records") or []
        weights = sorted({record_weights(r, d) for r in recs})
        precs = sorted({record_precision(r, d) for r in recs})
        prov = d.get("provenance") or {}
        lines.append(f"- `{rel(p)}` (run `{d.get('run')}`): device {bench_device(d)}; precision "
                     f"{'; '.join(precs)}; {'; '.join(weights)}; batch "
                     f"{sorted({r.get('batch') for r in recs if r.get('batch') is not None}) or '?'}; git "
                     f"{short_sha(prov)}; {prov.get('date_utc', '?')}")
    return lines


def _uniq(xs: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(x for x in xs if x))


def footer_text(triples: Iterable[tuple[str, str, str]]) -> str:
    """(device, precision, weights) per curve/run -> one line per field, duplicates removed."""
    triples = list(triples)
    parts = [("Device", _uniq(t[0] for t in triples)), ("Precision", _uniq(t[1] for t in triples)),
             ("Weights", _uniq(t[2] for t in triples))]
    return "\n".join(f"{k}: {' | '.join(v)}" for k, v in parts if v)


def bench_triples(items: Iterable[tuple[Path, dict[str, Any]]]) -> list[tuple[str, str, str]]:
    out = []
    for _, d in items:
        for r in d.get("records") or []:
            out.append((bench_device(d), record_precision(r, d), record_weights(r, d)))
    return out


def bench_footer(items: Iterable[tuple[Path, dict[str, Any]]]) -> str:
    return footer_text(bench_triples(items))


# ------------------------------------------------------------------------------ drawing helpers
def model_key(name: str) -> tuple[int, str]:
    return (MODEL_ORDER.index(name) if name in MODEL_ORDER else len(MODEL_ORDER), name)


def short_model(name: str) -> str:
    """'mamba2-130m' -> '130m' for crowded axes (other names unchanged)."""
    return name[len("mamba2-"):] if name.startswith("mamba2-") and name != "mamba2-tiny-wikitext" else name


def model_colors(names: Iterable[str]) -> dict[str, str]:
    """Known models keep a fixed colour in every figure; others take the unused colours in order."""
    names = sorted(set(names), key=model_key)
    out = {n: PALETTE[MODEL_ORDER.index(n) % len(PALETTE)] for n in names if n in MODEL_ORDER}
    free = [c for c in PALETTE if c not in out.values()] or PALETTE
    for k, n in enumerate(n for n in names if n not in out):
        out[n] = free[k % len(free)]
    return out


def add_footer(fig, text: str, y: float = -0.02) -> str:
    """Provenance printed under the axes (small, wrapped)."""
    import textwrap

    if not text:
        return text
    lines = []
    for line in text.splitlines():
        lines += textwrap.wrap(line, width=160, subsequent_indent="    ")
    fig.text(0.01, y, "\n".join(lines), ha="left", va="top", fontsize=6.3, color="#444444")
    fig._provenance_summary = text
    return text


def fmt_si(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    for div, suf in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suf}"
    return f"{x:.3g}"


def pow2_axis(ax, values: Iterable[int]) -> None:
    """log2 x axis labelled with the actual context lengths."""
    vals = sorted(set(int(v) for v in values))
    ax.set_xscale("log", base=2)
    if vals:
        ax.set_xticks(vals)
        ax.set_xticklabels([f"{v // 1024}k" if v >= 1024 and v % 1024 == 0 else str(v) for v in vals])
        ax.minorticks_off()


def plain_log(ax, axis: str = "y") -> None:
    """Log axis with plain-number tick labels (0.5, 2, 100) instead of 10^x mantissas."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    fmt = FuncFormatter(lambda v, _: f"{v:g}")
    a = ax.yaxis if axis == "y" else ax.xaxis
    a.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    a.set_major_formatter(fmt)
    a.set_minor_formatter(FuncFormatter(lambda v, _: ""))


@dataclass
class Figure:
    fig: Any
    stem: str
    title: str
    description: str
    provenance: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    summary: str = ""          # footer_text(): Device / Precision / Weights lines, also drawn on the figure


def caption_text(f: Figure) -> str:
    lines = [f"# {f.stem}: {f.title}", "", f.description, ""]
    if f.summary:
        lines += [f"{ln}  " for ln in f.summary.splitlines()] + [""]
    if f.provenance:
        lines += ["Produced by (device; precision; weights; code version; date):", ""] + f.provenance + [""]
    if f.notes:
        lines += ["Notes:", ""] + [f"- {n}" for n in f.notes] + [""]
    if f.sources:
        lines += ["Regenerate: `make figures` (or `" + " ".join(f.sources) + "`)", ""]
    return "\n".join(lines)


def save(f: Figure, out: Path, formats: Iterable[str] = ("png", "pdf")) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in formats:
        p = out / f"{f.stem}.{ext}"
        # fixed metadata: the PDF bytes do not change when nothing else does
        meta = {"CreationDate": None} if ext == "pdf" else ({"Software": None} if ext == "png" else None)
        f.fig.savefig(p, format=ext, metadata=meta)
        paths.append(p)
    cp = out / f"{f.stem}.caption.md"
    cp.write_text(caption_text(f))
    paths.append(cp)
    plt.close(f.fig)
    return paths


# ------------------------------------------------------------------------------ grouped bars (figures 3, 4)
def grouped_bars(ax, models, series, values, colors=None, hatches=None, annotate=None, log=False):
    """``values[(series, model)]`` -> height (missing: no bar).  ``annotate[(series, model)]`` -> text.
    One group per model, one bar per series."""
    import numpy as np

    n = max(len(series), 1)
    width = 0.8 / n
    x = np.arange(len(models))
    handles = []
    for i, s in enumerate(series):
        xs, hs, labels = [], [], []
        for j, m in enumerate(models):
            v = values.get((s, m))
            if v is None:
                continue
            xs.append(x[j] - 0.4 + width * (i + 0.5))
            hs.append(v)
            labels.append((annotate or {}).get((s, m)))
        if not xs:
            continue
        h = ax.bar(xs, hs, width=width * 0.95, color=(colors or {}).get(s), hatch=(hatches or {}).get(s),
                   edgecolor="white", linewidth=0.5, label=s)
        handles.append(h)
        for xx, hh, t in zip(xs, hs, labels):
            if t:
                ax.annotate(t, (xx, hh), textcoords="offset points", xytext=(0, 2), ha="center", va="bottom",
                            fontsize=6.5, rotation=90 if n > 3 else 0)
    ax.set_xticks(x)
    ax.set_xticklabels([short_model(m) for m in models], rotation=0 if len(models) <= 6 else 30)
    if log:
        ax.set_yscale("log")
    ax.grid(axis="x", visible=False)
    return handles


def series_colors(series: Iterable[str]) -> dict[str, str]:
    """Colours for bar series (runs / lengths); models are on the x axis of bar charts."""
    pal = ["#0072B2", "#56B4E9", "#D55E00", "#E69F00", "#009E73", "#CC79A7", "#F0E442", "#000000"]
    return {s: pal[i % len(pal)] for i, s in enumerate(series)}


# ------------------------------------------------------------------------------ CLI
def parse_args(argv: list[str] | None, doc: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=doc.strip().splitlines()[0] if doc else None)
    ap.add_argument("--results", type=Path, default=RESULTS, help="results directory (default: results/)")
    ap.add_argument("--out", type=Path, default=OUT, help="output directory (default: figures/out/)")
    ap.add_argument("--strict", action="store_true", help="missing inputs are an error (exit 1), not a skip")
    ap.add_argument("--formats", default="png,pdf", help="comma-separated output formats")
    return ap.parse_args(argv)


def run_figure(name: str, build: Callable[[Path], Figure], argv: list[str] | None = None, doc: str = "") -> int:
    """Shared main(): build, save, report.  Returns the exit status."""
    args = parse_args(argv, doc)
    setup()
    try:
        f = build(Path(args.results))
    except MissingInput as e:
        print(f"[{name}] {'ERROR' if args.strict else 'SKIP'}: {e}", file=sys.stderr)
        return 1 if args.strict else 0
    f.sources = f.sources or [f"python figures/{name}.py"]
    f.summary = f.summary or getattr(f.fig, "_provenance_summary", "")
    paths = save(f, args.out, [x for x in args.formats.split(",") if x])
    print(f"[{name}] wrote " + ", ".join(rel(p) for p in paths))
    return 0
