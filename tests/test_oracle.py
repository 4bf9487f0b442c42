"""Chunked JAX prefill and recurrent step vs an independent float64 sequential oracle."""

import pytest

from mamba2_jax.eval.oracle import CHUNKS, VARIANTS, jax_cache_from_oracle, oracle_run, rel_err
from mamba2_jax.loading import model_from_state_dict

TOL = 1e-5

@pytest.mark.parametrize("with_init", [False, True], ids=["zero-state", "init-state"])
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("chunk", CHUNKS)
def test_prefill_matches_oracle(variant, chunk, with_init):
    cfg0, sd, orc, ids, state, ref_logits, ref_hidden = oracle_run(variant, with_init)
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
    cfg, sd, orc, ids, _, _, _ = oracle_run(variant, False)
    L = 2 * cfg.chunk_size + 3
    _, _, (o_conv, o_ssm) = orc.run(ids[:, :L])
    _, cache = model_from_state_dict(cfg, sd).prefill(ids[:, :L])
    for i in range(cfg.n_layer):
        assert rel_err(cache.ssm[i], o_ssm[i]) <= TOL
        assert rel_err(cache.conv[i], o_conv[i][:, :, 1:].transpose(0, 2, 1)) <= TOL


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_step_matches_oracle(variant):
    """prefill(L) then k recurrent steps == oracle at positions L..L+k-1."""
    cfg, sd, orc, ids, _, ref_logits, ref_hidden = oracle_run(variant, False)
    model = model_from_state_dict(cfg, sd)
    L, k = 11, 9
    _, cache = model.prefill(ids[:, :L])
    for t in range(L, L + k):
        logits, cache, hidden = model.step(ids[:, t], cache, collect_hidden=True)
        assert rel_err(logits, ref_logits[:, t]) <= TOL
        assert max(rel_err(hidden[i], ref_hidden[i, :, t]) for i in range(cfg.n_layer)) <= TOL
