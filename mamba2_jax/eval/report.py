"""How results are described in figures and tables: one wording for device, precision and weights,
one model order, repository-relative paths, and the one LaTeX escaper.

Used by ``figures/`` (captions), ``paper/`` (tables, reported vs reproduced) and the experiments that
write LaTeX summaries.  Nothing here imports JAX.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..paths import checkout_root
from .reported import paper_models

__all__ = ["MAKE_TARGET", "model_order", "model_key", "short_model", "short_sha", "cpu_desc", "jax_device",
           "bench_device", "bench_device_short", "record_weights", "record_precision", "run_facts", "parity_weights",
           "rel", "tex", "missing_text"]

# which make target writes each experiment's results
MAKE_TARGET = {"throughput": "make throughput", "sweep": "make sweep", "cache_speedup": "make cache-speedup",
               "perplexity": "make perplexity", "parity": "make parity", "state_dtype": "make state-dtype-fidelity"}
_LAYOUT_TEXT = {"perplexity": "<model>/*.json"}


def missing_text(experiment: str, results: str | os.PathLike | None = None, what: str = "") -> str:
    """'no [<what> in ]results/<experiment>/*.json[ under DIR] (run `make ...`)'."""
    where = f"results/{experiment}/{_LAYOUT_TEXT.get(experiment, '*.json')}"
    return (f"no {what + ' in ' if what else ''}{where}" + (f" under {results}" if results is not None else "")
            + f" (run `{MAKE_TARGET.get(experiment, 'make ' + experiment)}`)")


# ------------------------------------------------------------------------------ models
def model_order() -> list[str]:
    """Models in display order: the paper's checkpoints smallest first, then the project's tiny models."""
    return list(paper_models()) + ["mamba2-tiny-wikitext", "tiny"]


def model_key(name: str) -> tuple[int, str]:
    """Sort key: the paper's checkpoints smallest first, then the project's tiny models, then the rest."""
    order = model_order()
    return (order.index(name) if name in order else len(order), name)


def short_model(name: str) -> str:
    """'mamba2-130m' -> '130m' for crowded axes (other names unchanged)."""
    return name[len("mamba2-"):] if name.startswith("mamba2-") and name != "mamba2-tiny-wikitext" else name


# ------------------------------------------------------------------------------ provenance wording
def short_sha(prov: dict[str, Any] | None) -> str:
    g = (prov or {}).get("git") or {}
    sha = g.get("sha") or "?"
    return sha[:8] + ("+dirty" if g.get("dirty") else "")


def cpu_desc(prov: dict[str, Any] | None) -> str:
    prov = prov or {}
    model = prov.get("cpu_model") or "CPU"
    n = prov.get("cpu_count")
    return f"CPU ({model}{f', {n} cores' if n else ''})"


def jax_device(prov: dict[str, Any] | None, kinds: bool = False) -> str:
    """The JAX device of a parity / perplexity run: the CPU model on CPU, else the backend (or, with
    ``kinds``, the device kinds)."""
    j = (prov or {}).get("jax") or {}
    be = j.get("backend") or "?"
    if be == "cpu":
        return cpu_desc(prov)
    return ", ".join(j.get("device_kinds") or [be]) if kinds else be


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


def run_facts(path: Path, doc: dict[str, Any], recs: Iterable[dict[str, Any]] | None = None) -> dict[str, str]:
    """What produced a benchmark document (or ``recs`` of it): run, device, precision, weights, batch,
    git, date and the file, each as display text."""
    recs = list(doc.get("records") or [] if recs is None else recs)
    prov = doc.get("provenance") or {}
    return {"run": str(doc.get("run")), "device": bench_device(doc),
            "precision": "; ".join(sorted({record_precision(r, doc) for r in recs})),
            "weights": "; ".join(sorted({record_weights(r, doc) for r in recs})),
            "batch": str(sorted({r.get("batch") for r in recs if r.get("batch") is not None}) or "?"),
            "git": short_sha(prov), "date": str(prov.get("date_utc", "?")), "file": rel(path)}


def parity_weights(doc: dict[str, Any]) -> str:
    ck = doc.get("checkpoint") or {}
    if ck.get("kind") == "random-init":
        return "synthetic weights (random init)"
    return f"checkpoint {ck.get('source', doc.get('model'))}"


def rel(p: str | os.PathLike) -> str:
    """Checkout-relative path; for a results tree elsewhere (--results DIR), from its 'results' folder."""
    p = Path(p)
    root = checkout_root()
    try:
        if root is None:
            raise ValueError
        return str(p.resolve().relative_to(root))
    except ValueError:
        parts = p.parts
        if "results" in parts:
            i = len(parts) - 1 - parts[::-1].index("results")
            return str(Path(*parts[i:]))
        return str(p)


# ------------------------------------------------------------------------------ LaTeX
_TEX_ESC = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
            "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}",
            ">": r"\textgreater{}", "|": r"\textbar{}", "`": ""}
_TEX_UNICODE = (("−", "-"), ("Δ", r"$\Delta$"), ("±", r"$\pm$"), ("×", r"$\times$"), ("≤", r"$\le$"),
                ("≥", r"$\ge$"), ("–", "--"), ("—", "---"), ("…", "..."))


def tex(s: Any) -> str:
    """Escape plain text for LaTeX: every special character, and the few unicode characters pdflatex
    lacks by default.  ``None`` is the empty string."""
    s = "" if s is None else str(s)
    s = "".join(_TEX_ESC.get(ch, ch) for ch in s)
    for a, b in _TEX_UNICODE:
        s = s.replace(a, b)
    return s
