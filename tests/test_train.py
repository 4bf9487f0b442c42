"""Training library (mamba2_jax.train): loss decreases, runs are bitwise deterministic, batching
and evaluation helpers behave."""

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mamba2_jax.checkpoint import init_state_dict
from mamba2_jax.config import Mamba2Config
from mamba2_jax.eval.data import split_articles
from mamba2_jax.eval.oracle import OracleModel, rel_err
from mamba2_jax.generate import stepwise_greedy
from mamba2_jax.loading import model_from_state_dict, state_dict_from_model
from mamba2_jax.train import _STEPS, TokenBatcher, TrainConfig, Trainer, lm_loss, weight_decay_mask

# small vocabulary, two groups (per-group B/C path), several chunks per sequence
CFG = Mamba2Config(name="train-test", d_model=32, n_layer=2, vocab_size=61, pad_vocab_size_multiple=16,
                   d_state=16, headdim=16, ngroups=2, chunk_size=16)
TC = TrainConfig(steps=12, batch_size=4, seq_len=48, lr=1e-2, warmup_steps=2, xent_chunk=64, eval_every=0)


def _synthetic_tokens(n=6000, seed=0):
    """A learnable stream: noisy repeats of a short random motif."""
    rng = np.random.default_rng(seed)
    motif = rng.integers(2, CFG.vocab_size, 7)
    toks = np.tile(motif, n // len(motif) + 1)[:n].copy()
    flip = rng.random(n) < 0.1
    toks[flip] = rng.integers(2, CFG.vocab_size, flip.sum())
    return toks.astype(np.int32)


def _run():
    _STEPS.clear()  # compile afresh: determinism across compilations, not just executions
    tr = Trainer(CFG, TC)
    hist = tr.fit(TokenBatcher(_synthetic_tokens(), TC.seq_len, TC.batch_size, seed=TC.seed))
    return tr, np.array([h["loss"] for h in hist])


def test_training_decreases_loss_and_is_deterministic():
    tr1, l1 = _run()
    _, l2 = _run()
    assert l1.shape == (TC.steps,) and np.all(np.isfinite(l1))
    assert abs(l1[0] - math.log(CFG.padded_vocab_size)) < 0.3  # starts near uniform
    assert l1[-3:].mean() < l1[:3].mean() - 0.5, l1
    np.testing.assert_array_equal(l1, l2)  # bitwise equal across runs
    # the trained weights are an ordinary inference model: its prefill and step logits equal the float64
    # oracle's on the exported state dict (teacher-forced with the model's own greedy tokens), and each
    # greedy token is the oracle's argmax over the real vocabulary
    model = tr1.model()
    prompt = [3, 4, 5]
    out = stepwise_greedy(model, prompt, 6)
    toks = out["tokens"].tolist()
    ref, _, _ = OracleModel(CFG, state_dict_from_model(model)).run(np.array([prompt + toks[:-1]]))
    ref = ref[0, len(prompt) - 1:]
    assert len(toks) == 6 and rel_err(out["step_logits"], ref) <= 1e-5
    assert toks == np.argmax(ref[:, :CFG.vocab_size], -1).tolist()


def _jitted_lm_loss(model, toks, weights=None, xent_chunk=1024):
    """``lm_loss`` of ``model`` as one jitted program traced from this very model, as training runs it
    (called eagerly, op by op, it compiles every primitive of the prefill separately)."""
    graphdef, state = nnx.split(model)
    return jax.jit(lambda s, t, w: lm_loss(nnx.merge(graphdef, s), t, w, xent_chunk))(state, toks, weights)


def test_lm_loss_matches_full_logits():
    model = model_from_state_dict(CFG, init_state_dict(CFG, seed=1))
    toks = jnp.asarray(np.random.default_rng(1).integers(0, CFG.vocab_size, (2, 37)), jnp.int32)
    w = np.zeros((2, 36), np.float32)
    w[0, :10] = 1
    graphdef, state = nnx.split(model)

    @jax.jit
    def losses(state, toks, w):
        """The full-logits references and every chunked loss, in one program (compiled once)."""
        m = nnx.merge(graphdef, state)
        logits, _ = m(toks[:, :-1])
        lp = logits - jnp.max(logits, -1, keepdims=True)
        lp = lp - jnp.log(jnp.sum(jnp.exp(lp), -1, keepdims=True))
        ref = -jnp.mean(jnp.take_along_axis(lp, toks[:, 1:, None], -1))
        ref_w = -jnp.mean(jnp.take_along_axis(lp, toks[:, 1:, None], -1)[0, :10])
        # chunks that do and do not divide the token count
        return ref, ref_w, {c: lm_loss(m, toks, xent_chunk=c) for c in (7, 16, 1000)}, lm_loss(m, toks, w, 16)

    ref, ref_w, chunked, weighted = losses(state, toks, jnp.asarray(w))
    for chunk in (7, 16, 1000):
        np.testing.assert_allclose(float(chunked[chunk]), float(ref), rtol=1e-5, err_msg=f"xent_chunk={chunk}")
    np.testing.assert_allclose(float(weighted), float(ref_w), rtol=1e-5)


def test_batcher_deterministic_and_covers_epochs():
    toks = np.arange(1000, dtype=np.int32)
    b1, b2 = TokenBatcher(toks, 15, 8, seed=3), TokenBatcher(toks, 15, 8, seed=3)
    for s in (0, 5, 7, 20):  # 62 windows per epoch: steps 7+ straddle / pass epoch boundaries
        x = b1.batch(s)
        assert x.shape == (8, 16) and x.dtype == np.int32
        np.testing.assert_array_equal(x, b2.batch(s))
        np.testing.assert_array_equal(np.diff(x, axis=1), 1)  # contiguous windows
    first_epoch = np.concatenate([b1.batch(s)[:, 0] for s in range(7)])[:b1._epoch_windows(0).size]
    assert len(set(first_epoch.tolist())) == len(first_epoch)  # no window repeats within an epoch
    assert not np.array_equal(TokenBatcher(toks, 15, 8, seed=4).batch(0), b1.batch(0))


def test_split_articles():
    rows = ["", " = A = \n", "", " text a \n", " = = Sub = = \n", " more a \n", " = B = \n", " text b \n"]
    arts = split_articles(rows)
    assert arts == [" = A = \n text a \n = = Sub = = \n more a \n", " = B = \n text b \n"]


def test_weight_decay_mask():
    tr = Trainer(CFG, TrainConfig(steps=1))
    flat = {"/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path): v
            for path, v in __import__("jax").tree_util.tree_leaves_with_path(weight_decay_mask(tr.params))}
    decayed = {k for k, v in flat.items() if v}
    assert any("embedding" in k for k in decayed) and any("in_proj" in k for k in decayed)
    assert not any(n in k for k in decayed for n in ("A_log", "dt_bias", "/D/", "norm", "conv"))


def test_compiled_steps_are_keyed_on_the_graph_definition():
    """The train/eval programs are cached per model structure: a model of the same config and
    training config but another structure (in_proj split into its parts, as on a mesh) gets its own
    program and the same loss.  (Keyed on (cfg, tc), it reused the first model's program.)"""
    from mamba2_jax.sharding import make_mesh
    from mamba2_jax.train import _compiled_steps

    sd = init_state_dict(CFG, seed=1)
    toks = jnp.asarray(np.random.default_rng(2).integers(0, CFG.vocab_size, (2, 33)), jnp.int32)
    losses = []
    for model in (model_from_state_dict(CFG, sd), model_from_state_dict(CFG, sd, mesh=make_mesh("data=1,model=1"))):
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        _, eval_step = _compiled_steps(graphdef, TC)
        losses.append(float(eval_step(params, rest, toks, None)))
        np.testing.assert_allclose(losses[-1], float(_jitted_lm_loss(model, toks, xent_chunk=TC.xent_chunk)),
                                   rtol=1e-6)
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
