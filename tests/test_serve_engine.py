"""The serving engine in process (mamba2_jax/serve/engine.py, programs.py, prefix_cache.py), against
independent computations: the float64 oracle (states after chunked prefill from restored states at
irregular chunk boundaries, greedy tokens), the Generator alone on each prompt (batch invariance), and
the Generator's sampler (per-row sampling arrays)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mamba2_jax.config import get_preset
from mamba2_jax.eval.oracle import OracleModel, jax_cache_from_oracle, perturbed_sd, rel_err
from mamba2_jax.generate import DecodeState, Generator, SamplingArrays, SamplingConfig, sample_logits, sample_rows
from mamba2_jax.loading import model_from_state_dict
from mamba2_jax.serve.engine import Engine, RequestParams
from mamba2_jax.serve.prefix_cache import PrefixCache

TOL = 1e-5  # tests/test_oracle.py's tolerance for fp32 against the float64 oracle
CHUNK = 8  # prefill chunk (and prefix block): prompts below span several, from irregular starts


@pytest.fixture(scope="module")
def tiny():
    cfg = get_preset("tiny-g2")
    sd = perturbed_sd(cfg, seed=4)
    sd["backbone.embedding.weight"] = sd["backbone.embedding.weight"] * 25  # sharp logits: no greedy near-ties
    sd["lm_head.weight"] = sd["backbone.embedding.weight"]
    return cfg, sd, model_from_state_dict(cfg, sd)


@pytest.fixture(scope="module")
def engine(tiny):
    e = Engine(tiny[2], slots=4, prefill_chunk=CHUNK, prefill_rows=2, decode_steps=3, eos_id=None,
               min_bucket=4)
    info = e.start()
    e.warm_counts = dict(info["trace_counts"])
    yield e
    e.shutdown()
    assert not e._thread.is_alive()


def _run(engine, prompt, params) -> list[int]:
    req = engine.submit(prompt, params)
    assert req.wait(120), "request did not finish"
    assert req.error is None, req.error
    return req


def _state_of(cfg, orc: OracleModel, tokens):
    """The oracle's state after consuming ``tokens``, as a JAX-layout cache (batch 1)."""
    _, _, state = orc.run(np.asarray([tokens]))
    return jax_cache_from_oracle(cfg, state)


def _oracle_greedy(orc, cfg, prompt, out):
    """The oracle's argmax at the prompt's last position and after each generated token but the last."""
    logits, _, _ = orc.run(np.asarray([prompt + out[:-1]]))
    return np.argmax(logits[0, len(prompt) - 1:, :cfg.vocab_size], axis=-1).tolist()


def _scalar_sampler(logits, key, cfg: SamplingConfig, vocab_size: int):
    """An independent sampler for a batch of one with static settings (the Generator's sampler before
    it became per-row): padded vocabulary masked, logits minus their max over the temperature, the
    ``lax.top_k`` threshold, the top-p prefix of the sorted distribution, ``categorical`` with ``key``."""
    V = logits.shape[-1]
    logits = jnp.where(jnp.arange(V) < vocab_size, logits, -jnp.inf)
    if cfg.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = (logits - jnp.max(logits, axis=-1, keepdims=True)) / cfg.temperature
    if cfg.top_k and cfg.top_k < V:
        kth = jax.lax.top_k(logits, cfg.top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if cfg.top_p < 1.0:
        srt = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(srt, axis=-1)
        cum = jnp.cumsum(probs, axis=-1)
        keep = (cum - probs) < cfg.top_p
        thresh = jnp.min(jnp.where(keep, srt, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < thresh, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def test_sample_rows_equals_the_generator_sampler():
    """Each row of one per-row-settings call (device arrays: one program for every setting) draws
    what an independent scalar sampler draws for that row alone with that row's static settings and
    key, and what the Generator's static-settings path (``sample_logits``: the program specialised to
    the settings) draws; padded vocabulary masked."""
    rng = np.random.default_rng(0)
    V, vocab = 64, 60
    cfgs = [SamplingConfig(), SamplingConfig(greedy=False, temperature=0.7),
            SamplingConfig(greedy=False, temperature=1.3, top_k=5), SamplingConfig(greedy=False, top_p=0.6),
            SamplingConfig(greedy=False, temperature=0.9, top_k=12, top_p=0.8), SamplingConfig(greedy=False, top_k=1)]
    b = len(cfgs)
    arrays = SamplingArrays.host([c.greedy for c in cfgs], [c.temperature for c in cfgs],
                                 [c.top_k for c in cfgs], [c.top_p for c in cfgs])
    rows = jax.jit(lambda lg, k, s: sample_rows(lg, k, s, vocab))  # settings traced
    single = {i: jax.jit(lambda lg, k, c=c: _scalar_sampler(lg, k, c, vocab)) for i, c in enumerate(cfgs)}
    static = {i: jax.jit(lambda lg, k, c=c: sample_logits(lg, k, c, vocab)) for i, c in enumerate(cfgs)}
    seen = [set() for _ in cfgs]
    for t in range(40):
        logits = jnp.asarray(rng.standard_normal((b, V)) * 2, jnp.float32)
        keys = jax.random.split(jax.random.key(t), b)
        got = np.asarray(rows(logits, keys, arrays))
        for i in range(b):
            want = int(single[i](logits[i:i + 1], keys[i])[0])
            assert got[i] == want, (t, cfgs[i])
            assert int(static[i](logits[i:i + 1], keys[i])[0]) == want, (t, cfgs[i])
            seen[i].add(want)
    assert all(len(s) > 1 for s in seen[1:5])  # the sampled rows really sampled
    assert max(max(s) for s in seen) < vocab
    assert rows._cache_size() == 1  # one program for every mix of settings


def test_chunked_prefill_from_restored_states_matches_the_oracle(tiny, engine):
    """A prompt prefilled in chunks of 8 from a zero state (a miss), and the same prompt restored from a
    cached prefix of irregular length (13: chunks 13→16→24→32→37) and from a finished request's
    state (prompt + output): every snapshot equals the float64 oracle's state after those tokens
    within fp32 rounding, and the greedy tokens are the oracle's argmax."""
    cfg, sd, _ = tiny
    orc = OracleModel(cfg, sd)
    rng = np.random.default_rng(5)
    base = rng.integers(1, cfg.vocab_size, 13).tolist()
    longer = base + rng.integers(1, cfg.vocab_size, 24).tolist()  # 37 tokens
    g = RequestParams(max_tokens=6, temperature=0)
    pc = engine.prefix_cache

    first = _run(engine, base, g)  # a miss; caches base (end of prompt) and base + output[:-1]
    assert first.cached_tokens == 0
    assert first.output == _oracle_greedy(orc, cfg, base, first.output)
    hit = _run(engine, longer, g)  # restores base (13 tokens), prefills 24 in 4 chunks
    assert hit.cached_tokens == 13
    assert hit.output == _oracle_greedy(orc, cfg, longer, hit.output)
    for toks in (base, longer, longer[:16], longer[:24], longer[:32], base + first.output[:-1],
                 longer + hit.output[:-1]):
        snap = pc._entries[tuple(toks)][0]
        want = _state_of(cfg, orc, toks)
        for got_l, want_l in zip(snap.ssm + snap.conv, want.ssm + want.conv):
            assert rel_err(np.asarray(got_l)[0], np.asarray(want_l)[0]) < TOL, len(toks)
        assert int(snap.seqlen[0]) == len(toks)
    # the next turn of a conversation starts from the finished request's state
    turn = base + first.output + rng.integers(1, cfg.vocab_size, 3).tolist()
    r = _run(engine, turn, g)
    assert r.cached_tokens == len(base) + len(first.output) - 1
    assert r.output == _oracle_greedy(orc, cfg, turn, r.output)


def test_batch_of_mixed_requests_equals_each_alone(tiny, engine):
    """Ten prompts of mixed lengths and sampling settings submitted at once into 4 slots: every output
    equals the Generator's on that prompt alone with the same settings and seed (greedy and sampled),
    and no new program was compiled."""
    cfg, _, model = tiny
    gen = Generator(model, eos_id=None)
    rng = np.random.default_rng(11)
    lengths = (1, 7, 8, 9, 30, 3, 17, 2, 25, 12)
    prompts = [rng.integers(1, cfg.vocab_size, n).tolist() for n in lengths]
    settings = [RequestParams(max_tokens=9, temperature=0), RequestParams(max_tokens=5, temperature=1.2, seed=3),
                RequestParams(max_tokens=7, temperature=0.8, top_k=20, seed=4),
                RequestParams(max_tokens=8, temperature=1.0, top_p=0.7, seed=5),
                RequestParams(max_tokens=4, temperature=0)]
    reqs = [engine.submit(p, settings[i % len(settings)]) for i, p in enumerate(prompts)]
    for r in reqs:
        assert r.wait(120) and r.error is None
    for p, r in zip(prompts, reqs):
        s = r.params
        sc = SamplingConfig() if s.greedy else SamplingConfig(greedy=False, temperature=s.temperature,
                                                              top_k=s.top_k, top_p=s.top_p)
        want = gen.generate([p], s.max_tokens, sc, seed=s.seed or 0).sequences()[0]
        assert r.output == want, (len(p), s)
        assert r.finish_reason == "length"
    assert engine.programs.trace_counts == engine.warm_counts


def test_prefill_budget_runs_several_calls_per_iteration(tiny):
    """With a prefill budget of 3 chunks, an iteration runs several prefill calls (admitting between
    them), fewer prompt tokens than the budget plus one call's, and every output still equals
    the Generator's on that prompt alone."""
    cfg, _, model = tiny
    gen = Generator(model, eos_id=None)
    rng = np.random.default_rng(12)
    prompts = [rng.integers(1, cfg.vocab_size, n).tolist() for n in (30, 5, 19, 8, 41, 2, 13)]
    e = Engine(model, slots=4, prefill_chunk=CHUNK, prefill_rows=2, prefill_budget=3 * CHUNK, decode_steps=3,
               eos_id=None, min_bucket=4)
    e.start()
    try:
        reqs = [e.submit(p, RequestParams(max_tokens=6, temperature=0)) for p in prompts]
        for r in reqs:
            assert r.wait(120) and r.error is None
        st = e.stats()
    finally:
        e.shutdown()
    for p, r in zip(prompts, reqs):
        assert r.output == gen.generate([p], 6).sequences()[0], len(p)
    assert st["prefill_tokens"] == sum(map(len, prompts)) and st["prefill_budget"] == 3 * CHUNK
    # a call runs at most one chunk of tokens (rows x bucket <= chunk), so more than one chunk in an
    # iteration means several calls; the last call starts below the budget
    assert CHUNK < st["max_prefill_per_iteration"] < 3 * CHUNK + CHUNK, st


def test_choices_are_the_rows_of_one_generator_batch(tiny, engine):
    """The choices of an ``n`` > 1 request (choice c > 0: key fold_in(fold_in(key(seed), 2**32 - 1), c)) are the rows of
    ``Generator.generate([prompt] * n, seed=seed)``: the same per-row keys (``generate.row_keys``)."""
    cfg, _, model = tiny
    prompt = [3, 14, 15, 9, 2, 6]
    params = RequestParams(max_tokens=7, temperature=40.0, top_k=30, seed=21)  # the sharp logits: a hot draw
    reqs = [engine.submit(prompt, params, choice=c) for c in range(3)]
    for r in reqs:
        assert r.wait(120) and r.error is None
    want = Generator(model, eos_id=None).generate([prompt] * 3, 7, SamplingConfig(greedy=False, temperature=40.0,
                                                                                 top_k=30), seed=21).sequences()
    assert [r.output for r in reqs] == want
    assert len({tuple(w) for w in want}) > 1  # the choices differ


def test_idle_and_failing_rows_do_not_disturb_the_others(tiny, engine):
    """A cached prefix whose state is NaN makes that request fail alone, with an error naming it, while
    a request decoding beside it gets the Generator's tokens; idle slots hold NaN meanwhile."""
    cfg, _, model = tiny
    rng = np.random.default_rng(2)
    poisoned = rng.integers(1, cfg.vocab_size, 9).tolist()
    good = rng.integers(1, cfg.vocab_size, 6).tolist()
    nan_row = jax.tree.map(lambda a: jnp.full_like(a, jnp.nan) if a.dtype != jnp.int32 else a,
                           engine.programs.zero_row())
    for i in range(engine.S):  # idle slots full of NaN
        engine._cache = engine.programs.write_rows(engine._cache, np.array([i], np.int32), nan_row)
    engine.prefix_cache.insert(poisoned[:5], nan_row, engine.slot_bytes)
    bad = engine.submit(poisoned, RequestParams(max_tokens=8, temperature=0))
    ok = engine.submit(good, RequestParams(max_tokens=12, temperature=0))
    assert bad.wait(120) and ok.wait(120)
    assert bad.finish_reason == "error" and f"request {bad.id}" in bad.error and "non-finite" in bad.error
    assert ok.error is None
    assert ok.output == Generator(model, eos_id=None).generate([good], 12).sequences()[0]


def test_eos_and_cancel(tiny):
    """A row stops at its own EOS (unless ignore_eos); a cancelled request frees its slot."""
    cfg, _, model = tiny
    prompt = [5, 9, 17]
    free = Generator(model, eos_id=None).generate([prompt], 10).sequences()[0]
    eos = free[3]
    e = Engine(model, slots=2, prefill_chunk=CHUNK, decode_steps=3, eos_id=eos, min_bucket=4)
    e.start()
    try:
        stop = e.submit(prompt, RequestParams(max_tokens=10, temperature=0))
        go = e.submit(prompt, RequestParams(max_tokens=10, temperature=0, ignore_eos=True))
        long = e.submit(prompt, RequestParams(max_tokens=10_000, temperature=0, ignore_eos=True))
        assert stop.wait(120) and go.wait(120)
        k = free.index(eos) + 1
        assert stop.output == free[:k] and stop.finish_reason == "stop"
        assert go.output == free and go.finish_reason == "length"
        long.cancel()
        assert long.wait(60) and long.finish_reason == "abort"
        assert e.busy_slots == 0
    finally:
        e.shutdown(drain=False)


def test_prefix_cache_longest_strict_prefix_and_lru_budget():
    pc = PrefixCache(max_bytes=300)
    pc.insert([1, 2], "s2", 100)
    pc.insert([1, 2, 3, 4], "s4", 100)
    pc.insert([9], "s9", 100)
    assert pc.lookup([1, 2, 3, 4, 5]).state == "s4"
    assert pc.lookup([1, 2, 3, 4]).state == "s2"  # strict: one token is left to prefill
    assert pc.lookup([1, 2, 7]).length == 2
    assert pc.lookup([7, 1]) is None
    pc.insert([5, 5], "s55", 100)  # evicts the least recently used: [9]
    assert pc.lookup([9, 1]) is None and pc.bytes == 300 and len(pc) == 3
    assert not pc.insert([6], "big", 301)
    assert (pc.hits, pc.misses, pc.evictions) == (3, 2, 1)


_MESH_SCRIPT = """
import json, sys
import numpy as np
import mamba2_jax
from mamba2_jax.generate import Generator
from mamba2_jax.serve.engine import Engine, RequestParams
path = sys.argv[1]
m = mamba2_jax.load_pretrained(path, dtype="float32", mesh="data=2,model=2")
e = Engine(m, slots=4, prefill_chunk=16, decode_steps=3)
e.start()
g = Generator(mamba2_jax.load_pretrained(path, dtype="float32"), eos_id=0)
rng = np.random.default_rng(0)
ps = [rng.integers(2, 50000, n).tolist() for n in (3, 40, 7, 21, 5)]
rs = [e.submit(p, RequestParams(max_tokens=9, temperature=0)) for p in ps]
out = [dict(ok=r.wait(300) and r.error is None, equal=r.output == g.generate([p], 9).sequences()[0])
       for p, r in zip(ps, rs)]
print(json.dumps(dict(out=out, sharding=str(e._cache.ssm[0].sharding.spec))))
e.shutdown()
"""


@pytest.mark.integration
def test_slots_sharded_over_a_mesh_match_one_device(tmp_path):
    """The engine on 4 simulated devices (data=2 × model=2: slots on "data", weights on "model"), in a
    subprocess (the device count is fixed at JAX start-up): every greedy output equals the
    single-device Generator's, and the slot table stays sharded over "data"."""
    import json
    import os
    import subprocess
    import sys

    from mamba2_jax.paths import default_model_dir

    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0"
    p = subprocess.run([sys.executable, "-c", _MESH_SCRIPT, str(default_model_dir())], env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert all(o["ok"] and o["equal"] for o in res["out"]), res
    assert "data" in res["sharding"]


def test_decode_program_makes_no_extra_pass_over_the_state(engine):
    """The compiled decode loop updates each layer's SSM state in one fusion, and no select over a
    state-sized array (a masked update) is left in it: that was a separate read-read-write pass."""
    import re

    p, S, cfg = engine.programs, engine.S, engine.cfg
    eos = np.full(S, -1, np.int32)
    st = DecodeState.rows(engine._cache, np.zeros(S, np.int32), np.zeros(S, np.int32), np.zeros(S, bool),
                          jax.random.wrap_key_data(np.zeros((S, 2), np.uint32)), p.k, eos)
    gen = p.generator  # the engine's decode dispatches run the Generator's decode loop with per-row settings
    hlo = gen._programs.decode_rows.lower(gen.state, st, engine._samp, eos, np.full(S, 9, np.int32),
                                          stop_at_finish=True).compile().as_text()
    shape = f"f32[{S},{cfg.nheads},{cfg.headdim},{cfg.d_state}]"
    body = [ln for ln in hlo.splitlines() if shape in ln.split("=")[0] + (ln.split("=")[1][:40] if "=" in ln else "")]
    selects = [ln for ln in body if re.search(r"= f32\[[^]]*\]\{[^}]*\} (select|fusion)\(", ln) and "select" in ln
               and "scatter" not in ln]
    assert not selects, selects[:3]
    updates = [ln for ln in body if "multiply_add" in ln and "fusion(" in ln]
    assert len(updates) == cfg.n_layer, len(updates)


@pytest.mark.parametrize("name,dtype,mib", [("mamba2-130m", "float32", 18.49), ("mamba2-130m", "bfloat16", 18.25)])
def test_slot_bytes_are_the_cache_bytes(name, dtype, mib):
    """The slot size the server prints and admits by (Engine.state_bytes) is the byte count of a real
    one-sequence cache, and the 130m figure docs/serving.md quotes (18.5 MiB, rounded)."""
    from mamba2_jax.cache import Mamba2Cache

    cfg = get_preset(name)
    cache = jax.eval_shape(lambda: Mamba2Cache.zeros(cfg, 1, dtype=jnp.dtype(dtype)))
    nbytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(cache))
    assert Engine.state_bytes(cfg, dtype) == nbytes
    assert round(nbytes / 2**20, 2) == mib
