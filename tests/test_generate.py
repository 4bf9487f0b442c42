"""The compiled generation engine vs step-by-step references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _compile_cache import compilation_cache
from flax import nnx

from mamba2_jax.checkpoint import init_state_dict
from mamba2_jax.config import get_preset
from mamba2_jax.eval.oracle import OracleModel, perturbed_sd
from mamba2_jax.generate import GenerationError, Generator, SamplingConfig, bucket_length, program_key
from mamba2_jax.loading import model_from_state_dict
from mamba2_jax.sharding import make_mesh


@pytest.fixture(scope="module", autouse=True)
def _module_compilation_cache(tmp_path_factory):
    """Programs compiled twice here by different jit objects, from the same XLA input: the prefill
    of a Generator with an EOS id (test_eos_stops_each_row) and without, the decode loop of two
    models that differ only in their prefill (test_long_prompts_...), the stepwise step of two
    models that differ only in their scan chunk (test_stepwise_...): compiled once."""
    with compilation_cache(tmp_path_factory.mktemp("jax-cache")):
        yield


_PREFILL_JIT: dict = {}


def prefill(model, ids, cache=None, lengths=None, last_only=False):
    """``model.prefill(ids, cache, lengths, last_only=...)`` run as one jitted program (the way the
    Generator and the benchmarks run it) instead of op by op: compiled once per model structure
    (``program_key``), ``last_only`` and input shapes, and shared by every test of this file."""
    graphdef, state = nnx.split(model)
    key = (program_key(graphdef), bool(last_only))
    if key not in _PREFILL_JIT:
        _PREFILL_JIT[key] = jax.jit(lambda st, ids, cache, lengths: nnx.merge(graphdef, st).prefill(
            ids, cache, lengths, last_only=last_only))
    return _PREFILL_JIT[key](state, jnp.asarray(ids), cache, lengths)


@pytest.fixture(scope="module")
def tiny():
    cfg = get_preset("tiny-g2")
    sd = perturbed_sd(cfg, seed=4)
    # sharpen the logits (larger embedding) so greedy choices are not near-ties
    sd["backbone.embedding.weight"] = sd["backbone.embedding.weight"] * 25
    sd["lm_head.weight"] = sd["backbone.embedding.weight"]
    return cfg, sd, model_from_state_dict(cfg, sd)


@pytest.fixture(scope="module")
def gen(tiny):
    """One Generator (so one set of compiled programs) for the tests that do not count compiles."""
    return Generator(tiny[2], eos_id=None)


def ragged_prompts(cfg) -> list[list[int]]:
    """The ragged batch of test_ragged_batch_equals_single_runs_and_compiles_are_bounded (lengths 3, 20,
    9 and 33: bucket 64), which the sampling and EOS tests use too, so that they run its compiled
    programs (greedy and sampled) rather than compile programs of their own."""
    rng = np.random.default_rng(0)
    return [rng.integers(2, cfg.vocab_size, n).tolist() for n in (3, 20, 9, 33)]


def test_greedy_64_equals_float64_oracle(tiny, gen):
    cfg, sd, model = tiny
    prompt = [5, 17, 99, 3, 250 - 7]
    res = gen.generate([prompt], 64)
    # reference: the float64 oracle, stepping one token at a time with its own argmax
    orc = OracleModel(cfg, sd)
    logits, _, state = orc.run(np.array([prompt]))
    ref, margins = [], []
    nxt = int(np.argmax(logits[0, -1, :cfg.vocab_size]))
    for _ in range(64):
        ref.append(nxt)
        lg, _, state = orc.run(np.array([[nxt]]), state)
        top2 = np.sort(lg[0, -1, :cfg.vocab_size])[-2:]
        margins.append(top2[1] - top2[0])
        nxt = int(np.argmax(lg[0, -1, :cfg.vocab_size]))
    got = res.tokens[0].tolist()
    assert got == ref, f"first divergence at {next(i for i in range(64) if got[i] != ref[i])}, margins {min(margins)}"


def test_greedy_equals_prefill_recompute(tiny, gen):
    """Each token of the compiled loop (cache carried) is the argmax of a prefill recomputed from
    scratch over the prompt and the tokens before it.  One prefill of the whole sequence gives all 64
    recomputations: it is causal, so its logits at position t see only tokens ≤ t (the float64-oracle
    tests check every position of a prefill)."""
    cfg, _, model = tiny
    prompt = [1, 2, 3, 4, 5, 6, 7]
    res = gen.generate([prompt], 64)  # the programs of test_greedy_64_equals_float64_oracle
    got = res.tokens[0].tolist()
    lg, _ = prefill(model, [prompt + got[:-1]])
    recomputed = np.argmax(np.asarray(lg[0, len(prompt) - 1:, :cfg.vocab_size]), -1).tolist()
    assert got == recomputed


def test_ragged_batch_equals_single_runs_and_compiles_are_bounded(tiny):
    cfg, _, model = tiny
    rng = np.random.default_rng(0)
    prompts = [rng.integers(2, cfg.vocab_size, n).tolist() for n in (3, 20, 9, 33)]
    g = Generator(model, eos_id=None)
    n_decode = g.trace_counts["decode"]  # programs are shared by Generators of one structure
    batch = g.generate(prompts, 16)
    for i, p in enumerate(prompts):
        single = g.generate([p], 16)
        np.testing.assert_array_equal(single.tokens[0], batch.tokens[i])
    # also: the prefill logits themselves agree between batched (padded) and single runs
    (tok_b, cache_b), _ = g.prefill(prompts)
    for i, p in enumerate(prompts):
        (tok_1, cache_1), _ = g.prefill([p])
        np.testing.assert_allclose(np.stack(cache_b.ssm)[:, i], np.stack(cache_1.ssm)[:, 0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.stack(cache_b.conv)[:, i], np.stack(cache_1.conv)[:, 0], rtol=1e-5, atol=1e-6)
    # prompt lengths 3 and 9 share bucket 16; 20 → 32; 33 → 64 for single runs
    n_prefill = g.trace_counts["prefill"]
    for n in (4, 5, 11, 16):  # all in bucket 16, batch 1: no new compiles
        g.generate([rng.integers(2, cfg.vocab_size, n).tolist()], 16)
    assert g.trace_counts["prefill"] == n_prefill
    assert g.trace_counts["decode"] <= n_decode + 2  # (batch 4, greedy), (batch 1, greedy)


@pytest.fixture(scope="module")
def broad(tiny):
    """The tiny shape with plain random weights: broad next-token distributions, for sampling."""
    cfg = tiny[0]
    sd = init_state_dict(cfg, 0)
    model = model_from_state_dict(cfg, sd)
    return cfg, sd, model, Generator(model, eos_id=None)


def host_sample(logits: np.ndarray, gumbel: np.ndarray, s: SamplingConfig, vocab_size: int) -> tuple[int, float]:
    """A NumPy (float64) sampler: the padded vocabulary masked, logits / temperature, the top_k largest,
    the smallest prefix of the sorted distribution whose mass reaches top_p, then the Gumbel-max draw
    argmax(logits + g).  Returns the token and the gap between the two best perturbed scores."""
    V = logits.shape[-1]
    lg = np.where(np.arange(V) < vocab_size, logits.astype(np.float64), -np.inf)
    lg = (lg - lg.max()) / s.temperature
    if s.top_k and s.top_k < V:
        lg = np.where(lg < np.sort(lg)[-s.top_k], -np.inf, lg)
    if s.top_p < 1.0:
        srt = np.sort(lg)[::-1]
        p = np.exp(srt - srt[0])
        p /= p.sum()
        keep = np.cumsum(p) - p < s.top_p
        lg = np.where(lg < srt[keep].min(), -np.inf, lg)
    score = lg + gumbel
    top2 = np.sort(score)[-2:]
    return int(np.argmax(score)), float(top2[1] - top2[0])


def test_sampled_ragged_batch_equals_a_host_sampler(broad):
    """Every token of a sampled ragged batch is what a NumPy sampler draws from the float64 oracle's
    logits (teacher-forced on the row's prompt and tokens so far) with the same Gumbel noise: token t
    of row i uses key fold_in(k_i, t) over the row's own (V,) logits, k_0 = key(seed),
    k_i = fold_in(fold_in(key(seed), 2**32 - 1), i) (``row_keys``).  The distributions are broad (many
    candidates survive top-k/top-p; the draws are not the greedy tokens)."""
    cfg, sd, _, g = broad
    prompts = ragged_prompts(cfg)
    s = SamplingConfig(greedy=False, temperature=1.5, top_k=50, top_p=0.9)
    n, seed = 16, 11
    got = g.generate(prompts, n, s, seed=seed).tokens
    V = cfg.padded_vocab_size
    key = jax.random.key(seed)
    rows = jax.random.fold_in(key, 2**32 - 1)  # the one fold_in datum no position reaches
    row_key = [key] + [jax.random.fold_in(rows, i) for i in range(1, len(prompts))]
    noise = [np.stack([np.asarray(jax.random.gumbel(jax.random.fold_in(row_key[i], t), (V,)))
                       for i in range(len(prompts))]) for t in range(n)]
    oracle = OracleModel(cfg, sd)
    gaps, n_greedy = [], 0
    for i, p in enumerate(prompts):
        lg, _, _ = oracle.run(np.array([p + got[i, :-1].tolist()]))
        lg = lg[0, len(p) - 1:]
        want = [host_sample(lg[t], noise[t][i], s, cfg.vocab_size) for t in range(n)]
        assert got[i].tolist() == [w[0] for w in want], i
        gaps += [w[1] for w in want]
        n_greedy += int(np.sum(got[i] == np.argmax(lg[:, :cfg.vocab_size], -1)))
    assert min(gaps) > 1e-3  # no draw decided at fp32 rounding
    assert n_greedy < len(prompts) * n // 2  # the sampler, not argmax, chose most tokens


def test_per_row_settings_program_equals_the_static_one(broad):
    """The decode loop with its settings as program inputs (``Generator.decode_rows``: the server's
    dispatches) gives the tokens of the program specialised to one static config, token for token,
    on the sampled ragged batch; with ``limit`` and ``stop_at_finish`` it stops after the step in
    which the first row reaches its limit, the other rows mid-way."""
    from mamba2_jax.generate import DecodeState, SamplingArrays

    cfg, _, _, g = broad
    prompts = ragged_prompts(cfg)
    s = SamplingConfig(greedy=False, temperature=1.5, top_k=50, top_p=0.9)
    n, seed, b = 16, 11, len(prompts)
    want = g.generate(prompts, n, s, seed=seed).tokens  # the host-sampler test's program

    def start():
        (tok, finite, cache), _ = g._prefill_raw(prompts, jax.random.key(seed), s)
        return DecodeState.start(cache, tok, finite, jax.random.key(seed), n, None)

    no_eos = np.full(b, -1, np.int32)
    st = g.decode_rows(start(), SamplingArrays.of(s, b), no_eos, np.full(b, n, np.int32), stop_at_finish=False)
    np.testing.assert_array_equal(np.asarray(st.tokens), want)
    assert np.asarray(st.done).all() and np.asarray(st.position).tolist() == [n - 1] * b

    limit = np.array([n, 6, n, 9], np.int32)  # row 1 finishes at position 5: the loop stops there
    st = g.decode_rows(start(), SamplingArrays.of(s, b), no_eos, limit, stop_at_finish=True)
    assert int(st.step) == 6 and np.asarray(st.done).tolist() == [False, True, False, False]
    assert np.asarray(st.position).tolist() == [5] * b
    np.testing.assert_array_equal(np.asarray(st.tokens)[:, :6], want[:, :6])


def test_long_prompts_run_in_prefill_blocks_inside_one_program(tiny):
    """Long prompts: the Generator's one prefill program runs them in the model's ``prefill_block``
    blocks (a scan carrying the cache), with the one-pass result: first tokens, states and the
    generated tokens of a ragged batch."""
    cfg, sd, _ = tiny
    rng = np.random.default_rng(3)
    prompts = [rng.integers(2, cfg.vocab_size, n).tolist() for n in (70, 33, 5, 96)]  # bucket 128 = 4 blocks
    whole = Generator(model_from_state_dict(cfg, sd, prefill_block=None), eos_id=None)
    blocked = Generator(model_from_state_dict(cfg, sd, prefill_block=32), eos_id=None)
    (tok_w, cache_w), _ = whole.prefill(prompts)
    (tok_s, cache_s), _ = blocked.prefill(prompts)
    np.testing.assert_array_equal(np.asarray(tok_s), np.asarray(tok_w))
    np.testing.assert_array_equal(np.asarray(cache_s.seqlen), [70, 33, 5, 96])
    np.testing.assert_allclose(np.stack(cache_s.ssm), np.stack(cache_w.ssm), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.stack(cache_s.conv), np.stack(cache_w.conv), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(blocked.generate(prompts, 12).tokens, whole.generate(prompts, 12).tokens)
    assert blocked.trace_counts["prefill"] == 1


def test_sampling_reproducible_and_seed_dependent(broad):
    g = broad[3]
    s = SamplingConfig(greedy=False, temperature=1.5, top_k=50, top_p=0.9)
    prompts = ragged_prompts(broad[0])  # 4 x 16 sampled tokens: the programs of the host-sampler test
    a = g.generate(prompts, 16, s, seed=1).tokens
    b = g.generate(prompts, 16, s, seed=1).tokens
    c = g.generate(prompts, 16, s, seed=2).tokens
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    # top_k=1 is greedy
    k1 = g.generate([[1, 2, 3]], 16, SamplingConfig(greedy=False, temperature=1.0, top_k=1), seed=5).tokens
    np.testing.assert_array_equal(k1, g.generate([[1, 2, 3]], 16).tokens)


def test_top_p_and_top_k_filter_on_device():
    from mamba2_jax.generate import sample_logits

    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05, 0.0]]) + 1e-30)
    keys = jax.random.split(jax.random.key(0), 400)

    def draw(cfg):  # one jitted sampler per config (as in the decode loop), called once per key
        sample = jax.jit(lambda keys, i: sample_logits(logits, keys[i], cfg, 4))
        return np.array([int(sample(keys, i)[0]) for i in range(200)])

    assert set(draw(SamplingConfig(greedy=False, top_p=0.75))) <= {0, 1}
    assert set(draw(SamplingConfig(greedy=False, top_k=3))) <= {0, 1, 2}
    assert 4 not in set(draw(SamplingConfig(greedy=False, temperature=5.0)))  # padded vocab never drawn


def test_eos_stops_each_row(tiny, gen):
    cfg, _, model = tiny
    prompts = ragged_prompts(cfg)  # the free run is the ragged-batch test's (compiled) greedy run
    n = 16
    free = gen.generate(prompts, n).tokens
    eos = int(free[0, 4])  # declare row 0's 5th token to be EOS
    k0 = int(np.nonzero(free[0] == eos)[0][0]) + 1  # it may occur earlier
    g2 = Generator(model, eos_id=eos)
    res = g2.generate(prompts, n)
    assert res.tokens[0, :k0].tolist() == free[0, :k0].tolist()
    assert (res.tokens[0, k0:] == eos).all() and res.num_generated[0] == k0
    for i in range(1, len(prompts)):  # every other row: up to its own first EOS, if any
        hits = np.nonzero(free[i] == eos)[0]
        n1 = hits[0] + 1 if hits.size else n
        assert res.num_generated[i] == n1, i
        assert res.tokens[i, :n1].tolist() == free[i, :n1].tolist(), i


def test_stream_equals_generate(gen):
    g = gen
    s = SamplingConfig(greedy=False, temperature=0.8, top_k=30)
    chunks = list(g.stream([4, 5, 6], 21, chunk=5, sampling=s, seed=3))
    assert sum(chunks, []) == g.generate([[4, 5, 6]], 21, s, seed=3).tokens[0].tolist()
    assert [len(c) for c in chunks] == [1, 5, 5, 5, 5]


@pytest.mark.parametrize("prompts,n,msg", [
    ([[]], 4, "empty"),
    ([], 4, "no prompts"),
    ([[1, 2, 256]], 4, "outside"),
    ([[1, -1]], 4, "outside"),
    ([[1]], 0, "positive"),
    ([[1]], -3, "positive"),
])
def test_bad_inputs(tiny, prompts, n, msg):
    _, _, model = tiny
    with pytest.raises(GenerationError, match=msg):
        Generator(model).generate(prompts, n)


def test_bucket_length():
    assert [bucket_length(n) for n in (1, 16, 17, 100, 513)] == [16, 16, 32, 128, 1024]


def test_scanned_and_unrolled_prefill_agree_with_the_oracle(tiny):
    """Prefill over layers as a Python loop (the default) and as ``lax.scan`` (``scan_layers``): both
    match the float64 oracle's logits and final states, with an initial cache carried in."""
    cfg, sd, model = tiny
    scanned = model_from_state_dict(cfg, sd, scan_layers=True)
    assert not model.backbone.scan_layers and scanned.backbone.scan_layers
    assert model.policy["prefill_layers"] == "unrolled" and scanned.policy["prefill_layers"] == "scan"
    rng = np.random.default_rng(7)
    ids = rng.integers(0, cfg.vocab_size, (2, 37)).astype(np.int32)
    ref_logits, _, (_, ref_ssm) = OracleModel(cfg, sd).run(ids)
    for name, m in (("unrolled", model), ("scan", scanned)):
        _, cache = prefill(m, ids[:, :21])
        logits, cache = prefill(m, ids[:, 21:], cache)
        want = ref_logits[:, 21:]
        assert np.max(np.abs(np.asarray(logits) - want)) / np.max(np.abs(want)) < 2e-5, name
        for got, st in zip(cache.ssm, ref_ssm, strict=True):
            assert np.max(np.abs(np.asarray(got) - st)) / np.max(np.abs(st)) < 2e-5, name


@pytest.mark.parametrize("last_only", [False, True])
def test_blocked_prefill_matches_the_oracle(tiny, last_only):
    """A prompt prefilled in blocks (``prefill_block``: a scan carrying the cache) equals the float64
    oracle, logits and final states, after an initial cache; lengths that are not a multiple of the
    block take the one-pass path and agree too."""
    cfg, sd, _ = tiny
    blocked = model_from_state_dict(cfg, sd, prefill_block=8)
    assert blocked.policy["prefill_block"] == 8
    rng = np.random.default_rng(3)
    ids = rng.integers(0, cfg.vocab_size, (2, 45)).astype(np.int32)  # 5 + 40: the 40 run as 5 blocks of 8
    ref_logits, _, (_, ref_ssm) = OracleModel(cfg, sd).run(ids)
    _, cache = prefill(blocked, ids[:, :5])
    logits, cache = prefill(blocked, ids[:, 5:], cache, last_only=last_only)
    want = ref_logits[:, -1] if last_only else ref_logits[:, 5:]
    assert np.asarray(logits).shape == want.shape
    assert np.max(np.abs(np.asarray(logits) - want)) / np.max(np.abs(want)) < 2e-5
    for got, st in zip(cache.ssm, ref_ssm, strict=True):
        assert np.max(np.abs(np.asarray(got) - st)) / np.max(np.abs(st)) < 2e-5
    assert np.asarray(cache.seqlen).tolist() == [45, 45]


def test_blocked_prefill_with_ragged_lengths_matches_the_oracle(tiny):
    """Right-padded rows of different real lengths, prefilled in blocks (some blocks hold no real
    token of a row): last-position logits and final states equal each row's own float64 run."""
    cfg, sd, _ = tiny
    blocked = model_from_state_dict(cfg, sd, prefill_block=8)
    rng = np.random.default_rng(9)
    lengths = np.array([45, 13, 40], np.int32)
    ids = rng.integers(0, cfg.vocab_size, (3, 48)).astype(np.int32)
    logits, cache = prefill(blocked, ids, lengths=jnp.asarray(lengths), last_only=True)
    oracle = OracleModel(cfg, sd)
    for i, n in enumerate(lengths):
        ref, _, (_, ref_ssm) = oracle.run(ids[i:i + 1, :n])
        want = ref[0, -1]
        assert np.max(np.abs(np.asarray(logits[i]) - want)) / np.max(np.abs(want)) < 2e-5, i
        for got, st in zip(cache.ssm, ref_ssm, strict=True):
            assert np.max(np.abs(np.asarray(got[i]) - st[0])) / np.max(np.abs(st[0])) < 2e-5, i
    assert np.asarray(cache.seqlen).tolist() == lengths.tolist()
    # the conv state too, against the one-pass path (which takes it at each row's end directly;
    # equal to fp32 rounding, as the layers below differ by rounding)
    _, one_pass = prefill(model_from_state_dict(cfg, sd, prefill_block=None), ids, lengths=jnp.asarray(lengths),
                          last_only=True)
    for got, want in zip(cache.conv, one_pass.conv, strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=5e-5, atol=1e-6)


def _untied(tiny):
    """The tiny model (unsharpened: varied greedy tokens) with its LM head untied from the embedding
    (a copy), so that an embedding row can be poisoned without touching the head."""
    cfg = tiny[0].replace(tie_embeddings=False)
    sd = perturbed_sd(tiny[0], seed=4)
    sd["lm_head.weight"] = np.array(sd["backbone.embedding.weight"], copy=True)
    return cfg, sd


def test_nonfinite_logits_raise_naming_step_and_row(tiny):
    """A NaN that reaches the logits is never emitted as a token: GenerationError names the new
    token's index (0: from the prompt) and the row.  The NaN is planted in the embedding row of a
    token t that row 1 generates at index k (clean run): row 1's logits turn NaN at index k + 1;
    row 0, whose prompt holds t, at index 0; row 2 never sees t."""
    cfg, sd = _untied(tiny)
    prompts = [[5, 17, 99], [7, 3, 42, 8], [11, 12]]
    ref = Generator(model_from_state_dict(cfg, sd), eos_id=None).generate(prompts, 10).tokens
    k = next(i for i in range(1, 9) if ref[1, i] not in ref[1, :i] and ref[1, i] not in prompts[1]
             and ref[1, i] not in ref[2] and ref[1, i] not in prompts[2])
    t = int(ref[1, k])
    bad = {**sd, "backbone.embedding.weight": np.array(sd["backbone.embedding.weight"], copy=True)}
    bad["backbone.embedding.weight"][t, 3] = np.nan
    g = Generator(model_from_state_dict(cfg, bad), eos_id=None)
    with pytest.raises(GenerationError, match="new token 0 of row 0") as ei:
        g.generate([[*prompts[0], t], *prompts[1:]], 10)
    e = ei.value
    assert (e.step, e.row, e.rows) == (0, 0, {0: 0, 1: k + 1})
    # the rows' tokens before their non-finite step are the clean ones (rows are independent); row 2
    # is complete
    np.testing.assert_array_equal(e.result.tokens[1, :k + 1], ref[1, :k + 1])
    np.testing.assert_array_equal(e.result.tokens[2], ref[2])
    # every row meets t in its prompt: every row at index 0
    with pytest.raises(GenerationError, match="new token 0 of row 0") as ei:
        g.generate([[t], [1, t], [t, 2, 3]], 10)
    assert ei.value.rows == {0: 0, 1: 0, 2: 0}
    # one row alone: its own step; streaming yields the tokens before it, then raises
    with pytest.raises(GenerationError, match=f"new token {k + 1} of row 0") as ei:
        g.generate([prompts[1]], 10)
    assert (ei.value.step, ei.value.row) == (k + 1, 0)
    got = []
    with pytest.raises(GenerationError, match=f"new token {k + 1} of row 0"):
        for chunk in g.stream(prompts[1], 10, chunk=4):
            got += chunk
    assert got == ref[1, :k + 1].tolist()


def test_stepwise_programs_are_keyed_on_the_graph_definition(tiny):
    """stepwise_greedy's jit cache: a model of the same config, dtype and precision but another
    structure (in_proj split into its parts, as on a mesh) gets its own program, and the same tokens.
    (Keyed on (cfg, dtype, precision), the second model reused the first one's program.)"""
    from mamba2_jax.generate import stepwise_greedy

    cfg, sd, model = tiny
    split = model_from_state_dict(cfg, sd, mesh=make_mesh("data=1,model=1"))
    assert split.backbone.layers[0].mixer.in_proj is None and model.backbone.layers[0].mixer.in_proj is not None
    a = stepwise_greedy(model, [5, 6, 7], 6)
    b = stepwise_greedy(split, [5, 6, 7], 6)
    np.testing.assert_array_equal(a["tokens"], b["tokens"])
    np.testing.assert_allclose(b["step_logits"], a["step_logits"], rtol=1e-5, atol=1e-5)
    c = stepwise_greedy(model_from_state_dict(cfg, sd, scan_chunk_size=8), [5, 6, 7], 6)
    np.testing.assert_array_equal(a["tokens"], c["tokens"])
