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

import csv
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import atomic_write, atomic_write_json, atomic_write_text, sha256_file
from ..paths import checkout_root
from .golden import read_golden
from .oracle import perturb_state_dict
from .results import write_document
from .supervise import run_supervised

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
def _abs(p: str | Path) -> Path:
    p = Path(p)
    return p if p.is_absolute() else (REPO / p)


def checkpoint_fingerprint(model_dir: Path) -> str:
    """sha256 over config.json and the weights file (identifies the checkpoint a golden was made from)."""
    h = hashlib.sha256()
    for name in ("config.json", "model.safetensors", "pytorch_model.bin"):
        p = model_dir / name
        if p.exists():
            h.update(name.encode())
            h.update(sha256_file(p).encode())
    return h.hexdigest()[:16]


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


# ------------------------------------------------------------------------------ checkpoints
def model_tag(spec: Any) -> str:
    if isinstance(spec, dict) or hasattr(spec, "keys"):
        return str(spec["name"])
    return str(spec).strip("/").replace("/", "__")


def ensure_checkpoint(spec: Any, work_dir: Path) -> tuple[Path, dict[str, Any]]:
    """→ (local checkpoint dir, description).  Random-init specs are written once, atomically."""
    from mamba2_jax.checkpoint import init_state_dict, resolve_model_dir, write_checkpoint
    from mamba2_jax.config import get_preset

    if isinstance(spec, str) or "path" in spec:
        src = spec if isinstance(spec, str) else str(spec["path"])
        local = _abs(src)
        d = local if local.is_dir() else resolve_model_dir(src)  # else: a hub id
        return Path(d), {"source": src, "kind": "checkpoint"}
    spec = dict(spec)
    cfg = get_preset(spec["preset"])
    if spec.get("overrides"):
        cfg = cfg.replace(**dict(spec["overrides"]))
    out = work_dir / "checkpoints" / spec["name"]
    desc = {"source": f"random init of preset {spec['preset']}", "kind": "random-init",
            "seed": int(spec.get("seed", 0)),
            "stored_dtype": spec.get("stored_dtype", "float32"), "perturb": bool(spec.get("perturb", False)),
            "overrides": dict(spec.get("overrides") or {})}
    stamp = out / ".spec.json"
    if not (stamp.exists() and json.loads(stamp.read_text()) == desc):
        sd = init_state_dict(cfg, seed=desc["seed"])
        if desc["perturb"]:
            sd = perturb_state_dict(sd, desc["seed"])
        write_checkpoint(cfg, sd, out, fmt="state-spaces", dtype=desc["stored_dtype"])
        atomic_write_text(stamp, json.dumps(desc))
    return out, desc


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
_TRITON_DEVICE: dict[str, str] = {}


def triton_device(cfg, python: str) -> str:
    """``triton.device`` (cpu | cuda), or for ``auto`` whether the Triton backend's interpreter sees
    CUDA (cuda) or not (cpu: the Triton interpreter).  Probed once per interpreter."""
    want = str((cfg.get("triton") or {}).get("device") or "auto")
    if want != "auto":
        return want
    if python not in _TRITON_DEVICE:
        r = subprocess.run([python, "-c", "import torch; print(torch.cuda.is_available())"], cwd=REPO,
                           capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        _TRITON_DEVICE[python] = "cuda" if r.returncode == 0 and r.stdout.strip().endswith("True") else "cpu"
    return _TRITON_DEVICE[python]


def backend_runs(cfg, backend: str, tag: str, device: str | None) -> bool:
    """The interpreted Triton backend runs only on ``triton.cpu_models`` (null: every model)."""
    if backend != "mamba_ssm_triton" or device != "cpu":
        return True
    only = (cfg.get("triton") or {}).get("cpu_models")
    return only is None or tag in list(only)


def backend_python(cfg, backend: str) -> str:
    py = (cfg.get("python") or {}).get(backend)
    if not py:
        return sys.executable
    p = _abs(py)
    return str(p) if p.exists() or "/" in str(py) else str(py)


def run_golden(backend: str, python: str, model_dir: Path, prompts_json: Path, out: Path, n_new: int,
               extra: list[str] | None = None, regenerate: bool = False, expect: dict | None = None,
               timeout: float | None = None) -> Path:
    """Run ``python -m reference.golden`` in a subprocess (its own process, its own environment).

    A crash or a hang (``timeout`` seconds) raises with the tail of the reference's stderr."""
    if out.exists() and not regenerate and expect is not None:
        try:
            meta = json.loads(out.with_suffix(".json").read_text())
            if all(meta.get(k) == v for k, v in expect.items()):
                return out
        except (OSError, json.JSONDecodeError):
            pass
    if not Path(python).exists() and "/" in python:
        raise RuntimeError(f"backend {backend}: interpreter {python} not found (for mamba_ssm_ref_cpu run "
                           "`make install-ref`, which creates .venv-ref)")
    cmd = [python, "-m", "reference.golden", "--backend", backend, "--model", str(model_dir),
           "--prompts", str(prompts_json), "--out", str(out), "--n-new", str(n_new), *(extra or [])]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if "--threads" in (extra or []):  # also numpy's BLAS (the Triton interpreter's tl.dot) and OpenMP
        n = extra[extra.index("--threads") + 1]
        env.update({"OMP_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n, "MKL_NUM_THREADS": n})
    t0 = time.time()
    print(f"[parity] running {' '.join(cmd)}", flush=True)
    # stderr (progress, errors) is echoed live and its tail kept; stdout (the output path) is captured
    r = run_supervised(cmd, cwd=REPO, env=env, timeout=timeout)
    if r.timed_out or r.returncode != 0:
        why = f"timed out after {timeout} s and was killed" if r.timed_out else f"failed (exit {r.returncode})"
        tail = "\n".join(r.stderr_tail.strip().splitlines()[-15:])
        raise RuntimeError(f"reference backend {backend} {why}: {' '.join(cmd)}\n--- its stderr ended with:\n{tail}")
    # stamp the expectations so a later run can reuse the file
    meta = json.loads(out.with_suffix(".json").read_text())
    meta.update(expect or {})
    meta["wall_seconds_subprocess"] = round(time.time() - t0, 2)
    atomic_write_json(out.with_suffix(".json"), meta, indent=2)
    return out


# ------------------------------------------------------------------------------ JAX side
def load_jax_model(model_dir: Path, dtype: str, precision: str, plant_bug: str | None):
    from mamba2_jax.checkpoint import model_from_state_dict, read_state_dict

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

    def run(self, input_ids: list[int], n_new: int) -> dict[str, np.ndarray]:
        from mamba2_jax.generate import stepwise_greedy

        r = stepwise_greedy(self.model, input_ids, n_new, mask_padded_vocab=False)
        sl = r["step_logits"]
        top2 = -np.sort(-sl, axis=-1)[:, :2]
        return {"hidden": r["hidden"], "logits": r["logits"], "tokens": r["tokens"],
                "step_logits": sl, "margin": top2[:, 0] - top2[:, 1], "absmax": np.abs(sl).max(-1)}


# ------------------------------------------------------------------------------ comparison
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


# ------------------------------------------------------------------------------ driver
def run_parity(cfg) -> dict[str, Any]:
    import jax

    from mamba2_jax.eval.provenance import provenance

    jax.config.update("jax_default_matmul_precision", cfg.jax.matmul_precision)
    t_start = time.time()
    work = _abs(cfg.paths.work_dir)
    results_dir = _abs(cfg.paths.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    prompts_doc = tokenize_prompts(_abs(cfg.prompts_file), str(cfg.tokenizer), work / "prompts_tokens.json",
                                   cfg.get("max_prompts"))
    prompts_json = work / "prompts_tokens.json"
    models = list(cfg.models)
    for opt in cfg.get("optional_models") or []:
        path = _abs(opt if isinstance(opt, str) else opt["path"])
        if path.is_dir() and (path / "config.json").exists():
            models.append(str(opt) if isinstance(opt, str) else opt)
    tol = {"max_rel": float(cfg.tolerance.max_rel), "margin_rel": float(cfg.tolerance.margin_rel)}
    prov = provenance()
    rows, reports = [], []
    for spec in models:
        tag = model_tag(spec)
        model_dir, desc = ensure_checkpoint(spec, work)
        fp = checkpoint_fingerprint(model_dir)
        mprompts, mprompts_json = model_prompts(prompts_doc, spec, prompts_json)
        n_new = int(spec.get("n_new") or cfg.n_new) if not isinstance(spec, str) else int(cfg.n_new)
        goldens = {}
        for backend in cfg.backends:
            extra = [] if backend == "mamba_ssm_triton" or not cfg.get("ref_threads") else \
                ["--threads", str(int(cfg.ref_threads))]
            py = backend_python(cfg, backend)
            if backend == "mamba_ssm_triton":
                device = triton_device(cfg, py)
                if not backend_runs(cfg, backend, tag, device):
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
            goldens[backend] = run_golden(backend, py, model_dir, mprompts_json, out,
                                          n_new, extra, bool(cfg.regenerate_golden), expect,
                                          timeout=cfg.get("reference_timeout_s"))
            print(f"[parity] {tag}: golden {backend} ready ({time.time() - t0:.1f}s)", flush=True)
        spread = reference_spread(goldens)
        t0 = time.time()
        model, jmeta = load_jax_model(model_dir, cfg.jax.dtype, cfg.jax.matmul_precision, cfg.get("plant_bug"))
        runner = JaxRunner(model)
        jax_results = []
        for p in mprompts["prompts"]:
            r = runner.run(p["input_ids"], n_new)
            r["input_ids"] = np.asarray(p["input_ids"], np.int32)
            jax_results.append(r)
        t_jax = time.time() - t0
        print(f"[parity] {tag}: JAX run {t_jax:.1f}s", flush=True)
        for backend, golden in goldens.items():
            rep = compare_golden(jax_results, golden, tol)
            rep.update({
                "model": tag, "model_dir": str(model_dir), "checkpoint": desc, "checkpoint_fingerprint": fp,
                "config": {k: getattr(model.cfg, k) for k in ("d_model", "n_layer", "ngroups", "d_state", "headdim",
                                                              "chunk_size", "nheads", "vocab_size")},
                "jax": jmeta, "jax_seconds": round(t_jax, 2), "tolerance": tol, "paper_tolerances": paper_tolerances(),
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
            print(f"[parity] {tag} vs {backend}: hidden max_rel {rep['hidden_worst']['max_rel']:.2e} "
                  f"({rep['hidden_worst']['ulps']:.1f} ulp), logits max_rel {rep['logits_worst']['max_rel']:.2e}, "
                  f"greedy {g['tokens_matching_total']}/{g['tokens_total']} "
                  f"({g['identical_64_of_64']}/{g['prompts']} identical, {g['divergences_below_noise_floor']} below "
                  f"noise floor) -> {'PASS' if rep['pass'] else 'FAIL'}", flush=True)
    csv_name = f"summary__{cfg.label}" + (f"__bug-{cfg.plant_bug}" if cfg.get("plant_bug") else "") + ".csv"
    write_csv(results_dir / csv_name, rows)
    write_markdown(results_dir / csv_name.replace(".csv", ".md"), reports, prov, str(cfg.label))
    total = time.time() - t_start
    print(f"[parity] wrote {results_dir / csv_name} ({len(rows)} rows) in {total:.0f}s", flush=True)
    return {"reports": reports, "rows": rows, "pass": all(r["pass"] for r in reports), "seconds": total}


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


def write_markdown(path: Path, reports: list[dict[str, Any]], prov: dict[str, Any], label: str) -> None:
    """A human-readable table of the run (same numbers as the CSV/JSON), with the paper's tolerances."""
    pk = prov["packages"]
    lines = [f"# Parity results: {label}", "",
             f"JAX {pk.get('jax')} / flax {pk.get('flax')} on {prov['jax'].get('backend')} ({prov.get('cpu_model')}), "
             f"fp32 params, matmul precision {prov['jax'].get('default_matmul_precision')}; git {prov['git']['sha']}"
             f"{' (dirty tree)' if prov['git']['dirty'] else ''}; {prov['date_utc']}.", "",
             "max_rel = max|jax-ref| / max|ref| per tensor (worst over prompts and layers); "
             "ulps = max|jax-ref| in units "
             "of the fp32 spacing at max|ref|; decode = JAX step logits at the reference's top-8 ids, relative to "
             "max|logit|, over steps with identical context.", "",
             "| model | reference | hidden max_rel | hidden ulps | logits max_rel | logits ulps | decode max_rel | "
             "greedy identical | tokens | divergences (below noise floor / unexplained) | ref s/prefill token | "
             "ref s/decode step | pass |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in reports:
        g = r["greedy_summary"]
        dec = r["decode_topk_max_rel"]
        tc = _timing_cols(r["reference"].get("timing"))
        dev = r["reference"].get("device")
        lines.append(
            f"| {r['model']} ({r['checkpoint'].get('kind')}, stored {r['jax']['stored_dtype']}) | "
            f"{r['reference']['backend']}{f' ({dev})' if dev and dev != 'cpu' else ''} | "
            f"{r['hidden_worst']['max_rel']:.2e} | "
            f"{r['hidden_worst']['ulps']:.1f} | {r['logits_worst']['max_rel']:.2e} | {r['logits_worst']['ulps']:.1f} | "
            f"{'-' if dec is None else f'{dec:.2e}'} | {g['identical_64_of_64']}/{g['prompts']} | "
            f"{g['tokens_matching_total']}/{g['tokens_total']} | {g['divergences_below_noise_floor']} / "
            f"{len(g['divergences_unexplained'])} | {tc['ref_prefill_s_per_token'] or '-'} | "
            f"{tc['ref_decode_s_per_step'] or '-'} | {'PASS' if r['pass'] else 'FAIL'} |")
    if reports:
        r, pt = reports[0], reports[0]["paper_tolerances"]
        lines += ["", f"Targets: max_rel <= {r['tolerance']['max_rel']:g} on every layer and the logits; greedy "
                  f"{r['n_new']}/{r['n_new']} on every prompt, or each divergence at a reference margin < "
                  f"{r['tolerance']['margin_rel']:g} x max|logit|.",
                  f"Paper ({pt['source']}): hidden states {pt['hidden_states']}; greedy "
                  f"{pt['greedy']}; perplexity {pt['perplexity']}.", "",
                  "Reference spread (the references against each other: the fp32 noise scale):", ""]
        seen = set()
        for r in reports:
            for pair, v in (r.get("reference_spread") or {}).items():
                if (r["model"], pair) in seen:
                    continue
                seen.add((r["model"], pair))
                lines.append(f"- {r['model']}, {pair}: hidden max_rel {v['hidden']['max_rel']:.2e} "
                             f"({v['hidden']['ulps']:.1f} ulp), logits max_rel {v['logits']['max_rel']:.2e}, "
                             f"greedy identical {v['greedy_identical_prompts']}/{v['prompts']}")
        lines += ["", "Per-layer worst max_rel (hidden states):", ""]
        for r in reports:
            lines.append(f"- {r['model']} vs {r['reference']['backend']}: "
                         + " ".join(f"{e['max_rel']:.1e}" for e in r["hidden_per_layer"]))
    atomic_write_text(path, "\n".join(lines) + "\n")
