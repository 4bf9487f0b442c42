"""Perplexity protocols, windows, the JAX scorer, resume, reference plumbing and the experiment."""

import importlib.util
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mamba2_jax.checkpoint import init_state_dict
from mamba2_jax.config import get_preset
from mamba2_jax.eval import refproc
from mamba2_jax.eval import windows as P
from mamba2_jax.eval.scorer import JaxScorer
from mamba2_jax.loading import model_from_state_dict
from mamba2_jax.paths import CONF_DIR

REPO = Path(__file__).resolve().parents[1]
EOT = 0


# ------------------------------------------------------------------------------ lm-eval rolling windows
def test_rolling_windows_hand_examples():
    a, b, c, d, e, f, g = range(10, 17)
    # N=5, max_length=3: first window predicts a,b,c from [EOT]; the last one re-reads b,c as context
    assert P.rolling_windows([a, b, c, d, e], 3, EOT) == [([EOT, a, b, c], 1), ([b, c, d, e], 2)]
    # N=7, max_length=3
    assert P.rolling_windows([a, b, c, d, e, f, g], 3, EOT) == [
        ([EOT, a, b, c], 1), ([c, d, e, f], 1), ([d, e, f, g], 3)]
    assert P.rolling_windows([a], 4, EOT) == [([EOT, a], 1)]
    assert P.rolling_windows([], 4, EOT) == []
    # max_length=1: every token predicted from its predecessor only
    assert P.rolling_windows([a, b, c], 1, EOT) == [([EOT, a], 1), ([a, b], 1), ([b, c], 1)]


@pytest.mark.parametrize("max_length", [1, 2, 3, 5, 8])
def test_rolling_windows_score_every_token_once_with_bounded_context(max_length):
    for n in range(0, 30):
        toks = list(range(100, 100 + n))  # unique values identify positions
        full = [EOT] + toks
        seen = []
        for ids, sf in P.rolling_windows(toks, max_length, EOT):
            assert len(ids) <= max_length + 1 and 1 <= sf < len(ids)
            for t in range(sf, len(ids)):
                ctx, tgt = ids[:t], ids[t]
                pos = tgt - 100
                assert 1 <= len(ctx) <= max_length
                assert ctx == full[pos + 1 - len(ctx): pos + 1]  # the true preceding tokens
                seen.append(pos)
        assert sorted(seen) == list(range(n)) and len(seen) == len(set(seen))


def _lm_eval_pairs(tokens, max_len, prefix):
    """lm-eval's construction re-derived step by step (v0.4.x semantics, context_len=1): rolling
    (input, pred) pairs, make_disjoint_window, then HFLM's ``(context + continuation)[-(max_len+1):][:-1]``.
    Returns (model input, scored continuation) per window."""
    out = []
    if not tokens:
        return out
    first = min(max_len, len(tokens))
    pairs = [([prefix] + tokens[: first - 1], tokens[:first])]
    done = first
    while done < len(tokens):
        p = min(len(tokens) - done, max_len)  # pred_len = max_len - context_len + 1
        end = done + p
        pairs.append((tokens[end - max_len - 1: end - 1], tokens[end - p: end]))
        done += p
    for inp, pred in pairs:
        ctx = inp[: len(inp) - (len(pred) - 1)]
        full = (ctx + pred)[-(max_len + 1):]
        out.append((full[:-1], pred))
    return out


@pytest.mark.parametrize("max_length", [1, 2, 4, 7])
def test_rolling_windows_equal_lm_eval_construction(max_length):
    for n in range(0, 40):
        toks = list(range(100, 100 + n))
        ours = P.rolling_windows(toks, max_length, EOT)
        ref = _lm_eval_pairs(toks, max_length, EOT)
        assert [(ids[:-1], ids[sf:]) for ids, sf in ours] == ref


def test_lm_eval_windows_pack_and_doc_index():
    docs = [[5, 6, 7, 8, 9], [], [3]]
    w = P.lm_eval_windows(docs, max_length=3)
    assert w.width == 4 and len(w) == 3
    assert w.input_ids.dtype == np.int32 and w.lengths.dtype == np.int32
    assert w.input_ids.tolist() == [[0, 5, 6, 7], [6, 7, 8, 9], [0, 3, 0, 0]]
    assert w.lengths.tolist() == [4, 4, 2] and w.score_from.tolist() == [1, 2, 1]
    assert w.doc_index.tolist() == [0, 0, 2]
    assert w.total_targets == 6
    assert w.targets(1) == [([6, 7], 8), ([6, 7, 8], 9)]


# ------------------------------------------------------------------------------ strided windows
def test_strided_windows_hand_examples():
    toks = list(range(10))
    w = P.strided_windows(toks, max_length=4, stride=2)
    assert [w.input_ids[i, : w.lengths[i]].tolist() for i in range(len(w))] == [
        [0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 7], [6, 7, 8, 9]]
    assert w.score_from.tolist() == [1, 2, 2, 2]
    # stride == max_length (default shape): disjoint windows, each window's first token unscored
    w = P.strided_windows(toks, max_length=4, stride=4)
    assert w.lengths.tolist() == [4, 4, 2] and w.score_from.tolist() == [1, 1, 1]
    scored = sorted(t for i in range(len(w)) for _, t in w.targets(i))
    assert scored == [1, 2, 3, 5, 6, 7, 9]
    with pytest.raises(ValueError, match="stride"):
        P.strided_windows(toks, max_length=4, stride=5)


@pytest.mark.parametrize("max_length,stride", [(4, 1), (4, 3), (5, 5), (8, 3), (2, 2)])
def test_strided_windows_score_once_with_bounded_context(max_length, stride):
    for n in range(0, 25):
        toks = list(range(100, 100 + n))
        w = P.strided_windows(toks, max_length, stride)
        seen = []
        for i in range(len(w)):
            for ctx, tgt in w.targets(i):
                pos = tgt - 100
                assert 1 <= len(ctx) <= max_length - 1
                assert ctx == toks[pos - len(ctx): pos]
                seen.append(pos)
        assert len(seen) == len(set(seen))
        if stride < max_length:
            assert sorted(seen) == list(range(1, n))  # everything but the very first token
        assert w.meta["n_stream_tokens"] == n


def test_windows_file_roundtrip_and_contract(tmp_path):
    w = P.lm_eval_windows([[5, 6, 7, 8, 9], [1, 2]], max_length=3, meta={"note": "x"})
    p = w.save(tmp_path / "w.npz")
    with np.load(p, allow_pickle=False) as z:  # what a reference backend reads
        assert z["input_ids"].dtype == np.int32 and z["input_ids"].shape == (3, 4)
        assert z["lengths"].shape == (3,) and z["score_from"].shape == (3,)
    w2 = P.Windows.load(p)
    assert w2.sha256() == w.sha256() and w2.meta["note"] == "x" and w2.meta["protocol"] == "lm_eval_rolling"
    assert np.array_equal(w2.input_ids, w.input_ids)


def test_aggregate_metrics_by_hand():
    w = P.lm_eval_windows([[5, 6, 7, 8, 9], [1, 2]], max_length=3)
    sc = P.WindowScores(np.array([-3.0, -2.0, -1.0]), w.n_targets)
    m = P.aggregate(w, sc, doc_words=[4, 6], doc_bytes=[20, 30])
    assert m["sum_loglik"] == -6.0 and m["n_tokens"] == 7
    assert m["word_perplexity"] == pytest.approx(math.exp(6 / 10))
    assert m["byte_perplexity"] == pytest.approx(math.exp(6 / 50))
    assert m["bits_per_byte"] == pytest.approx(6 / 50 / math.log(2))
    assert m["token_perplexity"] == pytest.approx(math.exp(6 / 7))
    with pytest.raises(ValueError, match="do not match"):
        P.aggregate(w, P.WindowScores(np.zeros(3), w.n_targets + 1))


# ------------------------------------------------------------------------------ JAX scorer
def _tiny(seed=1):
    """Random tiny model whose embedding is scaled ×50 so that its next-token distributions are far
    from uniform (log-probabilities spread over tens of nats): a sharper check than near-uniform logits."""
    cfg = get_preset("tiny")
    sd = init_state_dict(cfg, seed=seed)
    sd["backbone.embedding.weight"] = sd["lm_head.weight"] = sd["backbone.embedding.weight"] * 50.0
    return model_from_state_dict(cfg, sd)


@pytest.fixture(scope="module")
def tiny_model():
    return _tiny()


def _docs(seed=0, lens=(5, 40, 17, 0, 64, 3, 33)):  # with max_length 16: window lengths {4, 6, 17}
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 250, n).tolist() for n in lens]


def _direct_loglik(model, w: P.Windows) -> np.ndarray:
    """Each window on its own, unpadded: full logits → fp32 log_softmax → float64 sum over targets."""
    from flax import nnx

    graphdef, state = nnx.split(model)

    @jax.jit
    def log_softmax(state, ids):
        logits, _ = nnx.merge(graphdef, state)(ids)
        return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)

    out = []
    for i in range(len(w)):
        ids = w.input_ids[i, : w.lengths[i]]
        lp = np.asarray(log_softmax(state, jnp.asarray(ids[None]))[0], np.float64)
        out.append(sum(lp[t - 1, ids[t]] for t in range(w.score_from[i], w.lengths[i])))
    return np.array(out)


def test_pipeline_equals_direct_log_softmax(tiny_model):
    w = P.lm_eval_windows(_docs(), max_length=16)
    scorer = JaxScorer(tiny_model, batch_size=3, bucket=8, logits_chunk=8)  # two buckets: widths 9 and 17
    sc = scorer.score(w, progress=False)
    assert sorted(scorer.shapes_compiled) == [(3, 9), (3, 17)]
    direct = _direct_loglik(tiny_model, w)
    np.testing.assert_allclose(sc.loglik, direct, rtol=1e-6, atol=1e-5)
    assert np.array_equal(sc.n_scored, w.n_targets)
    lp = sc.loglik / np.maximum(w.n_targets, 1)
    assert lp.max() < -2 * math.log(250)  # peaked distributions, far from uniform (random targets: tens of nats)
    m = P.aggregate(w, sc)
    assert m["token_perplexity"] == pytest.approx(math.exp(-direct.sum() / w.total_targets), rel=1e-6)
    # strided windows (overlapping: stride < max_length) through the same compiled shapes
    toks = _docs(1, (36,))[0]
    ws = P.strided_windows(toks, max_length=16, stride=10)
    assert ws.lengths.tolist() == [16, 16, 16] and ws.score_from.tolist() == [1, 6, 6]
    sc2 = scorer.score(ws, progress=False)
    np.testing.assert_allclose(sc2.loglik, _direct_loglik(tiny_model, ws), rtol=1e-6, atol=1e-5)


def test_scores_match_the_float64_oracle_under_the_prefill_policy():
    """The scorer goes through the model's own prefill entry (``hidden_states``: blocks of
    ``prefill_block`` when the policy says so, as generation runs) and the shared chunked
    log-softmax (``token_logprobs``): its per-window log-likelihoods equal the float64 oracle's
    (mamba2_jax/eval/oracle.py, token by token, float64 log-softmax), with one pass and with blocks
    of 8 tokens (the 17-wide bucket's 16 inputs run as two blocks)."""
    from mamba2_jax.eval.oracle import OracleModel

    cfg = get_preset("tiny")
    sd = init_state_dict(cfg, seed=1)
    sd["backbone.embedding.weight"] = sd["lm_head.weight"] = sd["backbone.embedding.weight"] * 50.0
    w = P.lm_eval_windows(_docs(), max_length=16)
    oracle = OracleModel(cfg, sd)
    want = []
    for i in range(len(w)):
        ids = w.input_ids[i, : w.lengths[i]]
        logits = oracle.run(ids[None])[0][0]
        lp = logits - logits.max(-1, keepdims=True)
        lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
        want.append(sum(lp[t - 1, ids[t]] for t in range(w.score_from[i], w.lengths[i])))
    for block in (None, 8):
        model = model_from_state_dict(cfg, sd, prefill_block=block)
        assert model.prefill_block == block
        sc = JaxScorer(model, batch_size=3, bucket=8, logits_chunk=8).score(w, progress=False)
        np.testing.assert_allclose(sc.loglik, want, rtol=1e-5, atol=1e-4, err_msg=f"prefill_block={block}")


class _Killed(Exception):
    pass


def test_resume_after_interruption_equals_uninterrupted(tiny_model, tmp_path):
    w = P.lm_eval_windows(_docs(3), max_length=8)
    n = len(w)
    assert n >= 8
    full = JaxScorer(tiny_model, batch_size=2, bucket=8, logits_chunk=8).score(w, progress=False)
    state = tmp_path / "progress.npz"
    fp = {"model": "tiny-seed1"}

    def kill_after(k):
        def cb(done):
            if done >= k:
                raise _Killed
        return cb

    with pytest.raises(_Killed):
        JaxScorer(tiny_model, batch_size=2, bucket=8, logits_chunk=8).score(
            w, state_path=state, fingerprint=fp, progress=False, on_batch=kill_after(4))
    with np.load(state) as z:
        assert int(z["done"].sum()) == 4
    scorer = JaxScorer(tiny_model, batch_size=2, bucket=8, logits_chunk=8)
    seen = []
    orig = scorer.token_logprobs
    scorer.token_logprobs = lambda ids, L, F: (seen.append(len(L)), orig(ids, L, F))[1]
    res = scorer.score(w, state_path=state, fingerprint=fp, progress=False)
    assert sum(seen) == n - 4 and res.info["resumed_windows"] == 4
    assert np.array_equal(res.loglik, full.loglik) and np.array_equal(res.n_scored, full.n_scored)
    # a checkpoint of another model/fingerprint, or an unreadable one, is never trusted
    seen.clear()
    res2 = scorer.score(w, state_path=state, fingerprint={"model": "other"}, progress=False)
    assert sum(seen) == n and np.array_equal(res2.loglik, full.loglik)
    state.write_bytes(b"garbage")
    seen.clear()
    assert np.array_equal(scorer.score(w, state_path=state, fingerprint=fp, progress=False).loglik, full.loglik)
    assert sum(seen) == n


_KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from mamba2_jax.eval import windows as P
    from mamba2_jax.eval.scorer import JaxScorer
    from mamba2_jax.checkpoint import init_state_dict
    from mamba2_jax.loading import model_from_state_dict
    from mamba2_jax.config import get_preset
    cfg = get_preset("tiny")
    sd = init_state_dict(cfg, seed=1)
    sd["backbone.embedding.weight"] = sd["lm_head.weight"] = sd["backbone.embedding.weight"] * 50.0
    m = model_from_state_dict(cfg, sd)  # = _tiny() in the test module
    rng = np.random.default_rng(3)
    docs = [rng.integers(0, 250, n).tolist() for n in (5, 40, 17, 0, 64, 3, 33)]
    w = P.lm_eval_windows(docs, max_length=8)
    def cb(done):
        if done >= int(sys.argv[2]):
            os.kill(os.getpid(), signal.SIGKILL)
    scorer = JaxScorer(m, batch_size=2, bucket=8, logits_chunk=8)
    # batches of 2 windows (one device): the kill comes right after the 6th window is checkpointed
    assert scorer.batch_size == 2, f"batch size {scorer.batch_size} on {len(scorer.devices)} devices"
    scorer.score(w, state_path=sys.argv[1], fingerprint={"model": "tiny-seed1"}, progress=False, on_batch=cb)
""")


@pytest.mark.integration
def test_resume_after_sigkill(tiny_model, tmp_path):
    """A real kill -9 after 6 windows: the atomic checkpoint survives and the resumed run equals
    the uninterrupted one, without recomputing the checkpointed windows."""
    state = tmp_path / "progress.npz"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    r = subprocess.run([sys.executable, "-c", _KILL_SCRIPT, str(state), "6"], env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == -9, r.stderr[-2000:]
    assert not list(tmp_path.glob("*.tmp"))
    w = P.lm_eval_windows(_docs(3), max_length=8)
    scorer = JaxScorer(tiny_model, batch_size=2, bucket=8, logits_chunk=8)
    res = scorer.score(w, state_path=state, fingerprint={"model": "tiny-seed1"}, progress=False)
    assert res.info["resumed_windows"] == 6 and res.info["computed_windows"] == len(w) - 6
    full = JaxScorer(tiny_model, batch_size=2, bucket=8, logits_chunk=8).score(w, progress=False)
    np.testing.assert_array_equal(res.loglik, full.loglik)


@pytest.mark.integration
def test_sharded_over_two_devices_matches_one(tmp_path):
    script = textwrap.dedent("""
        import sys, jax, numpy as np
        jax.config.update("jax_default_matmul_precision", "highest")
        from mamba2_jax.eval import windows as P
        from mamba2_jax.eval.scorer import JaxScorer
        from mamba2_jax.checkpoint import init_state_dict
        from mamba2_jax.loading import model_from_state_dict
        from mamba2_jax.config import get_preset
        assert len(jax.devices()) == 2
        cfg = get_preset("tiny")
        m = model_from_state_dict(cfg, init_state_dict(cfg, seed=1))
        rng = np.random.default_rng(0)
        w = P.lm_eval_windows([rng.integers(0, 250, n).tolist() for n in (5, 40, 17, 64, 3)], max_length=16)
        two = JaxScorer(m, batch_size=3, bucket=16, logits_chunk=8).score(w, progress=False)
        one = JaxScorer(m, batch_size=3, bucket=16, logits_chunk=8, devices=jax.devices()[:1])
        one = one.score(w, progress=False)
        assert two.info["n_devices"] == 2 and two.info["batch_size"] == 4
        np.testing.assert_allclose(two.loglik, one.loglik, rtol=1e-6)
        print("OK")
    """)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    r = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]


# ------------------------------------------------------------------------------ reference contract
_FAKE_REF = textwrap.dedent("""
    import argparse, pathlib, numpy as np
    ap = argparse.ArgumentParser()
    for a in ("--backend", "--model", "--windows", "--out"):
        ap.add_argument(a, required=True)
    ap.add_argument("--threads")
    args = ap.parse_args()
    calls = pathlib.Path(args.model) / "calls.txt"
    calls.write_text(calls.read_text() + "x" if calls.exists() else "x")
    z = np.load(args.windows)
    n = (z["lengths"] - z["score_from"]).astype(np.int64)
    if args.backend == "bad":
        n = n + 1
    np.savez(args.out, loglik=-0.5 * n.astype(np.float64), n_scored=n, meta_json=np.array('{"fake": true}'))
""")


@pytest.fixture
def fake_ref(tmp_path, monkeypatch):
    from helpers import fake_reference_package

    return fake_reference_package(tmp_path, "fakeref", _FAKE_REF, monkeypatch)


@pytest.mark.integration
def test_reference_subprocess_contract(tmp_path, fake_ref):
    w = P.lm_eval_windows(_docs(), max_length=16)
    wp = w.save(tmp_path / "w.npz")
    out = tmp_path / "runs" / "fake.out.npz"
    sc = refproc.run_reference("mamba_ssm_ref_cpu", fake_ref, wp, out, module="fakeref.score", cwd=tmp_path)
    np.testing.assert_array_equal(sc.n_scored, w.n_targets)
    np.testing.assert_allclose(sc.loglik, -0.5 * w.n_targets)
    assert sc.info["backend_extra"]["meta"] == {"fake": True}
    # same windows again: the stored output is reused, the backend is not rerun
    sc2 = refproc.run_reference("mamba_ssm_ref_cpu", fake_ref, wp, out, module="fakeref.score", cwd=tmp_path)
    assert sc2.info["reused"] and (fake_ref / "calls.txt").read_text() == "x"
    with pytest.raises(refproc.ReferenceFailed, match="n_scored"):
        refproc.run_reference("bad", fake_ref, wp, tmp_path / "bad.npz", module="fakeref.score", cwd=tmp_path)


def test_missing_reference_module_is_explained(tmp_path):
    w = P.lm_eval_windows(_docs(), max_length=16)
    wp = w.save(tmp_path / "w.npz")
    with pytest.raises(refproc.ReferenceUnavailable, match=r"python -m nonexistent_ref\.score") as e:
        refproc.run_reference("transformers", tmp_path, wp, tmp_path / "o.npz", module="nonexistent_ref.score",
                        cwd=tmp_path)
    assert "--windows W.npz --out OUT.npz" in str(e.value)


# ------------------------------------------------------------------------------ the experiment, end to end
def _load_experiment():
    spec = importlib.util.find_spec("mamba2_jax.eval.perplexity")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.integration
def test_experiment_end_to_end_smoke(tmp_path, data_dir, fake_ref, monkeypatch):
    from omegaconf import OmegaConf

    exp = _load_experiment()
    cfg = OmegaConf.load(CONF_DIR / "perplexity.yaml")
    cfg.pop("hydra")
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([
        "limit=1", f"paths.data_dir={data_dir}", f"paths.work_dir={tmp_path / 'work'}",
        f"paths.results_dir={tmp_path / 'results'}", f"paths.tiny_wikitext={tmp_path / 'no-tiny'}",
        "lm_eval_rolling.max_length=256", "strided.max_length=256", "strided.stride=256",
        "jax.bucket=256", "jax.batch_size=2", "backends=[jax_fp32,jax_bf16,mamba_ssm_ref_cpu]",
        "reference.module=fakeref.score", "reference.python.mamba_ssm_ref_cpu=null", "progress=false",
        "synthetic.d_model=32", "synthetic.n_layer=1", "synthetic.chunk_size=32",
    ]))
    monkeypatch.setenv("MAMBA2_JAX_DATA", str(data_dir))
    res = exp.evaluate(cfg)
    assert [r["protocol"] for r in res] == ["lm_eval_rolling", "strided"]
    lm, st = res
    assert lm["model"]["synthetic"] and "synthetic" in lm["model"]["weights"]
    assert lm["scope"] == "first 1 of 62 documents" and st["scope"].startswith("first 1 of ")
    b = lm["backends"]
    assert all(b[k]["status"] == "ok" for k in ("jax_fp32", "jax_bf16", "mamba_ssm_ref_cpu"))
    assert b["jax_fp32"]["n_words"] == b["mamba_ssm_ref_cpu"]["n_words"] > 0
    assert b["jax_fp32"]["n_tokens"] == lm["windows"]["n_targets"]
    # the fake reference says log p = -0.5 per token: word ppl = exp(0.5 tokens / words)
    ref_word = math.exp(0.5 * b["jax_fp32"]["n_tokens"] / b["jax_fp32"]["n_words"])
    assert b["mamba_ssm_ref_cpu"]["word_perplexity"] == pytest.approx(ref_word)
    d = lm["comparison"]["vs_reference"]["jax_fp32"]["word_perplexity"]
    assert d["delta"] == pytest.approx(b["jax_fp32"]["word_perplexity"] - ref_word)
    assert "bf16_vs_fp32" in lm["comparison"]
    rdir = tmp_path / "results"
    j = json.loads((rdir / lm["model"]["label"] / "lm_eval_rolling-limit1.json").read_text())
    assert j["provenance"]["git"]["sha"] and j["data"]["matches_known_rows"]
    assert Path(j["windows"]["path"]).exists()
    assert not (rdir / "summary.md").exists()  # the table is paper/tables/perplexity.md, rendered once
    # second run: everything comes from the checkpoints / stored reference outputs
    res2 = exp.evaluate(cfg)
    assert res2[0]["backends"]["jax_fp32"]["run"]["resumed_windows"] == lm["windows"]["n_windows"]
    assert res2[0]["backends"]["jax_fp32"]["word_perplexity"] == b["jax_fp32"]["word_perplexity"]
    assert res2[0]["backends"]["mamba_ssm_ref_cpu"]["run"]["reused"]


def test_default_model_switches_to_tiny_wikitext_when_present(tmp_path):
    from omegaconf import OmegaConf

    from mamba2_jax.checkpoint import write_checkpoint

    exp = _load_experiment()
    cfg = OmegaConf.create({"paths": {"tiny_wikitext": str(tmp_path / "tiny"), "work_dir": str(tmp_path / "w"),
                                      "checkpoints_dir": str(tmp_path / "ck")},
                            "synthetic": {"seed": 0, "d_model": 16, "n_layer": 1, "d_state": 8, "headdim": 8,
                                          "chunk_size": 16}})
    spec = exp.resolve_model("auto", cfg)
    assert spec["synthetic"] and "synthetic weights" in spec["weights"]
    assert (Path(spec["dir"]) / "SYNTHETIC_WEIGHTS.txt").exists()
    mcfg = get_preset("tiny")
    write_checkpoint(mcfg, init_state_dict(mcfg), tmp_path / "tiny")
    spec = exp.resolve_model("auto", cfg)
    assert spec["label"] == "mamba2-tiny-wikitext" and not spec["synthetic"]
    assert spec["dir"] == str(tmp_path / "tiny")
    assert exp.model_from_group(OmegaConf.create({"name": "x", "hf_id": "state-spaces/mamba2-370m",
                                                 "checkpoint": None})) == "mamba2-370m"
    with pytest.raises(ValueError, match="random-weight"):
        exp.model_from_group(OmegaConf.create({"name": "tiny", "hf_id": None, "checkpoint": None}))


@pytest.mark.integration
def test_make_perplexity_tables_rebuilds_the_committed_table(tmp_path):
    """``make perplexity-tables`` runs a command that exists (it once called a function that did not)
    and that rebuilds the committed perplexity table from the committed results byte for byte (the
    command is run as make prints it, with its output sent to a temporary directory)."""
    dry = subprocess.run(["make", "-s", "-n", "perplexity-tables", "-o", ".venv/.installed", "PY=python"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    # the recipe's one command; a make run from inside another make (CI's `make test`, `make
    # fresh-make-test`) may print more lines around it (one fresh-clone run did), so it is picked out
    lines = [ln.split() for ln in dry.stdout.splitlines() if ln.strip()]
    cmds = [ln for ln in lines if ln[1:3] == ["-m", "paper.make_tables"]]
    assert len(cmds) == 1, f"make -n printed:\n{dry.stdout}"
    (cmd,) = cmds
    assert cmd[0] == "python", cmd
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, *cmd[1:], "--out", str(tmp_path)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ("perplexity.md", "perplexity.tex"):
        assert (tmp_path / name).read_text() == (REPO / "paper" / "tables" / name).read_text(), name
