"""Fidelity of a 16-bit SSM state (issue 28 item 4): the decode path with the state stored in
bfloat16 or float16 (float32 math inside the step, ``ssd.ssd_step``) against the float32 state.

Per model and parity prompt:

* **greedy agreement**: ``n_new`` greedy tokens from ``Generator.generate`` (the decode loop users
  run) with each state dtype; the number of positions equal to the float32 state's tokens and the
  first position that differs.  At that position the float32 state's top-1 − top-2 logit margin
  (÷ max|logit|) says whether the two paths parted at a near tie.
* **logits**: every decode step's logits with the 16-bit state, teacher-forced along the float32
  state's greedy path (the same tokens in), against the float32 state's: max|Δ| / max|ref| per
  step, on the real vocabulary (padded ids excluded).

Settings: ``mamba2_jax/eval/conf/state_dtype.yaml``.  Writes ``results/state_dtype/fidelity.json``
(+ .csv) with provenance.  The perplexity Δ of a 16-bit state is the perplexity experiment's
(``make perplexity-state-dtype``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from ..paths import repo_path
from .models import ensure_checkpoint, policy_record
from .results import write_document

__all__ = ["run", "teacher_forced_logits"]


def teacher_forced_logits(model, prompt: list[int], tokens: np.ndarray) -> np.ndarray:
    """Logits (len(tokens), V) predicting ``tokens[k]``: the prompt's last position, then one
    decode step per token of ``tokens[:-1]`` (the model's own step, its cache in its state dtype).
    The programs are :func:`~mamba2_jax.generate.stepwise_greedy`'s (cached per model structure),
    fed the given tokens instead of their argmax."""
    import jax.numpy as jnp
    from flax import nnx

    from ..generate import _stepwise_programs

    graphdef, st = nnx.split(model)
    prefill, step = _stepwise_programs(graphdef)
    lg, cache, _ = prefill(st, jnp.asarray([prompt], jnp.int32))
    out = [np.asarray(lg[0, -1], np.float64)]
    for t in tokens[:-1]:
        lg, cache = step(st, jnp.asarray([t], jnp.int32), cache)
        out.append(np.asarray(lg[0], np.float64))
    return np.stack(out)


def _margin(logits: np.ndarray) -> float:
    top2 = np.sort(logits)[-2:]
    return float((top2[1] - top2[0]) / np.abs(logits).max())


def run(cfg) -> dict[str, Any]:
    import jax

    from ..generate import Generator
    from ..loading import load_pretrained
    from ..tokenizer import load_tokenizer
    from .provenance import provenance

    jax.config.update("jax_default_matmul_precision", "highest")
    tok = load_tokenizer(str(cfg.tokenizer), allow_hub=False)
    src = OmegaConf.to_container(cfg, resolve=True)
    prompts = json.loads(repo_path(cfg.prompts_file).read_text())["prompts"][: cfg.max_prompts or None]
    prompts = [{"id": p["id"], "ids": tok.encode(p["text"])} for p in prompts]
    work = repo_path(cfg.paths.work_dir)
    rows, models = [], {}
    for spec in src["models"]:
        d, desc = ensure_checkpoint(spec, work)
        name = spec["name"] if isinstance(spec, dict) else str(spec)
        ref_model = load_pretrained(d, dtype=cfg.dtype, state_dtype="float32")
        V = ref_model.cfg.vocab_size
        ref_gen = Generator(ref_model, eos_id=None)
        ref = {}
        for p in prompts:
            toks = np.asarray(ref_gen.generate([p["ids"]], int(cfg.n_new)).tokens[0])
            ref[p["id"]] = (toks, teacher_forced_logits(ref_model, p["ids"], toks)[:, :V])
        models[name] = {"checkpoint": desc, "n_layer": ref_model.cfg.n_layer, "d_model": ref_model.cfg.d_model,
                        "vocab_size": V, "policy_float32": policy_record(ref_model)}
        for sd in cfg.state_dtypes:
            t0 = time.perf_counter()
            model = load_pretrained(d, dtype=cfg.dtype, state_dtype=str(sd))
            gen = Generator(model, eos_id=None)
            models[name][f"policy_{sd}"] = policy_record(model)
            for p in prompts:
                rtoks, rlog = ref[p["id"]]
                toks = np.asarray(gen.generate([p["ids"]], int(cfg.n_new)).tokens[0])
                lg = teacher_forced_logits(model, p["ids"], rtoks)[:, :V]
                if not np.isfinite(lg).all():
                    raise FloatingPointError(f"{name}/{p['id']}: non-finite logits with a {sd} state")
                same = toks == rtoks
                first = int(np.argmin(same)) if not same.all() else None
                rel = np.abs(lg - rlog).max(axis=1) / np.abs(rlog).max(axis=1)
                rows.append({"model": name, "state_dtype": str(sd), "prompt": p["id"], "prompt_tokens": len(p["ids"]),
                             "n_new": int(cfg.n_new), "agree": int(same.sum()), "all_agree": bool(same.all()),
                             "first_divergence": first,
                             "ref_margin_rel_at_divergence": None if first is None else _margin(rlog[first]),
                             "logits_max_rel": float(rel.max()), "logits_median_rel": float(np.median(rel)),
                             "logits_max_rel_first_step": float(rel[0]), "logits_max_rel_last_step": float(rel[-1])})
                print({k: (f"{v:.2e}" if isinstance(v, float) else v) for k, v in rows[-1].items()}, flush=True)
            print(f"[state_dtype] {name} {sd}: {time.perf_counter() - t0:.0f} s", flush=True)
    summary = {}
    for name in models:
        for sd in cfg.state_dtypes:
            rs = [r for r in rows if r["model"] == name and r["state_dtype"] == sd]
            summary[f"{name}/{sd}"] = {
                "prompts": len(rs), "prompts_all_agree": sum(r["all_agree"] for r in rs),
                "tokens_agree": sum(r["agree"] for r in rs), "tokens": sum(r["n_new"] for r in rs),
                "logits_max_rel": max(r["logits_max_rel"] for r in rs),
                "logits_median_rel": float(np.median([r["logits_median_rel"] for r in rs]))}
    doc = {"experiment": "state_dtype_fidelity",
           "precision": {"param_dtype": str(cfg.dtype), "state_dtype": ["float32", *map(str, cfg.state_dtypes)],
                         "matmul_precision": "highest"},
           "models": models, "summary": summary, "rows": rows, "provenance": provenance()}
    out = repo_path(cfg.paths.results_dir)
    write_document(out / "fidelity.json", doc, experiment="state_dtype", run="fidelity", records=rows)
    import pandas as pd

    from ..fileio import atomic_write

    atomic_write(Path(out) / "fidelity.csv", lambda f: pd.DataFrame(rows).to_csv(f, index=False), binary=False)
    for k, v in summary.items():
        print(k, v, flush=True)
    return doc
