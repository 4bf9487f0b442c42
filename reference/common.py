"""Shared pieces of the reference runners: checkpoint reading, prompts, golden files, provenance.

Nothing here imports JAX or ``mamba2_jax``: the runners live in their own environments.

Golden file layout (``OUT.npz`` + ``OUT.json``, the JSON also embedded as ``meta_json``)::

    p{i}.input_ids       (T,) int32           the prompt
    p{i}.hidden          (n_layer, T, d) f32  residual stream after each block (prefill)
    p{i}.logits_pos      (K,) int32           prompt positions whose logits are stored
    p{i}.logits          (K, V) f32           final logits at those positions
    p{i}.greedy_tokens   (N,) int32           greedy continuation (token j is argmax of step j's logits)
    p{i}.greedy_margin   (N,) f32             top-1 minus top-2 logit at each step
    p{i}.greedy_absmax   (N,) f32             max |logit| at each step (the fp32 value scale)
    p{i}.greedy_top_ids  (N, k) int32         top-k ids at each step
    p{i}.greedy_top_vals (N, k) f32           their logits

Step 0 of the greedy run uses the prefill logits at the last prompt position; steps 1..N-1 use
the backend's recurrent decode path.
"""

from __future__ import annotations

import json
import math
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BACKENDS = ("mamba_ssm_ref_cpu", "transformers", "mamba_ssm_triton", "llama_cpp")
TOPK = 8


class ReferenceError_(RuntimeError):
    """A reference run that cannot proceed (bad arguments, missing CUDA, unreadable checkpoint)."""


# ------------------------------------------------------------------------------ checkpoints
def _decode_inf(v):
    if isinstance(v, dict) and "__float__" in v:
        return float(v["__float__"])
    if isinstance(v, (list, tuple)):
        return [_decode_inf(x) for x in v]
    return v


def read_config(model_dir: str | Path) -> dict[str, Any]:
    """The mamba_ssm (state-spaces) config.json as a dict, with the Mamba2 defaults filled in."""
    model_dir = Path(model_dir)
    p = model_dir / "config.json"
    if not p.is_file():
        raise ReferenceError_(f"{model_dir}: no config.json")
    raw = json.loads(p.read_text())
    if "d_model" not in raw:
        raise ReferenceError_(f"{p}: not a state-spaces (mamba_ssm) config; the ref backends read that layout "
                              "(convert HF checkpoints with mamba2_jax.checkpoint.convert(..., fmt='state-spaces'))")
    ssm = dict(raw.get("ssm_cfg") or {})
    if ssm.get("layer", "Mamba2") != "Mamba2":
        raise ReferenceError_(f"{p}: ssm_cfg.layer={ssm.get('layer')!r}, only Mamba2 is supported")
    defaults = dict(d_state=128, d_conv=4, expand=2, headdim=64, d_ssm=None, ngroups=1, chunk_size=256,
                    dt_limit=(0.0, math.inf), D_has_hdim=False, rmsnorm=True, norm_before_gate=False,
                    bias=False, conv_bias=True)
    for k, v in defaults.items():
        ssm.setdefault(k, v)
    ssm["dt_limit"] = tuple(float(x) for x in _decode_inf(ssm["dt_limit"]))
    cfg = {
        "d_model": raw["d_model"], "n_layer": raw["n_layer"], "vocab_size": raw["vocab_size"],
        "d_intermediate": raw.get("d_intermediate", 0),
        "pad_vocab_size_multiple": raw.get("pad_vocab_size_multiple", 8),
        "tie_embeddings": raw.get("tie_embeddings", True), "residual_in_fp32": raw.get("residual_in_fp32", True),
        "rms_norm": raw.get("rms_norm", True), "norm_epsilon": raw.get("norm_epsilon", 1e-5),
        "attn_layer_idx": raw.get("attn_layer_idx") or [], "ssm_cfg": ssm, "raw": raw,
    }
    if cfg["d_intermediate"] or cfg["attn_layer_idx"] or not cfg["rms_norm"]:
        raise ReferenceError_(f"{p}: only pure Mamba-2 stacks (d_intermediate=0, no attention, RMSNorm) are supported")
    m = cfg["pad_vocab_size_multiple"]
    v = cfg["vocab_size"]
    cfg["padded_vocab_size"] = v + (m - v % m) % m if m > 1 else v
    return cfg


def read_weights(model_dir: str | Path, dtype="float32") -> tuple[dict[str, Any], str]:
    """→ (state-spaces-named torch tensors cast to ``dtype``, the stored dtype).

    Pickles are read with ``torch.load(weights_only=True)``; safetensors files too."""
    import torch

    model_dir = Path(model_dir)
    if (model_dir / "model.safetensors").exists():
        from safetensors.torch import load_file

        sd = load_file(str(model_dir / "model.safetensors"))
    elif (model_dir / "pytorch_model.bin").exists():
        sd = torch.load(model_dir / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise ReferenceError_(f"{model_dir}: no pytorch_model.bin or model.safetensors")
    sd = {("backbone.embedding.weight" if k == "backbone.embeddings.weight" else k): v for k, v in sd.items()}
    if "lm_head.weight" not in sd:
        sd["lm_head.weight"] = sd["backbone.embedding.weight"]
    tdt = getattr(torch, dtype)
    stored = str(sd["backbone.embedding.weight"].dtype).replace("torch.", "")
    return {k: v.to(tdt) for k, v in sd.items()}, stored


# ------------------------------------------------------------------------------ prompts
def load_prompts(path: str | Path) -> list[dict[str, Any]]:
    """A prompts file: JSON list (or {"prompts": [...]}) of {"id": str, "input_ids": [int, ...]}."""
    d = json.loads(Path(path).read_text())
    prompts = d["prompts"] if isinstance(d, dict) else d
    out = []
    for i, p in enumerate(prompts):
        ids = p.get("input_ids") if isinstance(p, dict) else p
        if not ids:
            raise ReferenceError_(f"{path}: prompt {i} has no input_ids")
        out.append({"id": (p.get("id") if isinstance(p, dict) else None) or f"p{i}",
                    "input_ids": [int(t) for t in ids]})
    return out


# ------------------------------------------------------------------------------ greedy bookkeeping
def step_record(logits_row) -> dict[str, Any]:
    """Top-k, margin and value scale of one step's logits (a 1-D float32 torch tensor or array)."""
    x = np.asarray(logits_row.detach().cpu().float().numpy() if hasattr(logits_row, "detach") else logits_row,
                   dtype=np.float32)
    k = min(TOPK, x.shape[-1])
    idx = np.argpartition(-x, k - 1)[:k]
    idx = idx[np.argsort(-x[idx], kind="stable")]
    # ties: argmax semantics (first index) for the chosen token
    top1 = int(np.argmax(x))
    if idx[0] != top1:
        idx = np.concatenate([[top1], idx[idx != top1]])[:k]
    return {"token": top1, "margin": float(x[idx[0]] - x[idx[1]]) if k > 1 else float("inf"),
            "absmax": float(np.max(np.abs(x))), "top_ids": idx.astype(np.int32), "top_vals": x[idx]}


# ------------------------------------------------------------------------------ provenance
def torch_provenance(device: str, **extra: Any) -> dict[str, Any]:
    import torch

    # the project's own provenance helpers (NumPy/stdlib only: no JAX in this process)
    from mamba2_jax.eval.provenance import cpu_model, git_info, package_versions, utc_now

    info: dict[str, Any] = {
        "date_utc": utc_now(),
        "git": git_info(REPO),
        "python": sys.version.split()[0], "platform": platform.platform(), "cpu_model": cpu_model(),
        "executable": sys.executable,
        "packages": package_versions(("torch", "triton", "mamba-ssm", "causal-conv1d", "transformers",
                                      "einops", "numpy", "safetensors")),
        "device": device,
        "torch_num_threads": torch.get_num_threads(),
        "torch_float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["cuda_device_name"] = torch.cuda.get_device_name(0)
        info["cuda_capability"] = list(torch.cuda.get_device_capability(0))
        info["cuda_version"] = torch.version.cuda
        info["tf32"] = {"torch.backends.cuda.matmul.allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
                        "torch.backends.cudnn.allow_tf32": bool(torch.backends.cudnn.allow_tf32)}
    else:
        info["tf32"] = {"applicable": False, "note": "CPU: no TF32; fp32 matmuls are IEEE fp32"}
    info.update(extra)
    return info


def run_cli(args, body) -> int:
    """Run a reference entry point's ``body()`` and map failures to exit codes:
    2 for a ReferenceError_ (bad arguments or checkpoint), 3 for the Triton backend without CUDA."""
    import sys

    try:
        out = body()
    except ReferenceError_ as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        if args.backend == "mamba_ssm_triton" and "CUDA" in str(e):
            print(f"error: {e}", file=sys.stderr)
            return 3
        raise
    print(out)
    return 0
