"""Analytic FLOP and byte counts for Mamba-2 inference (used for MFU and HBU).

Notation: b batch, L tokens, d = d_model, E = d_in_proj = 2·d_inner + 2·g·n + h, I = d_inner,
K = d_conv, Cd = conv_dim = d_ssm + 2·g·n, V = padded vocabulary, h heads, p headdim, n d_state,
g groups, q the chunk size the model scans with (``model.scan_chunk_size``: on CPU min(cfg.chunk_size, 64),
not the config's), c = ceil(L / q) chunks (the scan pads L up to c·q), N = n_layer.
A multiply-add counts as 2 FLOPs.  A prompt longer than the model's ``prefill_block`` and a multiple of
it runs as L / block scans of block tokens each (``model.prefill``), counted so.

Prefill FLOPs (what ``ssd_chunked`` and the mixer execute; per layer unless noted)::

    in_proj    2·b·L·d·E
    conv       2·b·L·Cd·K                      (depthwise causal conv)
    ssd_cb     2·b·c·g·q²·n                    (C·Bᵀ inside each chunk, once per group)
    ssd_diag   2·b·c·h·q²·p                    (masked (C·Bᵀ∘L) · x, full q×q blocks)
    ssd_states 2·b·c·h·q·p·n                   (chunk-end states B ⊗ x)
    ssd_inter  2·b·h·c'·k·p·n                  (inter-chunk recurrence: blocks of k = min(16, c) chunks,
                                               each one (k × k) matmul; c' = c rounded up to whole blocks)
    ssd_off    2·b·c·h·q·p·n                   (C · state entering the chunk)
    out_proj   2·b·L·I·d
    lm_head    2·b·L_out·d·V                   (once, not per layer; L_out = 1 with last_only)

The q×q blocks are counted in full (the causal mask is applied by multiplication, so the
upper triangle is computed) and the padded length c·q is used, i.e. this is the work the compiled
program does.  Element-wise work (norms, SiLU, softplus, exp of the segment sums, the mask, the
D skip) is not counted: MFU is a matmul-unit metric.

Decode FLOPs per token (per layer unless noted)::

    in_proj 2·d·E,  conv 2·Cd·K,  ssd_step 5·h·p·n (state update s·dA + (dt·x)⊗B: 3/element;
    readout s·C: 2/element),  out_proj 2·I·d,  lm_head 2·d·V (once)

Decode bytes per token (the minimum that must cross the memory bus, HBU numerator)::

    params  = every parameter once (matrices, norms, conv in the param dtype; A_log, dt_bias, D
              in float32; the tied embedding counted once, as the LM head reads all of it)
    state   = 2 × (N·b·h·p·n·state_itemsize  +  N·b·(K−1)·Cd·itemsize)   (SSM + conv state, read and
              written; the shapes are ``Mamba2Cache.shapes``, the SSM state float32 unless stored in 16 bits)
    total   = params + state

Logits (b·V·4 bytes written) and the embedding row gather are reported separately and not
included in ``total``.
"""

from __future__ import annotations

import math

from ..config import Mamba2Config
from ..params import fp32_params, num_params

__all__ = ["itemsize", "param_bytes", "state_bytes", "prefill_flops", "model_prefill_flops", "decode_flops",
           "decode_bytes", "decode_roofline", "batch_curve_roofline", "recompute_flops"]


def itemsize(dtype) -> int:
    import numpy as np

    if isinstance(dtype, str) and dtype in ("bfloat16", "float16"):
        return 2
    try:
        return np.dtype(dtype).itemsize
    except TypeError:
        import jax.numpy as jnp

        return jnp.dtype(dtype).itemsize


def param_bytes(cfg: Mamba2Config, dtype="float32") -> dict[str, int]:
    """Parameter bytes by group (tied head counted once)."""
    n_fp32 = fp32_params(cfg)
    n_total = num_params(cfg)
    emb = cfg.padded_vocab_size * cfg.d_model
    head = 0 if cfg.tie_embeddings else emb
    n_layer_other = n_total - emb - head - n_fp32
    it = itemsize(dtype)
    out = {"embedding": emb * it, "lm_head": head * it, "layers": n_layer_other * it, "ssm_fp32": n_fp32 * 4}
    out["total"] = sum(out.values())
    out["num_params"] = n_total
    return out


def state_bytes(cfg: Mamba2Config, batch: int = 1, dtype="float32", state_dtype="float32") -> dict[str, int]:
    """Bytes of the inference cache (one copy): SSM state (state dtype, float32 by default) and conv
    state (param dtype); the length counter is not counted.  Shapes and dtypes are the cache's own
    (``Mamba2Cache.nbytes``)."""
    from ..cache import Mamba2Cache

    nb = Mamba2Cache.nbytes(cfg, batch, dtype, state_dtype)
    return {"ssm": nb["ssm"], "conv": nb["conv"], "total": nb["ssm"] + nb["conv"]}


def _ssd_prefill(cfg: Mamba2Config, b: int, L: int, q: int) -> dict[str, int]:
    h, p, n, g = cfg.nheads, cfg.headdim, cfg.d_state, cfg.ngroups
    from ..ssd import INTER_CHUNK_BLOCK

    c = math.ceil(L / q)
    k = min(INTER_CHUNK_BLOCK, c)
    return {
        "ssd_cb": 2 * b * c * g * q * q * n,
        "ssd_diag": 2 * b * c * h * q * q * p,
        "ssd_states": 2 * b * c * h * q * p * n,
        "ssd_inter": 2 * b * h * (-(-c // k) * k) * k * p * n,
        "ssd_off": 2 * b * c * h * q * p * n,
    }


def prefill_flops(cfg: Mamba2Config, length: int, batch: int = 1, last_only: bool = True, *,
                  chunk_size: int | None = None, prefill_block: int | None = None) -> dict[str, int]:
    """FLOPs of one prefill of ``batch`` × ``length`` tokens (see module docstring), for a model that
    scans with ``chunk_size`` (default ``cfg.chunk_size``) and prefills in blocks of ``prefill_block``
    tokens (None: one pass).  :func:`model_prefill_flops` takes both from a model.

    Returns the per-term totals over all layers plus "matmul" (projections + LM head), "ssd",
    "conv" and "total"."""
    b, L, N = batch, length, cfg.n_layer
    q = int(chunk_size or cfg.chunk_size)
    blk = int(prefill_block) if prefill_block and L > prefill_block and L % prefill_block == 0 else L
    d, E, I, V = cfg.d_model, cfg.d_in_proj, cfg.d_inner, cfg.padded_vocab_size
    out = {
        "in_proj": N * 2 * b * L * d * E,
        "conv": N * 2 * b * L * cfg.conv_dim * cfg.d_conv,
        "out_proj": N * 2 * b * L * I * d,
        "lm_head": 2 * b * (1 if last_only else L) * d * V,
    }
    for k, v in _ssd_prefill(cfg, b, blk, q).items():
        out[k] = N * (L // blk) * v
    out["ssd"] = sum(v for k, v in out.items() if k.startswith("ssd_"))
    out["matmul"] = out["in_proj"] + out["out_proj"] + out["lm_head"]
    out["total"] = out["matmul"] + out["ssd"] + out["conv"]
    return out


def model_prefill_flops(model, length: int, batch: int = 1, last_only: bool = True) -> dict[str, int]:
    """:func:`prefill_flops` of the program ``model.prefill`` compiles: the model's own scan chunk size
    and prefill block."""
    return prefill_flops(model.cfg, length, batch, last_only, chunk_size=model.scan_chunk_size,
                         prefill_block=getattr(model, "prefill_block", None))


def decode_flops(cfg: Mamba2Config, batch: int = 1) -> dict[str, int]:
    """FLOPs of one cached decode step for ``batch`` sequences (one token each)."""
    b, N = batch, cfg.n_layer
    d, E, I, V = cfg.d_model, cfg.d_in_proj, cfg.d_inner, cfg.padded_vocab_size
    out = {
        "in_proj": N * 2 * b * d * E,
        "conv": N * 2 * b * cfg.conv_dim * cfg.d_conv,
        "ssd_step": N * 5 * b * cfg.nheads * cfg.headdim * cfg.d_state,
        "out_proj": N * 2 * b * I * d,
        "lm_head": 2 * b * d * V,
    }
    out["ssd"] = out["ssd_step"]
    out["matmul"] = out["in_proj"] + out["out_proj"] + out["lm_head"]
    out["total"] = out["matmul"] + out["ssd"] + out["conv"]
    return out


def decode_bytes(cfg: Mamba2Config, batch: int = 1, dtype="float32", state_dtype="float32") -> dict[str, int]:
    """Bytes that must move per decode step: params once + SSM/conv state read and written."""
    pb = param_bytes(cfg, dtype)
    sb = state_bytes(cfg, batch, dtype, state_dtype)
    out = {"params": pb["total"], "state_read": sb["total"], "state_write": sb["total"],
           "ssm_state": sb["ssm"], "conv_state": sb["conv"],
           "logits_write": batch * cfg.padded_vocab_size * 4,
           "embedding_gather": batch * cfg.d_model * itemsize(dtype)}
    out["total"] = out["params"] + out["state_read"] + out["state_write"]
    return out


def decode_roofline(cfg: Mamba2Config, batch: int, bandwidth: float, matmul_flops_per_s: float,
                    dtype="float32", state_dtype="float32") -> dict:
    """The roofline of one decode step of ``batch`` rows: it takes at least ``decode_bytes`` ÷
    ``bandwidth`` (bytes/s) and at least its matmul FLOPs ÷ ``matmul_flops_per_s`` (a dense matmul's
    rate on the same machine), so tokens/s ≤ batch ÷ the larger of the two.  At batch 1 the bytes bind;
    as the batch grows the weights are read once for more rows and the matmuls bind (on a CPU whose
    FLOP rate ÷ bandwidth is small, already at a few rows).  The state update's few FLOPs per element
    are in the bytes term, not the matmul one."""
    t_bytes = decode_bytes(cfg, batch, dtype, state_dtype)["total"] / bandwidth
    t_mm = decode_flops(cfg, batch)["matmul"] / matmul_flops_per_s
    return {"bandwidth_bound_tokens_per_s": batch / t_bytes, "matmul_bound_tokens_per_s": batch / t_mm,
            "roofline_tokens_per_s": batch / max(t_bytes, t_mm),
            "limited_by": "bandwidth" if t_bytes >= t_mm else "matmul"}


def batch_curve_roofline(doc: dict, rec: dict) -> dict | None:
    """:func:`decode_roofline` of a ``decode_batch_tokens_per_s`` record of a ``make bench`` document, at
    the bandwidth of its own rounds and the document's dense-matmul rate (``matmul_flops_per_s``, the
    same run), with ``roofline_fraction`` = achieved ÷ roofline; None without a matmul rate.  The rate is
    the fp32 one for 16-bit weights too: ``make bench`` times an fp32 matmul only, and on a CPU without
    native 16-bit dot instructions (AVX2) 16-bit weights are multiplied in fp32."""
    from ..config import get_preset

    rate = next((r["value"] for r in doc.get("records") or [] if r.get("metric") == "matmul_flops_per_s"), None)
    info = (doc.get("models") or {}).get(rec.get("dtype")) or {}
    if not rate or not rec.get("stream_bandwidth") or not info.get("model"):
        return None
    cfg = get_preset(info["model"])
    ro = decode_roofline(cfg, int(rec["batch"]), rec["stream_bandwidth"], rate, info.get("dtype", "float32"),
                         rec.get("state_dtype") or "float32")
    ro["matmul_flops_per_s"] = rate
    ro["roofline_fraction"] = rec["value"] / ro["roofline_tokens_per_s"]
    return ro


def recompute_flops(model, context: int, batch: int = 1) -> int:
    """FLOPs for ``model`` to produce one token by re-running the full prefix (last-position logits only)."""
    return model_prefill_flops(model, context, batch, last_only=True)["total"]
