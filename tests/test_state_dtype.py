"""The optional SSM-state dtype (issue 28, item 4) and the blocked decode step (item 2).

* ``state_dtype`` is part of the precision policy, allocated by ``init_cache``, kept through prefill,
  the step, the serving engine's slot table and the command line, and recorded on ``model.policy``.
  float32 is the default and the parity setting.
* A bfloat16 / float16 state against the float64 oracle on the embedded tiny model, at tolerances
  derived from the storage's unit roundoff (below), and its greedy agreement with the float32 state.
* The blocked step (``ssd.ssd_step`` with ``block_bytes``) against the unblocked one and the oracle, at
  today's tolerance, on shapes small enough to be many blocks.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mamba2_jax import ssd
from mamba2_jax.cache import Mamba2Cache
from mamba2_jax.checkpoint import read_state_dict
from mamba2_jax.config import get_preset
from mamba2_jax.eval.oracle import VARIANTS, OracleModel, oracle_run, rel_err
from mamba2_jax.loading import load_pretrained, model_from_state_dict, precision_policy
from mamba2_jax.paths import default_model_dir
from mamba2_jax.tokenizer import load_tokenizer

TOL = 1e-5  # tests/test_oracle.py's tolerance (float32 state)

# A 16-bit state is rounded once per step (round to nearest: relative error at most u, the unit
# roundoff, 2^-9 for bfloat16 and 2^-11 for float16) and read out as stored; the recurrence decays
# (|exp(dt·A)| < 1), so these errors do not grow without bound.  Measured on the embedded model
# (the 8 parity prompts of experiments/parity_prompts_v1.json, the longest cut to 200 tokens,
# prefill then 64 steps teacher-forced on the float32 state's greedy tokens, against the float64
# oracle): logits max_rel 3.5e-4 to 1.0e-3 with bfloat16 and 3.3e-5 to 1.2e-4 with float16, at
# most 0.51 u and 0.25 u (float32 state: at most 4.2e-7); greedy tokens equal to the float32
# state's, 64 of 64, on all 8.  The tolerance is one unit roundoff of the state's dtype: the
# state's storage may cost as much as one more rounding of the logits in that dtype, no more.
STATE_TOL = {"bfloat16": 2.0 ** -9, "float16": 2.0 ** -11}
PROMPTS = ("The capital of France is", "To make a simple tomato soup, first chop two onions and")  # parity prompts
STEPS = 32


def test_policy_records_the_state_dtype():
    assert precision_policy("float32") == {"mode": "parity", "param_dtype": "float32", "state_dtype": "float32",
                                           "accum_dtype": "float32", "matmul_precision": "highest"}
    p = precision_policy("float32", "bfloat16")
    assert (p["mode"], p["state_dtype"], p["matmul_precision"]) == ("fast", "bfloat16", "highest")
    assert precision_policy("bfloat16", "float16")["state_dtype"] == "float16"
    with pytest.raises(ValueError, match="state dtype"):
        precision_policy("float32", "int8")
    cfg = get_preset("tiny")
    from mamba2_jax.params import init_state_dict

    m = model_from_state_dict(cfg, init_state_dict(cfg, seed=0), dtype="bfloat16", state_dtype="bfloat16")
    assert m.policy["state_dtype"] == "bfloat16" and m.policy["param_dtype"] == "bfloat16"
    c = m.init_cache(3)
    assert {x.dtype for x in c.ssm} == {jnp.dtype(jnp.bfloat16)} and c.state_dtype == jnp.bfloat16
    assert {x.dtype for x in c.conv} == {jnp.dtype(jnp.bfloat16)}
    _, c = m.prefill(jnp.ones((3, 5), jnp.int32), c)  # kept through prefill and the step
    _, c = m.step(jnp.ones((3,), jnp.int32), c)
    assert {x.dtype for x in c.ssm} == {jnp.dtype(jnp.bfloat16)}
    from mamba2_jax.serve.engine import Engine

    nbytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(jax.eval_shape(lambda: Mamba2Cache.zeros(
        cfg, 1, jnp.float32, "bfloat16"))))
    assert Engine.state_bytes(cfg, "float32", "bfloat16") == nbytes == Mamba2Cache.row_bytes(cfg, "float32", "bfloat16")
    assert Engine.state_bytes(cfg, "float32") > nbytes


@pytest.fixture(scope="module")
def embedded():
    """The embedded model's oracle, and its programs per state dtype (float32 params)."""
    path = default_model_dir()
    cfg, sd, _ = read_state_dict(path)
    tok = load_tokenizer(None, model_dir=path, allow_hub=False)
    progs = {}
    for sdt in ("float32", "bfloat16", "float16"):
        m = load_pretrained(path, dtype="float32", state_dtype=sdt)
        gd, st = nnx.split(m)
        progs[sdt] = (st, jax.jit(lambda s, i, gd=gd: nnx.merge(gd, s).prefill(i)),
                      jax.jit(lambda s, c, t, gd=gd: nnx.merge(gd, s).step(t, c), donate_argnums=(1,)))
    return cfg, OracleModel(cfg, sd), progs, [tok.encode(t) for t in PROMPTS]


def _run(progs, sdt, ids, forced=None):
    """Prefill ``ids`` then STEPS greedy steps (or steps fed ``forced``): logits (STEPS + 1, V), tokens."""
    st, pre, step = progs[sdt]
    lg, c = pre(st, jnp.asarray([ids], jnp.int32))
    out, toks = [np.asarray(lg[0, -1])], []
    for i in range(STEPS):
        t = int(np.argmax(out[-1])) if forced is None else forced[i]
        toks.append(t)
        lg, c = step(st, c, jnp.asarray([t], jnp.int32))
        out.append(np.asarray(lg[0]))
    return np.stack(out), toks


@pytest.mark.parametrize("sdt", ["bfloat16", "float16"])
def test_16bit_state_against_the_oracle(embedded, sdt):
    """Teacher-forced on the float32 state's greedy path: the float32 state within TOL of the
    float64 oracle, the 16-bit state within one unit roundoff of its dtype, and its own greedy
    tokens equal to the float32 state's."""
    cfg, orc, progs, prompts = embedded
    V = cfg.vocab_size
    for ids in prompts:
        ref, toks = _run(progs, "float32", ids)
        olog, _, _ = orc.run(np.asarray([list(ids) + toks]))
        olog = olog[0, len(ids) - 1:len(ids) + STEPS, :V]
        assert rel_err(ref[:, :V], olog) <= TOL
        got, _ = _run(progs, sdt, ids, toks)
        e = rel_err(got[:, :V], olog)
        assert 0 < e <= STATE_TOL[sdt], (sdt, e)
        _, own = _run(progs, sdt, ids)
        assert own == toks


def test_float32_state_is_the_default(embedded):
    """The float32 state is the default (the parity mode), with the outputs of a model asked for it."""
    _, _, progs, prompts = embedded
    m = load_pretrained(default_model_dir())
    assert m.state_dtype == "float32" and m.policy["mode"] == "parity" and m.policy["state_dtype"] == "float32"
    gd, st = nnx.split(m)
    lg, _ = jax.jit(lambda s, i: nnx.merge(gd, s).prefill(i))(st, jnp.asarray([prompts[0]], jnp.int32))
    st32, pre, _ = progs["float32"]
    assert np.array_equal(np.asarray(lg), np.asarray(pre(st32, jnp.asarray([prompts[0]], jnp.int32))[0]))


@pytest.mark.parametrize("block_bytes", [1, 4096])
def test_blocked_step_equals_one_block(block_bytes):
    """The step in blocks of batch rows (a fori_loop updating the state in place) gives what the
    step in one block gives: the same update elementwise, the same read-out per row."""
    rng = np.random.default_rng(0)
    b, h, p, n, g = 4, 4, 16, 8, 2
    f = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)  # noqa: E731
    state, x, B, C = f(b, h, p, n), f(b, h, p), f(b, g, n), f(b, g, n)
    dt = jnp.asarray(rng.uniform(0.01, 1.0, (b, h)), jnp.float32)
    A, D = -jnp.exp(f(h)), f(h)
    assert ssd.step_block(state.shape, block_bytes) == {1: 1, 4096: 2}[block_bytes] < b
    one = jax.jit(lambda *a: ssd.ssd_step(*a, D=D, precision="highest"))(state, x, dt, A, B, C)
    blk = jax.jit(lambda *a: ssd.ssd_step(*a, D=D, precision="highest", block_bytes=block_bytes))(
        state, x, dt, A, B, C)
    assert np.array_equal(np.asarray(one[1]), np.asarray(blk[1]))  # the update: elementwise, identical
    assert rel_err(blk[0], one[0]) <= 1e-6


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_blocked_step_matches_oracle(variant):
    """prefill(L) then k recurrent steps in blocks of one batch row == the oracle, at TOL."""
    cfg, sd, orc, ids, _, ref_logits, _ = oracle_run(variant, False)
    m = model_from_state_dict(cfg, sd, step_block_bytes=1)
    assert ids.shape[0] == 2 and ssd.step_block((2, cfg.nheads, cfg.headdim, cfg.d_state), 1) == 1
    gd, st = nnx.split(m)
    step = jax.jit(lambda s, t, c: nnx.merge(gd, s).step(t, c))
    L, k = 11, 9
    _, cache = jax.jit(lambda s, i: nnx.merge(gd, s).prefill(i))(st, ids[:, :L])
    for t in range(L, L + k):
        logits, cache = step(st, ids[:, t], cache)
        assert rel_err(logits, ref_logits[:, t]) <= TOL


def test_cli_generate_records_the_state_dtype(capsys):
    from mamba2_jax.cli import main

    rc = main(["generate", "--prompt-ids", "510,5347,273", "--max-new-tokens", "3", "--no-decode",
               "--state-dtype", "bfloat16", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["policy"]["state_dtype"] == "bfloat16" and len(out["ids"]) == 3


def test_engine_and_generator_with_a_16bit_state():
    """The serving engine's slot table holds the model's state dtype, its slot bytes count it, and a
    greedy request through the engine (chunked prefill from restored rows, batched decode, prefix
    cache) equals the Generator's output on the same model."""
    from mamba2_jax.eval.oracle import perturbed_sd
    from mamba2_jax.generate import Generator
    from mamba2_jax.serve.engine import Engine, RequestParams

    cfg = get_preset("tiny-g2")
    m = model_from_state_dict(cfg, perturbed_sd(cfg, seed=4), state_dtype="bfloat16")
    e = Engine(m, slots=2, prefill_chunk=8, decode_steps=3, eos_id=None, min_bucket=4)
    e.start()
    try:
        assert {x.dtype for x in e._cache.ssm} == {jnp.dtype(jnp.bfloat16)}
        assert e.slot_bytes == Engine.state_bytes(cfg, m.dtype, "bfloat16") < Engine.state_bytes(cfg, m.dtype)
        prompt = np.random.default_rng(3).integers(1, cfg.vocab_size, 13).tolist()
        for _ in range(2):  # again, with the prefix cache filled by the first
            r = e.submit(prompt, RequestParams(max_tokens=7, temperature=0))
            assert r.wait(120) and r.error is None, r.error
            assert r.output == Generator(m, eos_id=None).generate([prompt], 7).sequences()[0]
    finally:
        e.shutdown()
