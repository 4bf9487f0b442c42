"""Parity reports: one summary row per model × reference, written as CSV (same numbers as the JSON).

The human-readable table is rendered once, by ``paper/make_tables.py`` (``paper/tables/parity.md``)."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from ..fileio import atomic_write

CSV_FIELDS = ["model", "backend", "pass", "hidden_max_abs", "hidden_max_rel", "hidden_ulps", "logits_max_abs",
              "logits_max_rel", "logits_ulps", "decode_topk_max_rel", "greedy_identical_prompts", "greedy_prompts",
              "greedy_tokens_matching", "greedy_tokens_total", "divergences_below_noise_floor",
              "divergences_unexplained", "ref_spread_hidden_max_rel", "ref_spread_logits_max_rel", "tol_max_rel",
              "tol_margin_rel", "label", "checkpoint_kind", "stored_dtype",
              "jax_param_dtype", "jax_matmul_precision", "ref_device", "ref_dtype", "ref_tf32", "plant_bug",
              "git_sha", "git_dirty", "jax", "jaxlib", "flax", "numpy", "torch", "transformers", "mamba_ssm", "triton",
              "ref_torch", "jax_backend", "cpu_model", "python", "date_utc", "n_new", "ref_prefill_s_per_token",
              "ref_decode_s_per_step"]


def summary_row(rep: dict[str, Any], backend: str) -> dict[str, Any]:
    prov, ref, g = rep["provenance"], rep["reference"], rep["greedy_summary"]
    pk, rpk = prov["packages"], (ref.get("packages") or {})
    return {
        "model": rep["model"], "backend": backend, "pass": rep["pass"],
        "hidden_max_abs": f"{rep['hidden_worst']['max_abs']:.3e}",
        "hidden_max_rel": f"{rep['hidden_worst']['max_rel']:.3e}",
        "hidden_ulps": f"{rep['hidden_worst']['ulps']:.2f}",
        "logits_max_abs": f"{rep['logits_worst']['max_abs']:.3e}",
        "logits_max_rel": f"{rep['logits_worst']['max_rel']:.3e}",
        "logits_ulps": f"{rep['logits_worst']['ulps']:.2f}",
        "decode_topk_max_rel": "" if rep["decode_topk_max_rel"] is None else f"{rep['decode_topk_max_rel']:.3e}",
        "greedy_identical_prompts": g["identical_64_of_64"], "greedy_prompts": g["prompts"],
        "greedy_tokens_matching": g["tokens_matching_total"], "greedy_tokens_total": g["tokens_total"],
        "divergences_below_noise_floor": g["divergences_below_noise_floor"],
        "divergences_unexplained": len(g["divergences_unexplained"]),
        **_spread_cols(rep.get("reference_spread")),
        "tol_max_rel": rep["tolerance"]["max_rel"], "tol_margin_rel": rep["tolerance"]["margin_rel"],
        "label": rep["label"], "checkpoint_kind": rep["checkpoint"].get("kind"),
        "stored_dtype": rep["jax"]["stored_dtype"], "jax_param_dtype": rep["jax"]["param_dtype"],
        "jax_matmul_precision": rep["jax"]["matmul_precision"], "ref_device": ref.get("device"),
        "ref_dtype": ref.get("dtype"), "ref_tf32": json.dumps(ref.get("tf32"), sort_keys=True),
        "plant_bug": rep["jax"]["plant_bug"] or "",
        "git_sha": prov["git"]["sha"], "git_dirty": prov["git"]["dirty"],
        "jax": pk.get("jax"), "jaxlib": pk.get("jaxlib"), "flax": pk.get("flax"), "numpy": pk.get("numpy"),
        "torch": pk.get("torch"), "transformers": rpk.get("transformers"), "mamba_ssm": rpk.get("mamba-ssm"),
        "triton": rpk.get("triton"), "ref_torch": rpk.get("torch"),
        "jax_backend": prov["jax"].get("backend"), "cpu_model": prov.get("cpu_model"), "python": prov.get("python"),
        "date_utc": prov.get("date_utc"), "n_new": rep.get("n_new"),
        **_timing_cols(ref.get("timing")),
    }


def _timing_cols(t: dict[str, Any] | None) -> dict[str, str]:
    t = t or {}
    f = lambda x: "" if x is None else f"{x:.4g}"
    return {"ref_prefill_s_per_token": f(t.get("prefill_seconds_per_token")),
            "ref_decode_s_per_step": f(t.get("decode_seconds_per_step"))}


def _spread_cols(spread: dict[str, Any] | None) -> dict[str, str]:
    if not spread:
        return {"ref_spread_hidden_max_rel": "", "ref_spread_logits_max_rel": ""}
    return {"ref_spread_hidden_max_rel": f"{max(v['hidden']['max_rel'] for v in spread.values()):.3e}",
            "ref_spread_logits_max_rel": f"{max(v['logits']['max_rel'] for v in spread.values()):.3e}"}


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    def write(f):
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, lineterminator="\r\n")
        w.writeheader()
        w.writerows(rows)

    atomic_write(path, write, binary=False)


