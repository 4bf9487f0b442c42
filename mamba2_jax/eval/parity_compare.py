"""Parity comparison: the JAX model's tensors and greedy tokens against a reference's (numpy only).

Errors per tensor: max-abs, max-rel (= max|jax-ref| / max|ref|) and ULPs of the fp32 value scale;
greedy continuations: tokens matching, first divergence and the reference's top-1/top-2 margin
there; the decode path at the reference's top-k ids.  The experiment is :mod:`.parity`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..paths import checkout_root
from .golden import read_golden

REPO = checkout_root() or Path.cwd()


def tensor_error(x: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """max-abs, max-rel (max|x-ref| / max|ref|) and ULPs of the fp32 scale of ref."""
    x64, r64 = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    if x64.shape != r64.shape:
        raise ValueError(f"shape mismatch: {x64.shape} vs reference {r64.shape}")
    scale = float(np.max(np.abs(r64))) if r64.size else 0.0
    diff = float(np.max(np.abs(x64 - r64))) if r64.size else 0.0
    if not np.all(np.isfinite(x64)):
        diff = float("inf")
    ulp = float(np.spacing(np.float32(scale))) if scale > 0 else float(np.spacing(np.float32(1)))
    return {"max_abs": diff, "max_rel": diff / scale if scale > 0 else diff, "ulps": diff / ulp, "ref_absmax": scale}


def _worst(errs: list[dict[str, float]]) -> dict[str, float]:
    return {k: max(e[k] for e in errs) for k in ("max_abs", "max_rel", "ulps")} if errs else {}


def compare_prompt(jx: dict[str, np.ndarray], ref: dict[str, np.ndarray], margin_rel_tol: float) -> dict[str, Any]:
    n_layer = ref["hidden"].shape[0]
    layers = [tensor_error(jx["hidden"][i], ref["hidden"][i]) for i in range(n_layer)]
    pos = ref["logits_pos"]
    logits = tensor_error(jx["logits"][pos], ref["logits"])
    rt, jt = ref["greedy_tokens"], jx["tokens"][: len(ref["greedy_tokens"])]
    n = len(rt)
    same = rt == jt
    first_div = int(np.argmin(same)) if not same.all() else None
    upto = n if first_div is None else first_div + 1  # contexts are identical up to and incl. first_div
    # decode path: JAX logits at the reference's top-k ids (identical contexts only)
    step_err = []
    for s in range(upto):
        ids = ref["greedy_top_ids"][s]
        d = np.max(np.abs(jx["step_logits"][s][ids].astype(np.float64) - ref["greedy_top_vals"][s].astype(np.float64)))
        step_err.append(float(d / max(float(ref["greedy_absmax"][s]), 1e-30)))
    out: dict[str, Any] = {
        "T": int(len(ref["input_ids"])),
        "hidden_layers": layers,
        "hidden_worst": _worst(layers),
        "logits": logits,
        "greedy": {"n": n, "n_match_positions": int(same.sum()),
                   "matched_prefix": n if first_div is None else first_div,
                   "first_divergence": first_div},
        "decode_topk_max_rel": max(step_err) if step_err else None,
    }
    if first_div is not None:
        m_ref = float(ref["greedy_margin"][first_div])
        scale = float(ref["greedy_absmax"][first_div])
        m_rel = m_ref / scale if scale > 0 else float("inf")
        out["greedy"].update({
            "ref_token": int(rt[first_div]), "jax_token": int(jt[first_div]),
            "ref_margin": m_ref, "ref_margin_rel": m_rel, "jax_margin": float(jx["margin"][first_div]),
            "logit_scale": scale,
            "below_noise_floor": bool(m_rel < margin_rel_tol),
            "explanation": (f"reference top1-top2 margin {m_ref:.3g} = {m_rel:.3g} x max|logit| < {margin_rel_tol:g}: "
                            "below the fp32 noise floor (a tie at fp32 precision)") if m_rel < margin_rel_tol else
                           f"UNEXPLAINED: reference margin {m_rel:.3g} x max|logit| >= {margin_rel_tol:g}",
        })
    return out


def compare_golden(jax_results: list[dict], golden: Path, tol: dict[str, float]) -> dict[str, Any]:
    meta, refs = read_golden(golden)
    if len(refs) != len(jax_results):
        raise ValueError(f"{golden}: {len(refs)} prompts, JAX ran {len(jax_results)}")
    per_prompt = {}
    for pid, jx, ref in zip(meta["prompt_ids"], jax_results, refs):
        if not np.array_equal(ref["input_ids"], jx["input_ids"]):
            raise ValueError(f"{golden}: prompt {pid} token ids differ from the JAX run's")
        per_prompt[pid] = compare_prompt(jx, ref, tol["margin_rel"])
    n_layer = len(next(iter(per_prompt.values()))["hidden_layers"])
    per_layer = [_worst([p["hidden_layers"][i] for p in per_prompt.values()]) for i in range(n_layer)]
    hidden_worst = _worst(per_layer)
    logits_worst = _worst([p["logits"] for p in per_prompt.values()])
    greedy = [p["greedy"] for p in per_prompt.values()]
    unexplained = [pid for pid, p in per_prompt.items()
                   if p["greedy"]["first_divergence"] is not None and not p["greedy"]["below_noise_floor"]]
    dec = [p["decode_topk_max_rel"] for p in per_prompt.values() if p["decode_topk_max_rel"] is not None]
    checks = {
        "hidden_max_rel_ok": hidden_worst["max_rel"] <= tol["max_rel"],
        "logits_max_rel_ok": logits_worst["max_rel"] <= tol["max_rel"],
        "greedy_ok": not unexplained,
    }
    return {
        "golden": str(golden.relative_to(REPO) if golden.is_relative_to(REPO) else golden),
        "reference": {k: meta.get(k) for k in ("backend", "device", "dtype", "packages", "tf32", "backend_meta",
                                                  "date_utc", "git", "torch_float32_matmul_precision",
                                                  "seconds_total", "cpu_model", "python", "timing")},
        "hidden_per_layer": per_layer,
        "hidden_worst": hidden_worst,
        "logits_worst": logits_worst,
        "decode_topk_max_rel": max(dec) if dec else None,
        "greedy_summary": {
            "prompts": len(greedy),
            "identical_64_of_64": sum(g["first_divergence"] is None for g in greedy),
            "tokens_matching_total": sum(g["n_match_positions"] for g in greedy),
            "tokens_total": sum(g["n"] for g in greedy),
            "divergences_below_noise_floor": sum(bool(g.get("below_noise_floor")) for g in greedy),
            "divergences_unexplained": unexplained,
        },
        "per_prompt": per_prompt,
        "checks": checks,
        "pass": all(checks.values()),
    }


def reference_spread(goldens: dict[str, Path]) -> dict[str, Any] | None:
    """How far the references are from each other (first backend vs each other one): the scale of
    fp32 reduction-order noise that JAX's own errors should be read against."""
    names = list(goldens)
    if len(names) < 2:
        return None
    _, base = read_golden(goldens[names[0]])
    out = {}
    for other in names[1:]:
        _, o = read_golden(goldens[other])
        out[f"{names[0]} vs {other}"] = {
            "hidden": _worst([tensor_error(a["hidden"], b["hidden"]) for a, b in zip(o, base)]),
            "logits": _worst([tensor_error(a["logits"], b["logits"]) for a, b in zip(o, base)]),
            "greedy_identical_prompts": int(sum(np.array_equal(a["greedy_tokens"], b["greedy_tokens"])
                                                for a, b in zip(o, base))),
            "prompts": len(base),
        }
    return out
