"""The 16-bit SSM state's fidelity harness (issue 28 item 4): ``eval/state_fidelity.py`` and the
perplexity experiment's state-dtype backends.  Checked against independent computations: the
float64 oracle for the scores, the Generator's compiled decode loop for the teacher-forced logits."""

from __future__ import annotations

import json

import numpy as np
from omegaconf import OmegaConf

from mamba2_jax.checkpoint import init_state_dict
from mamba2_jax.config import get_preset
from mamba2_jax.eval import windows as P
from mamba2_jax.eval.oracle import OracleModel
from mamba2_jax.eval.perplexity import JAX_BACKENDS
from mamba2_jax.eval.scorer import JaxScorer
from mamba2_jax.eval.state_fidelity import teacher_forced_logits
from mamba2_jax.generate import Generator
from mamba2_jax.loading import model_from_state_dict
from mamba2_jax.paths import CONF_DIR, default_model_dir


def _oracle_logliks(cfg, sd, w):
    oracle, want = OracleModel(cfg, sd), []
    for i in range(len(w)):
        ids = w.input_ids[i, : w.lengths[i]]
        lp = oracle.run(ids[None])[0][0]
        lp = lp - lp.max(-1, keepdims=True)
        lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
        want.append(sum(lp[t - 1, ids[t]] for t in range(w.score_from[i], w.lengths[i])))
    return np.asarray(want)


def test_state_dtype_backends_store_the_state_between_prefill_calls():
    """A 16-bit state reaches a perplexity score only where the state is stored, between prefill calls
    (``state_chunk``, as a serving engine's chunked prefill runs): in one call, and in one call made
    of prefill blocks (an execution choice: the state crosses blocks in float32), the scores equal
    the float32 state's bit for bit; in calls of 8 tokens they differ, and stay near the float64
    oracle's."""
    assert JAX_BACKENDS["jax_fp32_state_bf16"] == ("float32", "bfloat16")
    assert JAX_BACKENDS["jax_fp32_state_fp16"] == ("float32", "float16")
    cfg = get_preset("tiny")
    sd = init_state_dict(cfg, seed=1)
    sd["backbone.embedding.weight"] = sd["lm_head.weight"] = sd["backbone.embedding.weight"] * 50.0
    rng = np.random.default_rng(0)
    docs = [rng.integers(1, cfg.vocab_size, n).tolist() for n in (40, 29)]
    w = P.lm_eval_windows(docs, max_length=32)
    want = _oracle_logliks(cfg, sd, w)
    scores = {}
    for block, chunk in ((None, None), (8, None), (None, 8)):
        for state_dtype in ("float32", "bfloat16", "float16"):
            m = model_from_state_dict(cfg, sd, prefill_block=block, state_dtype=state_dtype)
            scores[block, chunk, state_dtype] = JaxScorer(m, batch_size=2, bucket=16, logits_chunk=8,
                                                          state_chunk=chunk).score(w, progress=False).loglik
    for sdt in ("bfloat16", "float16"):
        assert np.array_equal(scores[None, None, sdt], scores[None, None, "float32"]), sdt
        assert np.array_equal(scores[8, None, sdt], scores[8, None, "float32"]), sdt
        assert not np.array_equal(scores[None, 8, sdt], scores[None, 8, "float32"]), sdt
    for key in ((None, None, "float32"), (8, None, "float32"), (None, 8, "float32")):
        np.testing.assert_allclose(scores[key], want, rtol=1e-5, atol=1e-4, err_msg=str(key))
    np.testing.assert_allclose(scores[None, 8, "float16"], want, rtol=1e-3)
    np.testing.assert_allclose(scores[None, 8, "bfloat16"], want, rtol=1e-2)


def test_prefill_blocks_do_not_round_a_16_bit_state():
    """Prefill blocks are an execution choice: with a bfloat16 state, a 32-token prompt in blocks of 8
    returns the same logits and cache as in one pass (the state rounded once, at the end)."""
    import jax
    import jax.numpy as jnp

    cfg = get_preset("tiny")
    sd = init_state_dict(cfg, seed=3)
    ids = jnp.asarray(np.random.default_rng(1).integers(1, cfg.vocab_size, (2, 32)), jnp.int32)
    out = {}
    for block in (None, 8):
        m = model_from_state_dict(cfg, sd, prefill_block=block, state_dtype="bfloat16")
        lg, cache = jax.jit(lambda i, m=m: m.prefill(i, last_only=True))(ids)
        out[block] = (np.asarray(lg), [np.asarray(s.astype(jnp.float32)) for s in cache.ssm], cache.ssm[0].dtype)
    assert out[8][2] == out[None][2] == jnp.bfloat16
    np.testing.assert_allclose(out[8][0], out[None][0], rtol=1e-5, atol=1e-5)
    for a, b in zip(out[8][1], out[None][1]):  # one rounding of states equal to fp32 rounding: equal or 1 ulp
        np.testing.assert_allclose(a, b, rtol=2 ** -7, atol=1e-6)


def test_teacher_forced_logits_follow_the_decode_loop():
    """The harness's step-by-step logits, fed the Generator's greedy tokens, pick those same tokens
    (the Generator runs its own compiled decode loop), with a float32 and a bfloat16 state."""
    cfg = get_preset("tiny")
    sd = init_state_dict(cfg, seed=2)
    prompt = [5, 17, 3, 99, 42, 7]
    for state_dtype in ("float32", "bfloat16"):
        m = model_from_state_dict(cfg, sd, state_dtype=state_dtype)
        toks = np.asarray(Generator(m, eos_id=None).generate([prompt], 12).tokens[0])
        lg = teacher_forced_logits(m, prompt, toks)
        assert lg.shape[0] == 12
        assert np.array_equal(lg[:, : cfg.vocab_size].argmax(-1), toks), state_dtype


def test_fidelity_experiment_writes_its_document(tmp_path, data_dir):
    """The experiment on the embedded model: every row's fields, the 16-bit states' logits differ
    from the float32 state's (the state reaches them) by little, and the document records the
    precision and provenance."""
    from mamba2_jax.eval import state_fidelity

    cfg = OmegaConf.load(CONF_DIR / "state_dtype.yaml")
    cfg.pop("hydra")
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([
        "max_prompts=1", "n_new=6", f"tokenizer={data_dir / 'gpt-neox-20b'}",
        f"paths.results_dir={tmp_path / 'results'}", f"paths.work_dir={tmp_path / 'work'}"]))
    cfg.models = [{"name": "mamba2-tiny-wikitext", "path": str(default_model_dir())}]
    doc = state_fidelity.run(cfg)
    rows = doc["rows"]
    assert [(r["state_dtype"], r["n_new"]) for r in rows] == [("bfloat16", 6), ("float16", 6)]
    for r in rows:
        assert 0 < r["logits_max_rel"] < 5e-2, r
        assert r["logits_max_rel_first_step"] == 0.0, r  # the prompt's last logits: no stored state yet
        assert r["all_agree"] == (r["first_divergence"] is None) and 0 <= r["agree"] <= 6
    j = json.loads((tmp_path / "results" / "fidelity.json").read_text())
    assert j["precision"]["state_dtype"] == ["float32", "bfloat16", "float16"]
    assert j["provenance"]["git"]["sha"] and set(j["summary"]) == {"mamba2-tiny-wikitext/bfloat16",
                                                                   "mamba2-tiny-wikitext/float16"}
    assert j["models"]["mamba2-tiny-wikitext"]["policy_bfloat16"]["state_dtype"] == "bfloat16"
