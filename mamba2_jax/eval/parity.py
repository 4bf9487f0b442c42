"""Parity experiment: the JAX model against reference implementations on the same checkpoints.

For every model in the config (random-init checkpoints are written first if needed), each
reference backend writes a golden file in its own process (``python -m reference.golden``), then
the JAX model (fp32, matmul precision "highest") runs the same prompts and is compared:

* per layer, the residual stream after the block: max-abs, max-rel (= max|jax-ref| / max|ref|),
  and the error in ULPs of the fp32 value scale (max-abs / spacing(float32(max|ref|)));
* the final logits at the stored prompt positions, the same three numbers;
* greedy continuations (JAX: plain prefill + step loop): tokens matching, first divergence, the
  reference's top1-top2 margin there (absolute and relative to max|logit|), and whether the
  divergence is below the fp32 noise floor (margin_rel < tolerance.margin_rel);
* the decode path: at every step before the first divergence, JAX's logits at the reference's
  top-k ids vs the reference's values (relative to max|logit| of that step).

Outputs ``results/parity/<model>__<backend>.json`` and ``results/parity/summary.csv`` (one row per
model x backend, with provenance).  Run: ``make parity`` or ``python experiments/parity.py`` (the
Hydra entry point; :func:`run_parity` is the experiment).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import atomic_write_text
from ..paths import checkout_root, repo_path
from . import refproc
from .models import checkpoint_fingerprint, ensure_checkpoint, model_tag
from .parity_compare import compare_golden, reference_spread
from .parity_report import summary_row, write_csv
from .results import write_document

# The reference processes (``python -m reference.golden``) run from a source checkout, where the
# ``reference`` package and experiments/parity_prompts_v1.json live; relative paths in the config
# are taken relative to it.
REPO = checkout_root() or Path.cwd()


def paper_tolerances() -> dict[str, str]:
    """The paper's fidelity claims, from paper/reported.yaml (the only place they are written)."""
    from mamba2_jax.eval import reported

    h, g, p = (reported.claim(c) for c in ("hidden_fp32", "greedy_64", "perplexity_delta"))
    return {"source": reported.cite(h), "hidden_states": h["display"], "greedy": g["display"],
            "perplexity": f"{p['display']} (measured by the perplexity experiment, not here)"}


# ------------------------------------------------------------------------------ small helpers


# ------------------------------------------------------------------------------ checkpoints


# ------------------------------------------------------------------------------ prompts
def tokenize_prompts(prompts_file: Path, tokenizer: str, out: Path, max_prompts: int | None) -> dict[str, Any]:
    from mamba2_jax.tokenizer import load_tokenizer

    src = json.loads(prompts_file.read_text())
    tok = load_tokenizer(tokenizer)
    items = src["prompts"][: max_prompts or None]
    prompts = [{"id": p["id"], "text": p["text"], "input_ids": tok.encode(p["text"])} for p in items]
    doc = {"version": src.get("version"),
           "source": str(prompts_file.relative_to(REPO) if prompts_file.is_relative_to(REPO)
                                                         else prompts_file),
           "tokenizer": tok.source, "prompts": prompts}
    text = json.dumps(doc)
    doc["sha256"] = hashlib.sha256(text.encode()).hexdigest()[:16]
    if not out.exists() or json.loads(out.read_text()).get("sha256") != doc["sha256"]:
        atomic_write_text(out, json.dumps(doc))
    return doc


def model_prompts(prompts_doc: dict[str, Any], spec: Any, out: Path) -> tuple[dict[str, Any], Path]:
    """The prompt set of one model: a model spec may keep only its first ``max_prompts`` prompts and
    the first ``prompt_tokens`` tokens of each (every backend of that model then runs those)."""
    keep = {k: int(spec[k]) for k in ("max_prompts", "prompt_tokens")
            if not isinstance(spec, str) and spec.get(k) is not None}
    if not keep:
        return prompts_doc, out.parent / "prompts_tokens.json"
    prompts = prompts_doc["prompts"][: keep.get("max_prompts")]
    prompts = [{**p, "input_ids": p["input_ids"][: keep.get("prompt_tokens")]} for p in prompts]
    doc = {k: v for k, v in prompts_doc.items() if k not in ("prompts", "sha256")}
    doc.update({"prompts": prompts, "subset": keep})
    doc["sha256"] = hashlib.sha256(json.dumps(doc).encode()).hexdigest()[:16]
    path = out.parent / f"prompts_tokens__{model_tag(spec)}.json"
    if not path.exists() or json.loads(path.read_text()).get("sha256") != doc["sha256"]:
        atomic_write_text(path, json.dumps(doc))
    return doc, path


# ------------------------------------------------------------------------------ references


# ------------------------------------------------------------------------------ JAX side
def load_jax_model(model_dir: Path, dtype: str, precision: str, plant_bug: str | None):
    from mamba2_jax.checkpoint import read_state_dict
    from mamba2_jax.loading import model_from_state_dict

    cfg, sd, fmt = read_state_dict(model_dir)
    stored = str(np.asarray(sd["backbone.embedding.weight"]).dtype)
    if plant_bug == "flip_D":
        sd = {k: (-np.asarray(v) if k.endswith("mixer.D") else v) for k, v in sd.items()}
    elif plant_bug:
        raise ValueError(f"unknown plant_bug {plant_bug!r} (flip_D)")
    model = model_from_state_dict(cfg, sd, dtype=dtype, precision=precision)
    return model, {"format": fmt, "stored_dtype": stored, "param_dtype": dtype, "matmul_precision": precision,
                   "plant_bug": plant_bug}


class JaxRunner:
    """Greedy continuation with per-step logits: :func:`mamba2_jax.generate.stepwise_greedy`, the
    host-driven prefill + step loop (argmax over the padded vocabulary, as the references)."""

    def __init__(self, model):
        self.model = model

    def run(self, input_ids: list[int], n_new: int, mask_padded_vocab: bool = False) -> dict[str, np.ndarray]:
        from mamba2_jax.generate import stepwise_greedy

        r = stepwise_greedy(self.model, input_ids, n_new, mask_padded_vocab=mask_padded_vocab)
        sl = r["step_logits"]
        top2 = -np.sort(-sl, axis=-1)[:, :2]
        return {"hidden": r["hidden"], "logits": r["logits"], "tokens": r["tokens"],
                "step_logits": sl, "margin": top2[:, 0] - top2[:, 1], "absmax": np.abs(sl).max(-1)}


def llama_cpp_unavailable() -> str | None:
    """Why the llama_cpp reference cannot run here (not built, build failed), or None."""
    from .llama_cpp import unavailable

    return unavailable()


def greedy_vocab(golden: Path) -> str:
    """"real" when the reference's greedy picks from the real vocabulary only (its golden metadata
    says so: llama.cpp, whose padded ids are [PAD] tokens), else "padded"."""
    meta = json.loads(Path(golden).with_suffix(".json").read_text())
    return (meta.get("backend_meta") or {}).get("greedy_vocab", "padded")


# ------------------------------------------------------------------------------ comparison


# ------------------------------------------------------------------------------ driver
def run_parity(cfg) -> dict[str, Any]:
    import jax

    from mamba2_jax.eval.provenance import provenance

    jax.config.update("jax_default_matmul_precision", cfg.jax.matmul_precision)
    t_start = time.time()
    work = repo_path(cfg.paths.work_dir)
    results_dir = repo_path(cfg.paths.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    prompts_doc = tokenize_prompts(repo_path(cfg.prompts_file), str(cfg.tokenizer), work / "prompts_tokens.json",
                                   cfg.get("max_prompts"))
    prompts_json = work / "prompts_tokens.json"
    models = list(cfg.models)
    for opt in cfg.get("optional_models") or []:
        path = repo_path(opt if isinstance(opt, str) else opt["path"])
        if path.is_dir() and (path / "config.json").exists():
            models.append(str(opt) if isinstance(opt, str) else opt)
    tol = {"max_rel": float(cfg.tolerance.max_rel), "margin_rel": float(cfg.tolerance.margin_rel)}
    prov = provenance()
    rows, reports, skipped = [], [], {}
    for spec in models:
        tag = model_tag(spec)
        model_dir, desc = ensure_checkpoint(spec, work)
        fp = checkpoint_fingerprint(model_dir)
        mprompts, mprompts_json = model_prompts(prompts_doc, spec, prompts_json)
        n_new = int(spec.get("n_new") or cfg.n_new) if not isinstance(spec, str) else int(cfg.n_new)
        goldens = {}
        for backend in cfg.backends:
            if backend == "llama_cpp":
                why = llama_cpp_unavailable()
                if why:
                    print(f"[parity] {tag}: llama_cpp SKIPPED: {why}", flush=True)
                    skipped[tag, backend] = why
                    continue
            extra = [] if backend == "mamba_ssm_triton" or not cfg.get("ref_threads") else \
                ["--threads", str(int(cfg.ref_threads))]
            py = refproc.reference_python(cfg.get("python"), backend)
            if backend == "mamba_ssm_triton":
                device = refproc.triton_device(cfg, py)
                if not refproc.backend_runs(cfg, backend, tag, device):
                    print(f"[parity] {tag}: {backend} skipped on {device} (not in triton.cpu_models)", flush=True)
                    continue
                if device == "cpu":  # the Triton interpreter: no CUDA knobs
                    extra = ["--device", "cpu", "--cuda-graph", "off"] + \
                        (["--threads", str(int(cfg.ref_threads))] if cfg.get("ref_threads") else [])
                else:
                    extra = ["--tf32", str(cfg.triton.tf32), "--triton-f32", str(cfg.triton.triton_f32),
                             "--cuda-graph", str(cfg.triton.cuda_graph)]
            out = work / "golden" / tag / f"{backend}.npz"
            expect = {"checkpoint_fingerprint": fp, "prompts_sha256": mprompts["sha256"], "n_new_expected": n_new,
                      "extra_args": extra}
            t0 = time.time()
            goldens[backend] = refproc.run_golden(backend, py, model_dir, mprompts_json, out,
                                          n_new, extra, bool(cfg.regenerate_golden), expect,
                                          timeout=cfg.get("reference_timeout_s"))
            print(f"[parity] {tag}: golden {backend} ready ({time.time() - t0:.1f}s)", flush=True)
        spread = reference_spread(goldens)
        t0 = time.time()
        model, jmeta = load_jax_model(model_dir, cfg.jax.dtype, cfg.jax.matmul_precision, cfg.get("plant_bug"))
        runner = JaxRunner(model)
        # greedy over the padded vocabulary (as mamba_ssm / HF) and, for references that pick from the
        # real vocabulary only (llama.cpp), over the real one
        jax_by_vocab = {}
        for voc in sorted({"padded"} | {greedy_vocab(g) for g in goldens.values()}):
            jax_by_vocab[voc] = []
            for p in mprompts["prompts"]:
                r = runner.run(p["input_ids"], n_new, mask_padded_vocab=(voc == "real"))
                r["input_ids"] = np.asarray(p["input_ids"], np.int32)
                jax_by_vocab[voc].append(r)
        t_jax = time.time() - t0
        print(f"[parity] {tag}: JAX run {t_jax:.1f}s", flush=True)
        for backend, golden in goldens.items():
            own_tol = (cfg.get("tolerance_backend") or {}).get(backend) or {}
            btol = {**tol, **{k: float(v) for k, v in own_tol.items()}}
            rep = compare_golden(jax_by_vocab[greedy_vocab(golden)], golden, btol)
            rep.update({
                "model": tag, "model_dir": str(model_dir), "checkpoint": desc, "checkpoint_fingerprint": fp,
                "config": {k: getattr(model.cfg, k) for k in ("d_model", "n_layer", "ngroups", "d_state", "headdim",
                                                              "chunk_size", "nheads", "vocab_size")},
                "jax": jmeta, "jax_seconds": round(t_jax, 2), "tolerance": btol, "greedy_vocab": greedy_vocab(golden),
                "paper_tolerances": paper_tolerances(),
                "reference_spread": spread,
                "prompts": {"file": prompts_doc["source"], "version": prompts_doc["version"],
                            "sha256": mprompts["sha256"], "lengths": [len(p["input_ids"]) for p in mprompts["prompts"]],
                            "tokenizer": prompts_doc["tokenizer"], "subset": mprompts.get("subset")},
                "n_new": n_new, "label": cfg.label, "provenance": prov,
            })
            name = f"{tag}__{backend}" + (f"__bug-{cfg.plant_bug}" if cfg.get("plant_bug") else "")
            row = summary_row(rep, backend)
            write_document(results_dir / f"{name}.json", rep, experiment="parity", run=name, records=[row])
            reports.append(rep)
            rows.append(row)
            g = rep["greedy_summary"]
            hw = rep["hidden_worst"]  # empty for llama.cpp (no hidden states)
            hid = f"{hw['max_rel']:.2e} ({hw['ulps']:.1f} ulp)" if hw else "-"
            print(f"[parity] {tag} vs {backend}: hidden max_rel {hid}, "
                  f"logits max_rel {rep['logits_worst']['max_rel']:.2e}, "
                  f"greedy {g['tokens_matching_total']}/{g['tokens_total']} "
                  f"({g['identical_64_of_64']}/{g['prompts']} identical, {g['divergences_below_noise_floor']} below "
                  f"noise floor) -> {'PASS' if rep['pass'] else 'FAIL'}", flush=True)
    csv_name = f"summary__{cfg.label}" + (f"__bug-{cfg.plant_bug}" if cfg.get("plant_bug") else "") + ".csv"
    write_csv(results_dir / csv_name, rows)
    total = time.time() - t_start
    print(f"[parity] wrote {results_dir / csv_name} ({len(rows)} rows) in {total:.0f}s", flush=True)
    return {"reports": reports, "rows": rows, "pass": all(r["pass"] for r in reports), "seconds": total,
            "skipped": {f"{m}/{b}": why for (m, b), why in skipped.items()}}


