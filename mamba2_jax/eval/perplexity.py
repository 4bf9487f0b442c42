"""WikiText-103 perplexity, JAX vs reference backends (``make perplexity``).

For every model × protocol: build the scoring windows once (``results/perplexity/windows/``),
score them with every backend (JAX fp32/bf16 in process through :mod:`.scorer`, references
through ``python -m reference.score`` via :mod:`.refproc`), and write
``results/perplexity/<model>/<protocol>[...].json`` (+ per-window log-likelihoods
``.scores.npz``).  The summary table is rendered once, by ``paper/make_tables.py``
(``paper/tables/perplexity.{md,tex}``).  ``mode=timing`` times the 130m shape on a few windows and
extrapolates to the full test set.  Protocol rules: :mod:`.windows`.  The Hydra entry point is
``experiments/perplexity.py``; :func:`main` is the experiment.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from ..fileio import atomic_savez, sha256_files, to_jsonable
from ..paths import checkout_root, repo_path, require_data_dir
from . import refproc
from . import windows as ppl
from .data import check_rows, count_bytes, count_words, load_wikitext_rows, wikitext_detokenizer
from .models import REAL_MODELS, SYNTHETIC_LABEL, model_fingerprint, policy_record, resolve_model
from .provenance import provenance
from .results import write_document
from .scorer import JaxScorer
from .windows import primary_metric

# reference scorers (``python -m reference.score``) run from the checkout; relative paths in the
# configuration are taken relative to it
REPO = checkout_root() or Path.cwd()

# JAX backend → (parameter dtype, SSM state storage dtype).  The state dtype reaches a score where the
# state is stored: between prefill calls (``jax.state_chunk``: a window scored as calls of that many
# tokens, each from the cache the previous one returned, as a serving engine's chunked prefill runs).
JAX_BACKENDS = {"jax_fp32": ("float32", "float32"), "jax_bf16": ("bfloat16", "float32"),
                "jax_fp32_state_bf16": ("float32", "bfloat16"), "jax_fp32_state_fp16": ("float32", "float16")}


def log(msg: str) -> None:
    print(f"[perplexity] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ paths / provenance


def data_dir(cfg) -> Path:
    return require_data_dir(cfg.paths.data_dir)


# ------------------------------------------------------------------------------ models


def model_from_group(m) -> str:
    """An entry of the shared Hydra group mamba2_jax/eval/conf/model/ → a model name for resolve_model."""
    if isinstance(m, str):
        return m
    if m.get("checkpoint"):
        return str(m.checkpoint)
    if m.get("hf_id"):
        short = str(m.hf_id).removeprefix("state-spaces/")
        return short if short in REAL_MODELS else str(m.hf_id)
    raise ValueError(f"model group entry {m.get('name')!r} has neither `checkpoint` nor `hf_id`: it is a random-weight "
                     f"test shape, not a model for the GPT-NeoX vocabulary; use models=[synthetic] instead")


# ------------------------------------------------------------------------------ protocols
def build_windows(protocol: str, rows, tok, cfg) -> tuple[ppl.Windows, dict[str, Any]]:
    limit = cfg.limit
    if protocol == "lm_eval_rolling":
        p = cfg.lm_eval_rolling
        docs = rows.documents()
        n_all = len(docs)
        if limit is not None:
            docs = docs[: int(limit)]
        texts = [wikitext_detokenizer(d) for d in docs]
        toks = tok.encode_batch(texts)
        w = ppl.lm_eval_windows(toks, int(p.max_length), int(p.prefix_token))
        info = {"n_docs_total": n_all, "n_docs": len(docs), "doc_words": [count_words(d) for d in docs],
                "doc_bytes": [count_bytes(d) for d in docs], "doc_tokens": [len(t) for t in toks]}
        scope = "full test set" if limit is None or int(limit) >= n_all else f"first {len(docs)} of {n_all} documents"
    elif protocol == "strided":
        p = cfg.strided
        text = "\n\n".join(rows.rows)
        toks = tok.encode(text)
        w = ppl.strided_windows(toks, int(p.max_length), int(p.stride))
        n_all = len(w)
        if limit is not None and int(limit) < n_all:
            w = w.subset(np.arange(int(limit)))
        info = {"n_windows_total": n_all, "n_stream_tokens": len(toks)}
        scope = "full test set" if len(w) == n_all else f"first {len(w)} of {n_all} windows"
    else:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {ppl.PROTOCOLS}")
    w.meta.update({"tokenizer": tok.source, "data_source": rows.source, "split": rows.split, "scope": scope,
                   "lm_eval_version": ppl.LM_EVAL_VERSION if protocol == "lm_eval_rolling" else None})
    info["scope"] = scope
    return w, info


# ------------------------------------------------------------------------------ one model × protocol
def _mesh(cfg):
    """The ("data", "model") mesh of ``mesh.data`` / ``mesh.model`` (None when both are unset)."""
    from mamba2_jax.sharding import make_mesh

    m = cfg.get("mesh")
    return make_mesh(OmegaConf.to_container(m, resolve=True)) if m is not None else None


def _primary() -> bool:
    """Only process 0 of a multi-process run writes files."""
    from mamba2_jax.sharding import is_primary

    return is_primary()


class JaxModels:
    """Loads each (model dir, dtype) once and keeps its scorer (compiled shapes are reused)."""

    def __init__(self, cfg):
        self.cfg = cfg
        self._scorers: dict[tuple[str, str], JaxScorer] = {}

    def scorer(self, model_dir: str, dtype: str, state_dtype: str = "float32") -> JaxScorer:
        key = (model_dir, dtype, state_dtype)
        if key not in self._scorers:
            from mamba2_jax.loading import load_pretrained

            if any(k[0] != model_dir for k in self._scorers):
                self._scorers.clear()  # one model (in its fp32 and bf16 copies) in memory at a time
            model = load_pretrained(model_dir, dtype=dtype, mesh=_mesh(self.cfg), state_dtype=state_dtype)
            j = self.cfg.jax
            sc = j.get("state_chunk")
            self._scorers[key] = JaxScorer(model, int(j.batch_size), int(j.bucket), int(j.logits_chunk),
                                           state_chunk=None if sc is None else int(sc))
        return self._scorers[key]


def evaluate_one(spec: dict[str, Any], protocol: str, windows: ppl.Windows, winfo: dict[str, Any],
                 windows_path: Path, cfg, jax_models: JaxModels) -> dict[str, Any]:
    work = repo_path(cfg.paths.work_dir) / "runs" / spec["label"] / f"{protocol}-{windows.sha256()[:12]}"
    per_window: dict[str, np.ndarray] = {}
    backends: dict[str, dict[str, Any]] = {}
    words = winfo.get("doc_words")
    nbytes = winfo.get("doc_bytes")
    for b in cfg.backends:
        t0 = time.perf_counter()
        try:
            if b in JAX_BACKENDS:
                dtype, state_dtype = JAX_BACKENDS[b]
                scorer = jax_models.scorer(spec["dir"], dtype, state_dtype)
                state = work / f"{b}.progress.npz" if cfg.resume else None
                fp = {"model": model_fingerprint(Path(spec["dir"])), "dtype": dtype, "state_dtype": state_dtype,
                      "backend": b, "bucket": scorer.bucket, "batch_size": scorer.batch_size,
                      "state_chunk": scorer.state_chunk}
                sc = scorer.score(windows, state_path=state, fingerprint=fp, progress=bool(cfg.progress),
                                  desc=f"{spec['label']}/{protocol}/{b}",
                                  checkpoint_every_s=float(cfg.jax.checkpoint_every_s))
                sc.info["policy"] = policy_record(scorer.model)
            elif b in refproc.REFERENCE_BACKENDS:
                if b == "llama_cpp":  # built by make llama-cpp; unavailable (with the reason) otherwise
                    from .llama_cpp import unavailable

                    why = unavailable()
                    if why:
                        raise refproc.ReferenceUnavailable(why)
                env = dict(os.environ)
                extra_args = []
                if cfg.reference.threads:
                    extra_args = ["--threads", str(cfg.reference.threads)]
                if b == "mamba_ssm_triton":
                    # on CPU the Triton interpreter's tl.dot is a small numpy matmul: one BLAS thread is
                    # ~2x faster than OpenBLAS's default on a shared 2-core machine (no effect on CUDA)
                    n = str(cfg.reference.threads or 1)
                    env.update({k: env.get(k, n) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")})
                sc = _run_reference(b, spec, windows, windows_path, work, cfg, env, extra_args)
            else:
                known = " | ".join((*JAX_BACKENDS, *refproc.REFERENCE_BACKENDS))
                raise ValueError(f"unknown backend {b!r} ({known})")
            m = ppl.aggregate(windows, sc, words, nbytes)
            backends[b] = {"status": "ok", **m, "seconds": time.perf_counter() - t0, "run": to_jsonable(sc.info)}
            per_window[b] = sc.loglik
            log(f"{spec['label']}/{protocol}/{b}: " + _headline(protocol, m))
        except refproc.ReferenceUnavailable as e:
            backends[b] = {"status": "unavailable", "error": str(e)}
            log(f"{spec['label']}/{protocol}/{b}: UNAVAILABLE: {e}")
        except Exception as e:
            backends[b] = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
            log(f"{spec['label']}/{protocol}/{b}: FAILED: {type(e).__name__}: {e}")
            if not isinstance(e, refproc.ReferenceFailed):
                traceback.print_exc()
    return {"backends": backends, "per_window": per_window,
            "comparison": compare(backends, protocol, cfg.reference_backend, float(cfg.tolerance_rel))}


def _run_reference(b, spec, windows, windows_path, work, cfg, env, extra_args) -> ppl.WindowScores:
    py = refproc.reference_python(cfg.reference.python, b)
    return refproc.run_reference(b, spec["dir"], windows_path, work / f"{b}.out.npz", windows,
                                 module=cfg.reference.module, python=py, env=env,
                             timeout=cfg.reference.timeout_s, log_path=work / f"{b}.log", extra_args=extra_args,
                             reuse=bool(cfg.resume))


def _headline(protocol: str, m: dict[str, Any]) -> str:
    if protocol == "lm_eval_rolling":
        return (f"word ppl {m['word_perplexity']:.6f}  token ppl {m['token_perplexity']:.6f}  "
                f"bpb {m['bits_per_byte']:.6f}  ({m['n_tokens']} tokens, {m['n_words']} words)")
    return f"token ppl {m['token_perplexity']:.6f}  ({m['n_tokens']} tokens)"


def compare(backends: dict[str, dict[str, Any]], protocol: str, ref_name: str, tol: float) -> dict[str, Any]:
    metrics = ["word_perplexity", "byte_perplexity", "token_perplexity"] if protocol == "lm_eval_rolling" \
        else ["token_perplexity"]
    ref = backends.get(ref_name, {})
    out: dict[str, Any] = {"reference_backend": ref_name, "reference_status": ref.get("status", "not run"),
                           "tolerance_rel": tol, "primary_metric": primary_metric(protocol), "vs_reference": {}}
    for b, r in backends.items():
        if r.get("status") != "ok":
            continue
        if ref.get("status") == "ok" and b != ref_name:
            d = {m: {"delta": r[m] - ref[m], "rel": ppl.relative_diff(r[m], ref[m])} for m in metrics}
            d["delta_sum_loglik"] = r["sum_loglik"] - ref["sum_loglik"]
            if b == "jax_fp32":
                d["within_tolerance"] = all(abs(d[m]["rel"]) <= tol for m in metrics)
            out["vs_reference"][b] = d
    f32, b16 = backends.get("jax_fp32", {}), backends.get("jax_bf16", {})
    if f32.get("status") == "ok" and b16.get("status") == "ok":
        out["bf16_vs_fp32"] = {m: {"delta": b16[m] - f32[m], "rel": ppl.relative_diff(b16[m], f32[m])} for m in metrics}
    return out


# ------------------------------------------------------------------------------ result records


def table_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        proto = r["protocol"]
        metric = primary_metric(proto)
        bk = r["backends"]
        ref_name = r["comparison"]["reference_backend"]
        def get(b, bk=bk, metric=metric):
            return bk.get(b, {}).get(metric) if bk.get(b, {}).get("status") == "ok" else None
        cmp = r["comparison"]["vs_reference"].get("jax_fp32", {}).get(metric, {})
        gap = r["comparison"].get("bf16_vs_fp32", {}).get(metric, {})
        any_ok = next((v for v in bk.values() if v.get("status") == "ok"), {})
        rows.append({
            "model": r["model"]["label"], "weights": r["model"]["weights"], "synthetic": r["model"].get("synthetic"),
            "protocol": proto, "metric": metric.replace("_perplexity", " ppl"), "scope": r["scope"],
            "jax_fp32": get("jax_fp32"), "jax_bf16": get("jax_bf16"), "reference": get(ref_name),
            "reference_name": ref_name, "transformers": get("transformers") if ref_name != "transformers" else None,
            "delta": cmp.get("delta"), "rel": cmp.get("rel"), "bf16_gap_rel": gap.get("rel"),
            "within_tol": r["comparison"]["vs_reference"].get("jax_fp32", {}).get("within_tolerance"),
            "tol": r["comparison"].get("tolerance_rel"),
            "tokens": any_ok.get("n_tokens"), "words": any_ok.get("n_words"),
        })
    return rows


# ------------------------------------------------------------------------------ main modes
def evaluate(cfg) -> list[dict[str, Any]]:
    from mamba2_jax.tokenizer import load_tokenizer

    dd = data_dir(cfg)
    os.environ.setdefault("MAMBA2_JAX_DATA", str(dd))
    local = cfg.data.local_dir or (dd / "wikitext-103-raw-v1")
    rows = load_wikitext_rows(cfg.data.split, cfg.data.source, repo_path(local), cfg.data.hub_path, cfg.data.hub_name)
    problems = check_rows(rows.summary, cfg.data.split)
    if problems:
        log("WARNING: WikiText rows differ from the known facts: " + "; ".join(problems))
    tok = load_tokenizer(repo_path(cfg.tokenizer) if cfg.tokenizer else None)
    models = [model_from_group(cfg.model)] if cfg.get("model") else list(cfg.models)
    protocols = [cfg.protocol] if cfg.protocol else list(cfg.protocols)
    results_dir = repo_path(cfg.paths.results_dir)
    jm = JaxModels(cfg)
    prov = provenance()
    from mamba2_jax.sharding import describe_mesh

    prov["mesh"] = describe_mesh(_mesh(cfg))
    out = []
    failures = []
    windows_cache: dict[str, tuple[ppl.Windows, dict, Path]] = {}
    for name in models:
        try:
            spec = resolve_model(str(name), cfg)
        except Exception as e:
            log(f"model {name}: cannot be loaded: {type(e).__name__}: {e}")
            failures.append(str(name))
            continue
        spec["weights_files"] = sha256_files(Path(spec["dir"]))
        for protocol in protocols:
            if protocol not in windows_cache:
                w, info = build_windows(protocol, rows, tok, cfg)
                wdir = results_dir / "windows"
                suffix = "" if info["scope"] == "full test set" else f"-limit{cfg.limit}"
                wpath = wdir / f"{protocol}{suffix}-{w.sha256()[:12]}.npz"
                if not wpath.exists():
                    w.save(wpath)
                windows_cache[protocol] = (w, info, wpath)
            w, info, wpath = windows_cache[protocol]
            log(f"{spec['label']} / {protocol}: {len(w)} windows, {w.total_targets} target tokens ({info['scope']})")
            r = evaluate_one(spec, protocol, w, info, wpath, cfg, jm)
            res = {
                "kind": "perplexity", "model": spec, "protocol": protocol, "scope": info["scope"],
                "limit": cfg.limit,
                "protocol_params": OmegaConf.to_container(cfg[protocol], resolve=True),
                "windows": {"path": str(wpath.relative_to(REPO)) if wpath.is_relative_to(REPO) else str(wpath),
                            "sha256": w.sha256(), "n_windows": len(w), "width": w.width,
                            "n_targets": w.total_targets,
                            **{k: v for k, v in info.items() if not k.startswith("doc_")}},
                "data": {"source": rows.source, "split": rows.split, **rows.summary,
                         "matches_known_rows": not problems},
                "tokenizer": tok.source,
                "backends": r["backends"], "comparison": r["comparison"],
                "config": OmegaConf.to_container(cfg, resolve=True),
                "provenance": prov,
            }
            if protocol == "lm_eval_rolling":
                res["semantics"] = (f"lm-evaluation-harness v{ppl.LM_EVAL_VERSION} wikitext "
                                    "(see mamba2_jax/eval/windows.py)")
            else:
                res["semantics"] = "HF perplexity guide, text='\\n\\n'.join(rows) (see mamba2_jax/eval/windows.py)"
            tag = f"-{cfg.tag}" if cfg.tag else ""
            suffix = "" if info["scope"] == "full test set" else f"-limit{cfg.limit}"
            stem = results_dir / spec["label"] / f"{protocol}{suffix}{tag}"
            stem.parent.mkdir(parents=True, exist_ok=True)
            if _primary():
                write_document(stem.with_suffix(".json"), res, experiment="perplexity",
                               run=f"{spec['label']}/{stem.name}", records=table_rows([res]))
            if r["per_window"] and _primary():
                atomic_savez(stem.with_suffix(".scores.npz"), compress=True, windows_sha256=np.array(w.sha256()),
                             **{f"loglik_{k}": v for k, v in r["per_window"].items()})
            log(f"wrote {stem.with_suffix('.json')}")
            out.append(res)
            bad_ref = [b for b, v in r["backends"].items() if v["status"] != "ok" and b in refproc.REFERENCE_BACKENDS]
            bad_jax = [b for b, v in r["backends"].items() if v["status"] != "ok" and b in JAX_BACKENDS]
            if bad_jax or (cfg.require_reference and bad_ref):
                failures.append(f"{spec['label']}/{protocol}: {bad_jax + bad_ref}")
    if _primary():
        log(f"results in {results_dir}; the summary table is paper/tables/perplexity.md (`make paper-tables`)")
    if failures:
        raise SystemExit(f"perplexity: failures: {failures}")
    return out


def timing(cfg) -> dict[str, Any]:
    """Time the scorer on a few full-length windows of a preset shape and extrapolate."""
    import jax

    from mamba2_jax.checkpoint import init_state_dict
    from mamba2_jax.config import get_preset
    from mamba2_jax.loading import model_from_state_dict
    from mamba2_jax.tokenizer import load_tokenizer

    t = cfg.timing
    dd = data_dir(cfg)
    os.environ.setdefault("MAMBA2_JAX_DATA", str(dd))
    local = cfg.data.local_dir or (dd / "wikitext-103-raw-v1")
    rows = load_wikitext_rows(cfg.data.split, cfg.data.source, repo_path(local), cfg.data.hub_path, cfg.data.hub_name)
    tok = load_tokenizer(repo_path(cfg.tokenizer) if cfg.tokenizer else None)
    full_cfg = OmegaConf.merge(cfg, {"limit": None})
    windows = {p: build_windows(p, rows, tok, full_cfg)[0] for p in ppl.PROTOCOLS}
    mcfg = get_preset(t.preset)
    t0 = time.perf_counter()
    model = model_from_state_dict(mcfg, init_state_dict(mcfg, seed=0), dtype=t.dtype)
    t_load = time.perf_counter() - t0
    j = cfg.jax
    scorer = JaxScorer(model, int(t.batch_size), int(j.bucket), int(j.logits_chunk))
    w = windows[t.protocol]
    full = np.flatnonzero(w.lengths == w.lengths.max())
    B = scorer.batch_size
    sel = full[: B * (1 + int(t.n_windows))]
    first = sel[:B]
    t0 = time.perf_counter()
    scorer.token_logprobs(w.input_ids[first], w.lengths[first], w.score_from[first])
    t_first = time.perf_counter() - t0
    timed = sel[B:]
    load_before = list(os.getloadavg())
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(0, len(timed), B):
        bt = timed[i: i + B]
        scorer.token_logprobs(w.input_ids[bt], w.lengths[bt], w.score_from[bt])
    t_run, c_run = time.perf_counter() - t0, time.process_time() - c0
    per_window = t_run / len(timed)
    bucket = int(j.bucket)
    res: dict[str, Any] = {
        "kind": "perplexity_timing", "preset": t.preset, "dtype": t.dtype, "weights": SYNTHETIC_LABEL,
        "batch_size": B, "bucket": bucket, "timed_windows": int(len(timed)), "window_tokens": int(w.lengths.max()),
        "seconds_model_init": t_load, "seconds_first_batch_compile_and_run": t_first,
        "seconds_per_full_window": per_window,
        "cpu_seconds_per_full_window": c_run / len(timed),
        "load_average_1_5_15min_before": load_before, "cpu_count": os.cpu_count(),
        "tokens_per_second": float(w.n_targets[timed].sum()) / t_run,
        "note": ("EXTRAPOLATED: measured wall seconds per full-length window (after compile) times the number "
                 "of windows, with shorter windows scaled by their bucketed length; compile time per extra bucket "
                 "not included. Synthetic (random) weights of the preset's shape: runtime does not depend on the "
                 "values. The CPU may be shared with other jobs: see the load averages and the process CPU "
                 "seconds per window."),
        "extrapolated": {},
        "provenance": provenance(),
    }
    for p, wp in windows.items():
        in_len = np.maximum(wp.lengths - 1, 1)
        bucketed = -(-in_len // bucket) * bucket
        eq_full = float(np.sum(bucketed) / (w.lengths.max() - 1))
        cpu_bound = c_run / len(timed) / (os.cpu_count() or 1)
        res["extrapolated"][p] = {"n_windows": len(wp), "n_targets": wp.total_targets,
                                  "full_window_equivalents": eq_full,
                                  "seconds": eq_full * per_window, "hours": eq_full * per_window / 3600,
                                  # if this process had every core to itself at 100% efficiency (lower bound)
                                  "uncontended_lower_bound_hours": eq_full * cpu_bound / 3600}
    res["devices"] = [str(d) for d in jax.devices()]
    res["load_average_1_5_15min_at_end"] = list(os.getloadavg())
    out = repo_path(cfg.paths.results_dir) / "timing" / f"{t.preset}-{t.dtype}.json"
    write_document(out, res, experiment="perplexity_timing", run=out.stem,
                   records=[{"protocol": k, **v} for k, v in res["extrapolated"].items()])
    log(f"{t.preset} {t.dtype}: {per_window:.2f} s wall ({c_run / len(timed):.2f} s CPU) per full window; "
        + ", ".join(f"{p}: {v['n_windows']} windows ≈ {v['hours']:.2f} h" for p, v in res["extrapolated"].items())
        + f"  → {out}")
    return res


def main(cfg: DictConfig) -> None:
    from ..sharding import initialize_distributed

    d = cfg.get("distributed") or {}
    initialize_distributed(d.get("coordinator_address"), d.get("num_processes"), d.get("process_id"))
    if cfg.mode == "timing":
        timing(cfg)
    elif cfg.mode == "evaluate":
        evaluate(cfg)
    else:
        raise SystemExit(f"unknown mode {cfg.mode!r} (evaluate | timing)")
