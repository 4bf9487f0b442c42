"""Chunked JAX prefill and recurrent step vs an independent float64 sequential oracle."""

import numpy as np
import pytest
import jax.numpy as jnp

from mamba2_jax.cache import Mamba2Cache
from mamba2_jax.checkpoint import init_state_dict, model_from_state_dict
from mamba2_jax.config import get_preset
from oracle import OracleModel

VARIANTS = {"g1": dict(ngroups=1), "g2": dict(ngroups=2), "g2-mlp": dict(ngroups=2, d_ssm=96)}
CHUNKS = (8, 16, 64)
TOL = 1e-5


def rel_err(a, ref):
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(a - ref)) / np.max(np.abs(ref)))


def perturbed_sd(cfg, seed):
    """Random init, with norms, D and dt_bias moved away from their init values so bugs show."""
    rng = np.random.default_rng(seed + 100)
    sd = init_state_dict(cfg, seed)
    for k in list(sd):
        if k.endswith("norm.weight") or k.endswith("norm_f.weight"):
            sd[k] = (1.0 + 0.5 * rng.standard_normal(sd[k].shape)).astype(np.float32)
        elif k.endswith("mixer.D"):
            sd[k] = (1.0 + rng.standard_normal(sd[k].shape)).astype(np.float32)
        elif k.endswith("dt_bias"):
            sd[k] = (sd[k] + rng.uniform(-1, 2, sd[k].shape)).astype(np.float32)
        elif k.endswith("conv1d.bias"):
            sd[k] = (sd[k] + 0.3 * rng.standard_normal(sd[k].shape)).astype(np.float32)
    sd["lm_head.weight"] = sd["backbone.embedding.weight"]
    return sd


_ORACLE_CACHE = {}


def oracle_run(variant, with_init, L):
    key = (variant, with_init)
    if key not in _ORACLE_CACHE:
        cfg = get_preset("tiny").replace(**VARIANTS[variant], chunk_size=8)
        sd = perturbed_sd(cfg, seed=1)
        orc = OracleModel(cfg, sd)
        rng = np.random.default_rng(7)
        ids = rng.integers(0, cfg.vocab_size, (2, 3 * max(CHUNKS) + 5))
        state = None
        if with_init:
            conv, ssm = orc.init_state(2)
            conv = [rng.standard_normal(c.shape) for c in conv]
            ssm = [0.5 * rng.standard_normal(s.shape) for s in ssm]
            state = (conv, ssm)
        logits, hidden, _ = orc.run(ids, state)
        _ORACLE_CACHE[key] = (cfg, sd, orc, ids, state, logits, hidden)
    return _ORACLE_CACHE[key]


def jax_cache_from_oracle(cfg, state):
    conv, ssm = state
    return Mamba2Cache(
        conv=tuple(jnp.asarray(c[:, :, 1:].transpose(0, 2, 1), jnp.float32) for c in conv),
        ssm=tuple(jnp.asarray(s, jnp.float32) for s in ssm),
        seqlen=jnp.zeros((conv[0].shape[0],), jnp.int32),
    )


@pytest.mark.parametrize("with_init", [False, True], ids=["zero-state", "init-state"])
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("chunk", CHUNKS)
def test_prefill_matches_oracle(variant, chunk, with_init):
    cfg0, sd, orc, ids, state, ref_logits, ref_hidden = oracle_run(variant, with_init, None)
    cfg = cfg0.replace(chunk_size=chunk)
    model = model_from_state_dict(cfg, sd, dtype="float32")
    for L in sorted({1, chunk - 1, chunk, chunk + 1, 3 * chunk + 5}):
        cache = jax_cache_from_oracle(cfg, state) if with_init else None
        logits, new_cache, hidden = model.prefill(ids[:, :L], cache, collect_hidden=True)
        e_log = rel_err(logits, ref_logits[:, :L])
        e_hid = max(rel_err(hidden[i], ref_hidden[i, :, :L]) for i in range(cfg.n_layer))
        assert e_log <= TOL, (L, e_log)
        assert e_hid <= TOL, (L, e_hid)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_final_state_matches_oracle(variant):
    cfg, sd, orc, ids, _, _, _ = oracle_run(variant, False, None)
    L = 2 * cfg.chunk_size + 3
    _, _, (o_conv, o_ssm) = orc.run(ids[:, :L])
    _, cache = model_from_state_dict(cfg, sd).prefill(ids[:, :L])
    for i in range(cfg.n_layer):
        assert rel_err(cache.ssm[i], o_ssm[i]) <= TOL
        assert rel_err(cache.conv[i], o_conv[i][:, :, 1:].transpose(0, 2, 1)) <= TOL


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_step_matches_oracle(variant):
    """prefill(L) then k recurrent steps == oracle at positions L..L+k-1."""
    cfg, sd, orc, ids, _, ref_logits, ref_hidden = oracle_run(variant, False, None)
    model = model_from_state_dict(cfg, sd)
    L, k = 11, 9
    _, cache = model.prefill(ids[:, :L])
    for t in range(L, L + k):
        logits, cache, hidden = model.step(ids[:, t], cache, collect_hidden=True)
        assert rel_err(logits, ref_logits[:, t]) <= TOL
        assert max(rel_err(hidden[i], ref_hidden[i, :, t]) for i in range(cfg.n_layer)) <= TOL
