"""Plotting style and figure plumbing shared by the figure scripts (figures/fig*.py).

Every figure is ``python -m figures.figN_... [--results DIR] [--out DIR] [--strict]`` from the
repository root (``make figures`` runs them all):

* it reads the results written by the experiments through the one loader,
  :func:`mamba2_jax.eval.results.load_results` (the JSON rather than the CSV because only the JSON
  carries the provenance: device, precision, weights), and the paper's numbers it marks through
  :mod:`mamba2_jax.eval.reported` (``paper/reported.yaml``);
* it writes ``<out>/<stem>.png``, ``<out>/<stem>.pdf`` and ``<out>/<stem>.caption.md`` (which device,
  precision and weights produced every curve, and the result files it was drawn from);
* a missing input is reported on one line and skipped (exit 0), or is an error (exit 1) with
  ``--strict``.

How results are worded (device, precision, weights, model order) is :mod:`mamba2_jax.eval.report`.
Nothing here imports JAX: figures can be rebuilt from committed results without the model stack.
"""

from __future__ import annotations

import argparse
import math
import sys
import textwrap
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

from mamba2_jax.eval import report
from mamba2_jax.eval.results import load_results
from mamba2_jax.fileio import atomic_write_text
from mamba2_jax.paths import checkout_root, results_dir

matplotlib.use("Agg")   # before pyplot is imported (lazily, in the functions that draw)

OUT = (checkout_root() or Path.cwd()) / "figures" / "out"

# Okabe-Ito colour-blind-safe palette; models keep their colour across every figure.
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#000000", "#56B4E9", "#999933"]
LINESTYLES = ["-", "--", ":", "-."]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
REFERENCE_GREY = "#999999"     # the paper's reported numbers: reference marks, never measurements

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
    matplotlib.rcParams.update(RC)


def prose(text: str, **fields: Any) -> str:
    """A caption paragraph written as an indented block: whitespace collapsed, then ``fields`` filled in."""
    return " ".join(text.split()).format(**fields)


class MissingInput(Exception):
    """Raised by a figure builder when the results it needs are absent."""


# ------------------------------------------------------------------------------ inputs
def need(results: Path, experiment: str, kind: str | None = None) -> list[tuple[Path, dict[str, Any]]]:
    """The documents of ``experiment`` (with ``make bench``'s, for the benchmark experiments) that hold
    a record of ``kind`` (any record if None); MissingInput when there is none."""
    docs = load_results(experiment, results, include_bench=True)
    if kind is not None:
        docs = [(p, d) for p, d in docs if any(r.get("kind") == kind for r in d["records"])]
    if not docs:
        raise MissingInput(report.missing_text(experiment, results, f"{kind} records" if kind else ""))
    return docs


def models_of(docs: Iterable[tuple[Path, dict[str, Any]]], kind: str | None = None) -> list[str]:
    """The models with a record (of ``kind``) in ``docs``, in display order."""
    return sorted({r["model"] for _, d in docs for r in d["records"] if kind is None or r.get("kind") == kind},
                  key=report.model_key)


# ------------------------------------------------------------------------------ provenance
def bench_provenance_lines(items: Iterable[tuple[Path, dict[str, Any]]]) -> list[str]:
    lines = []
    for p, d in items:
        f = report.run_facts(p, d)
        lines.append(f"- `{f['file']}` (run `{f['run']}`): device {f['device']}; precision {f['precision']}; "
                     f"{f['weights']}; batch {f['batch']}; git {f['git']}; {f['date']}")
    return lines


def _uniq(xs: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(x for x in xs if x))


def footer_text(triples: Iterable[tuple[str, str, str]]) -> str:
    """(device, precision, weights) per curve/run -> one line per field, duplicates removed."""
    triples = list(triples)
    parts = [("Device", _uniq(t[0] for t in triples)), ("Precision", _uniq(t[1] for t in triples)),
             ("Weights", _uniq(t[2] for t in triples))]
    return "\n".join(f"{k}: {' | '.join(v)}" for k, v in parts if v)


def bench_footer(items: Iterable[tuple[Path, dict[str, Any]]]) -> str:
    return footer_text((report.bench_device(d), report.record_precision(r, d), report.record_weights(r, d))
                       for _, d in items for r in d.get("records") or [])


def run_legend(docs, i: int, handles: list) -> tuple[str, str]:
    """Line style and marker of the ``i``-th run of ``docs``; its legend entry is appended to ``handles``."""
    from matplotlib.lines import Line2D

    ls, mk = LINESTYLES[i % len(LINESTYLES)], MARKERS[i % len(MARKERS)]
    d = docs[i][1]
    handles.append(Line2D([], [], color="#555555", ls=ls, marker=mk,
                          label=f"{report.bench_device_short(d)} ({d.get('run')})"))
    return ls, mk


# ------------------------------------------------------------------------------ drawing helpers
def model_colors(names: Iterable[str]) -> dict[str, str]:
    """Known models keep a fixed colour in every figure; others take the unused colours in order."""
    order = report.model_order()
    names = sorted(set(names), key=report.model_key)
    out = {n: PALETTE[order.index(n) % len(PALETTE)] for n in names if n in order}
    free = [c for c in PALETTE if c not in out.values()] or PALETTE
    for k, n in enumerate(n for n in names if n not in out):
        out[n] = free[k % len(free)]
    return out


def model_handles(models: Iterable[str], colors: dict[str, str]) -> list:
    from matplotlib.lines import Line2D

    return [Line2D([], [], color=colors[m], lw=2, label=m) for m in models]


def add_footer(fig, text: str, y: float = -0.02) -> None:
    """Provenance printed under the axes (small, wrapped)."""
    lines = []
    for line in text.splitlines():
        lines += textwrap.wrap(line, width=160, subsequent_indent="    ")
    if lines:
        fig.text(0.01, y, "\n".join(lines), ha="left", va="top", fontsize=6.3, color="#444444")


def fmt_si(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    for div, suf in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suf}"
    return f"{x:.3g}"


def pow2_axis(ax, values: Iterable[int]) -> None:
    """log2 x axis labelled with the actual context lengths."""
    vals = sorted({int(v) for v in values})
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
    summary: str = ""          # footer_text(): Device / Precision / Weights lines, also drawn under the axes
    sources: list[str] = field(default_factory=list)


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
    """Lay the figure out, draw its provenance footer, write every format and the caption."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    f.fig.tight_layout()
    add_footer(f.fig, f.summary)
    paths = []
    for ext in formats:
        p = out / f"{f.stem}.{ext}"
        # fixed metadata: the PDF bytes do not change when nothing else does
        meta = {"CreationDate": None} if ext == "pdf" else ({"Software": None} if ext == "png" else None)
        f.fig.savefig(p, format=ext, metadata=meta)
        paths.append(p)
    paths.append(atomic_write_text(out / f"{f.stem}.caption.md", caption_text(f)))
    import matplotlib.pyplot as plt

    plt.close(f.fig)
    return paths


# ------------------------------------------------------------------------------ grouped bars (figures 3, 4)
def grouped_bars(ax, models, series, values, colors=None, annotate=None, log=False, inside=False, rotation=None):
    """``values[(series, model)]`` -> height (missing: no bar).  ``annotate[(series, model)]`` -> text.
    One group per model, one bar per series.  ``inside``: labels in white inside the top of each bar tall
    enough to hold one (so a reference line across the panel never runs through them).  ``rotation``: of the
    labels (default: 90 with more than 3 series, else 0; 90 also keeps neighbours' labels apart in crowded panels)."""
    import numpy as np

    n = max(len(series), 1)
    rot = rotation if rotation is not None else (90 if n > 3 else 0)
    width = 0.8 / n
    x = np.arange(len(models))
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
        ax.bar(xs, hs, width=width * 0.95, color=(colors or {}).get(s), edgecolor="white", linewidth=0.5, label=s)
        for xx, hh, t in zip(xs, hs, labels, strict=True):
            if t and inside and hh > 0.15 * ax.get_ylim()[1]:
                ax.annotate(t, (xx, hh), textcoords="offset points", xytext=(0, -3), ha="center", va="top",
                            fontsize=6.5, color="white", fontweight="bold", rotation=rot)
            elif t:
                ax.annotate(t, (xx, hh), textcoords="offset points", xytext=(0, 2), ha="center", va="bottom",
                            fontsize=6.5, rotation=rot)
    ax.set_xticks(x)
    ax.set_xticklabels([report.short_model(m) for m in models], rotation=0 if len(models) <= 6 else 30)
    if log:
        ax.set_yscale("log")
    ax.grid(axis="x", visible=False)


def series_colors(series: Iterable[str]) -> dict[str, str]:
    """Colours for bar series (runs / lengths); models are on the x axis of bar charts."""
    pal = ["#0072B2", "#56B4E9", "#D55E00", "#E69F00", "#009E73", "#CC79A7", "#F0E442", "#000000"]
    return {s: pal[i % len(pal)] for i, s in enumerate(series)}


def bar_series(docs, kind: str, label: Callable[[dict[str, Any]], str], sort=None):
    """``(series, [(series, device, record), ...])`` for the ``kind`` records of ``docs``: one series per
    '<device>, <label(record)>' (and run, when there are several runs), in first-seen order."""
    series, rows = [], []
    for _, d in docs:
        dev = report.bench_device_short(d)
        recs = [r for r in d["records"] if r.get("kind") == kind]
        for r in sorted(recs, key=sort) if sort else recs:
            s = f"{dev}, {label(r)}" + (f" ({d['run']})" if len(docs) > 1 else "")
            if s not in series:
                series.append(s)
            rows.append((s, dev, r))
    return series, rows


@dataclass
class BarPanel:
    """One panel of a two-panel grouped-bar figure: ``values[(series, model)]`` with bar labels."""
    values: dict
    annotate: dict
    ylabel: str
    title: str
    ytop: float | None = None      # y from 0 to ytop (linear axes)
    log: bool = False
    reference: float | None = None  # the paper's number, dashed grey
    reference_label: str = ""
    empty: str = ""                # text shown when there are no values
    labels_inside: bool = False    # bar labels inside the bars (clear of a reference line at their height)


def bar_figure(models: list[str], series: list[str], panels: list[BarPanel]):
    """Two grouped-bar panels side by side, models on the x axis, one colour per series."""
    import matplotlib.pyplot as plt

    colors = series_colors(series)
    fig, axes = plt.subplots(1, len(panels), figsize=(9.0, 3.6))
    xlabel = "model (130m = mamba2-130m, ...)" if any(m.startswith("mamba2-") for m in models) else "model"
    for ax, pn in zip(axes, panels, strict=True):
        if pn.ytop is not None and not pn.log:
            ax.set_ylim(0, pn.ytop)      # first: inside labels are placed against the final y range
        grouped_bars(ax, models, series, pn.values, colors=colors, annotate=pn.annotate, log=pn.log,
                     inside=pn.labels_inside)
        if pn.log:
            plain_log(ax)
        elif pn.ytop is not None:
            ax.set_ylim(0, pn.ytop)
        if pn.reference is not None:
            ax.axhline(pn.reference, color=REFERENCE_GREY, ls="--", lw=1.0, label=pn.reference_label)
        if not pn.values and pn.empty:
            ax.text(0.5, 0.5, pn.empty, ha="center", va="center", transform=ax.transAxes, fontsize=8,
                    color="#555555")
        ax.set_ylabel(pn.ylabel)
        ax.set_title(pn.title)
        ax.legend(loc="upper right")
        ax.set_xlabel(xlabel)
    return fig


# ------------------------------------------------------------------------------ CLI
def parse_args(argv: list[str] | None, doc: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=doc.strip().splitlines()[0] if doc else None)
    ap.add_argument("--results", type=Path, default=results_dir(), help="results directory (default: results/)")
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
    f.sources = f.sources or [f"python -m figures.{name}"]
    paths = save(f, args.out, [x for x in args.formats.split(",") if x])
    print(f"[{name}] wrote " + ", ".join(report.rel(p) for p in paths))
    return 0


def figure_main(name: str, build: Callable[[Path], Figure], doc: str) -> Callable[..., int]:
    """The ``main(argv=None)`` of a figure module."""
    return lambda argv=None: run_figure(name, build, argv, doc)
