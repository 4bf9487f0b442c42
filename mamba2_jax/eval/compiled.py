"""What the compiled (not run) TPU v6e programs imply for the paper's TPU claims.

Reads ``results/tpu_compile/<model>.json`` (experiments/tpu_compile.py; make reproduce-tpu off-TPU)
and, per paper scale, builds the numbers paper/tables/comparison.md and the compiled-program figure
show: each program's FLOPs and bytes, its roofline time, the HBM it needs per chip, and whether the
paper's number is within that program's bound.

Two bounds per program (see mamba2_jax/compile.py):

* "min bytes": bytes = arguments + outputs (weights and cache read, cache and logits written once),
  the least any program computing the same function must move: an upper bound on speed.
* "XLA bytes": XLA:TPU's cost-model byte count of the compiled program.  It sums every
  instruction's operands and results in every memory space, so the weights that the program
  prefetches into on-chip VMEM (copy-start / slice-start) are counted again when read there: it is
  not HBM traffic and gives no bound (see mamba2_jax/compile.py).  Shown for information.

Nothing here is a measurement: a claim "within the bound" is plausible, not reproduced.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..paths import results_dir
from .results import read_result

__all__ = ["load_compiled", "implications", "side_by_side", "anchor_documents", "NOT_TESTED", "PLAUSIBLE", "EXCEEDS",
           "NOT_COMPILED", "ANCHOR_EXPERIMENT"]

NOT_TESTED = "not tested here: no TPU or GPU available"
PLAUSIBLE = "within the bound: plausible, not reproduced"
EXCEEDS = "needs more than the bound"


def load_compiled(results: Path | None = None, experiment: str = "tpu_compile") -> dict[str, dict[str, Any]]:
    """{model: {"doc": document, "records": {key: record}}} for every compiled-suite file."""
    base = (Path(results) if results is not None else results_dir()) / experiment
    out: dict[str, dict[str, Any]] = {}
    for p in sorted(base.glob("*.json")) if base.is_dir() else []:
        d = read_result(p)
        if not d or d.get("experiment") != experiment:
            continue
        out[d["run"]] = {"path": p, "doc": d, "records": {r["key"]: r for r in d["records"]}}
    return out


def _bound(r: dict[str, Any], xla: bool) -> dict[str, Any]:
    ro = r["roofline"]
    return ro["xla"] if xla else ro


def _verdict(need: float, bound: float | None) -> str:
    if bound is None:
        return "n/a"
    return PLAUSIBLE if need <= bound * (1 + 1e-9) else EXCEEDS


def implications(claim: dict[str, Any], compiled: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One dict per compiled scale for a TPU claim (prefill_tflops, prefill_mfu, decode_hbu,
    cache_speedup_4096): the program's numbers, the bounds, and the verdict for the paper's value."""
    cid = claim["id"]
    L = int((claim.get("comparable_when") or {}).get("length") or (claim.get("comparable_when") or {}).get("context")
            or 4096)
    rows = []
    for model, c in compiled.items():
        recs = c["records"]
        pre, step = recs.get(f"prefill-L{L}"), recs.get("step")
        # memory and fit of the program(s) the row is about (not the largest program of the scale: the
        # 130m step needs 0.50 GiB, its 4096-token prefill 1.04)
        used = {"prefill_tflops": [pre], "prefill_mfu": [pre], "decode_hbu": [step],
                "cache_speedup_4096": [pre, step]}.get(cid, [])
        fit = [r for r in used if r]
        hbm = max((r["bytes_needed_per_device"] for r in fit), default=None)
        chips = max((r["num_devices"] for r in fit), default=None)
        base = {"model": model, "hbm_needed": hbm, "hbm": next((r["hbm_bytes_per_device"] for r in fit), None),
                "fits": all(r["fits"] for r in fit) if fit else None, "chips": chips,
                "programs": len(recs), "source": str(c["path"])}
        if cid in ("prefill_tflops", "prefill_mfu") and pre:
            peak = pre["roofline"]["peak_flops"]
            want = float(claim["value"]) * (1e12 if cid == "prefill_tflops" else peak)  # FLOP/s the claim needs
            b, bx = _bound(pre, False), _bound(pre, True)
            rows.append({**base, "program": pre["key"], "flops": pre["flops"], "min_bytes": pre["min_bytes"],
                         "xla_bytes": pre["bytes_accessed"], "min_time_s": b["min_time_s"],
                         "xla_time_s": bx["min_time_s"], "bound_tflops": b["bound_tflops"],
                         "xla_bound_tflops": bx["bound_tflops"], "bound_mfu": b["bound_mfu"],
                         "xla_bound_mfu": bx["bound_mfu"], "claim_flops_per_s": want,
                         "claim_time_s": pre["flops"] / want,
                         "verdict": _verdict(want, b["bound_tflops"] * 1e12)})
        elif cid == "decode_hbu" and step:
            bw = step["roofline"]["bandwidth"]
            frac = float(claim["value"])
            # HBU as the paper defines it: the model's bytes per step (weights + state read and written)
            # over time over bandwidth.  If the program moves XLA's bytes, HBU cannot exceed min/XLA.
            max_hbu_xla = step["min_bytes"] / step["bytes_accessed"] if step["bytes_accessed"] else None
            rows.append({**base, "program": step["key"], "flops": step["flops"], "min_bytes": step["min_bytes"],
                         "xla_bytes": step["bytes_accessed"], "min_time_s": step["roofline"]["min_time_s"],
                         "xla_time_s": step["roofline"]["xla"]["min_time_s"],
                         "bound_tokens_per_s": step["roofline"]["bound_tokens_per_s"],
                         "xla_bound_tokens_per_s": step["roofline"]["xla"]["bound_tokens_per_s"],
                         "claim_tokens_per_s": frac * bw / step["min_bytes"] * step["tokens_per_call"],
                         "bound_hbu": 1.0, "xla_bound_hbu": max_hbu_xla,
                         "verdict": _verdict(frac, 1.0)})
        elif cid == "cache_speedup_4096" and pre and step:
            lo, hi = (claim["value"] if isinstance(claim["value"], list) else [claim["value"]] * 2)
            ratio = pre["roofline"]["min_time_s"] / step["roofline"]["min_time_s"]
            ratio_x = pre["roofline"]["xla"]["min_time_s"] / step["roofline"]["xla"]["min_time_s"]
            rows.append({**base, "program": f"{pre['key']} / step", "recompute_time_s": pre["roofline"]["min_time_s"],
                         "cached_time_s": step["roofline"]["min_time_s"],
                         "xla_recompute_time_s": pre["roofline"]["xla"]["min_time_s"],
                         "xla_cached_time_s": step["roofline"]["xla"]["min_time_s"],
                         "roofline_ratio": ratio, "xla_roofline_ratio": ratio_x, "claim_range": [lo, hi]})
    return rows


# ------------------------------------------------------------------------------ the paper's own package
ANCHOR_EXPERIMENT = "tpu_compile_anchor"
ANCHOR_COUNTERPART = {"step": "decode"}  # our program key -> the key of mamba2-jax 1.1.2's counterpart
NOT_COMPILED = "not compiled"


def _pair_order(key: str) -> tuple[int, int]:
    return (0, 0) if key == "step" else (1, int(key.split("-L")[1])) if key.startswith("prefill-L") else (2, 0)


def side_by_side(results: Path | None = None) -> list[dict[str, Any]]:
    """Our compiled programs (results/tpu_compile) beside mamba2-jax 1.1.2's (results/tpu_compile_anchor,
    experiments/tpu_compile_anchor.py), one dict per scale and program that either side compiled or the
    anchor's run asked for: ``{"model", "program": our key, "anchor_program": its key, "ours": record or None,
    "anchor": record or None, "ours_path", "anchor_path"}``; None where that side did not compile it.
    Our step pairs with its cached one-token forward (``decode``); prefills pair by length (ours: last-position
    logits; its: full logits, its only mode); our decode loop (``generate``) has no counterpart."""
    ours, anc = load_compiled(results), load_compiled(results, ANCHOR_EXPERIMENT)
    back = {v: k for k, v in ANCHOR_COUNTERPART.items()}
    rows = []
    for m in list(dict.fromkeys([*anc, *ours])):
        o = (ours.get(m) or {}).get("records", {})
        a = (anc.get(m) or {}).get("records", {})
        if m not in anc:
            continue  # a scale the anchor was never compiled for: nothing to set beside ours
        asked = ((anc[m]["doc"].get("config") or {}).get("programs") or []) if m in anc else []
        keys = {back.get(k, k) for k in [*a, *asked]} | {k for k in o if k == "step" or k.startswith("prefill-L")}
        for k in sorted(keys, key=_pair_order):
            ak = ANCHOR_COUNTERPART.get(k, k)
            rows.append({"model": m, "program": k, "anchor_program": ak, "ours": o.get(k), "anchor": a.get(ak),
                         "ours_path": str(ours[m]["path"]) if m in ours else None,
                         "anchor_path": str(anc[m]["path"]) if m in anc else None})
    return rows


def anchor_documents(results: Path | None = None) -> dict[str, dict[str, Any]]:
    """{model: {"doc", "records", "path"}} of results/tpu_compile_anchor (the paper's package compiled)."""
    return load_compiled(results, ANCHOR_EXPERIMENT)
