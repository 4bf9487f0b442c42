"""Pure SSD functions vs a float64 sequential scan on raw tensors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mamba2_jax import ssd

# The functions under test, each compiled as one program (not run op by op, which compiles every
# primitive separately for every shape).  Chunk size, block and precision are static, as in the model;
# jax.jit's cache shares a program between all calls with equal shapes and static arguments.
ssd_chunked = jax.jit(ssd.ssd_chunked, static_argnames=("chunk_size", "precision", "chunk_loop"))
inter_chunk_scan = jax.jit(ssd.inter_chunk_scan, static_argnames=("block",))
ssd_step = jax.jit(ssd.ssd_step, static_argnames=("precision",))
segsum = jax.jit(ssd.segsum)
discretize_dt = jax.jit(ssd.discretize_dt, static_argnames=("dt_limit",))


def seq_scan64(x, dt, A, B, C, D, init=None):
    b, l, h, p = x.shape
    g, n = B.shape[-2:]
    r = h // g
    st = np.zeros((b, h, p, n)) if init is None else np.array(init, np.float64)
    y = np.zeros((b, l, h, p))
    for t in range(l):
        for hh in range(h):
            gi = hh // r
            st[:, hh] = st[:, hh] * np.exp(dt[:, t, hh] * A[hh])[:, None, None] \
                + dt[:, t, hh][:, None, None] * x[:, t, hh][:, :, None] * B[:, t, gi][:, None, :]
            y[:, t, hh] = (st[:, hh] * C[:, t, gi][:, None, :]).sum(-1) + D[hh] * x[:, t, hh]
    return y, st


def make(l, g=2, h=4, p=8, n=16, seed=0, big_dt=False):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, l, h, p))
    dt = rng.uniform(0.001, 2.0 if big_dt else 0.1, (2, l, h))
    A = -rng.uniform(1, 16, h)
    B = rng.standard_normal((2, l, g, n))
    C = rng.standard_normal((2, l, g, n))
    D = rng.standard_normal(h)
    init = rng.standard_normal((2, h, p, n))
    return x, dt, A, B, C, D, init


def rel(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("l,q", [(1, 8), (7, 8), (8, 8), (9, 8), (29, 8), (50, 16), (64, 64), (70, 64),
                                 (300, 8)])  # 38 chunks: three blocks of the inter-chunk recurrence
@pytest.mark.parametrize("with_init", [False, True])
@pytest.mark.parametrize("chunk_loop", [False, True])  # all chunks at once (CPU) / one at a time (TPU, GPU)
def test_chunked_matches_sequential(l, q, with_init, chunk_loop):
    x, dt, A, B, C, D, init = make(l, seed=l)
    y_ref, s_ref = seq_scan64(x, dt, A, B, C, D, init if with_init else None)
    f = lambda a: jnp.asarray(np.asarray(a, np.float32))
    # without an initial state: an explicit zero state (what ssd_chunked builds for None), so that both cases
    # share one compiled program per shape; initial_state=None itself: test_large_decay_is_stable
    s0 = init if with_init else np.zeros_like(init)
    y, s = ssd_chunked(f(x), f(dt), f(A), f(B), f(C), q, D=f(D), initial_state=f(s0), precision="highest",
                       chunk_loop=chunk_loop)
    assert rel(y, y_ref) < 1e-5
    assert rel(s, s_ref) < 1e-5


def inter_chunk_seq64(states, dA, init):
    prev, s = [], np.array(init, np.float64)
    for z in range(states.shape[1]):
        prev.append(s)
        s = np.exp(dA[:, z])[..., None, None] * s + states[:, z]
    return np.stack(prev, 1), s


@pytest.mark.parametrize("c", [1, 5, 16, 17, 40])
@pytest.mark.parametrize("block", [1, 4, 16])
def test_inter_chunk_blocks_match_sequential(c, block):
    """The two-level (blocked) inter-chunk recurrence vs a float64 chunk-by-chunk loop, with a
    partial last block and one chunk whose decay underflows to exactly 0."""
    rng = np.random.default_rng(c * 100 + block)
    states = rng.standard_normal((2, c, 2, 3, 4, 5))
    dA = -3 * np.abs(rng.standard_normal((2, c, 2, 3)))
    dA[0, c // 2] = -5000.0
    init = rng.standard_normal((2, 2, 3, 4, 5))
    f = lambda a: jnp.asarray(np.asarray(a, np.float32))
    prev, final = inter_chunk_scan(f(states), f(dA), f(init), block=block)
    prev_ref, final_ref = inter_chunk_seq64(states, dA, init)
    assert prev.shape == prev_ref.shape and final.shape == final_ref.shape
    assert rel(prev, prev_ref) < 1e-6 and rel(final, final_ref) < 1e-6


@pytest.mark.parametrize("chunk_loop", [False, True])
def test_large_decay_is_stable(chunk_loop):
    """Large dt·|A| (decays to ~0 inside a chunk): no NaN/inf, still matches float64.  No initial state
    (initial_state=None)."""
    x, dt, A, B, C, D, _ = make(64, seed=3, big_dt=True)
    y_ref, s_ref = seq_scan64(x, dt, A, B, C, D)
    f = lambda a: jnp.asarray(np.asarray(a, np.float32))
    y, s = ssd_chunked(f(x), f(dt), f(A), f(B), f(C), 64, D=f(D), precision="highest", chunk_loop=chunk_loop)
    assert np.isfinite(np.asarray(y)).all()
    assert rel(y, y_ref) < 1e-5 and rel(s, s_ref) < 1e-5


def test_segsum_definition():
    a = np.arange(1.0, 5.0)
    s = np.asarray(segsum(jnp.asarray(a)))
    for i in range(4):
        for j in range(4):
            if i >= j:
                assert s[i, j] == pytest.approx(a[j + 1:i + 1].sum())
            else:
                assert s[i, j] == -np.inf


def test_step_matches_sequential():
    x, dt, A, B, C, D, init = make(5, seed=9)
    y_ref, _ = seq_scan64(x, dt, A, B, C, D, init)
    f = lambda a: jnp.asarray(np.asarray(a, np.float32))
    st = f(init)
    for t in range(5):
        y, st = ssd_step(st, f(x[:, t]), f(dt[:, t]), f(A), f(B[:, t]), f(C[:, t]), D=f(D), precision="highest")
        assert rel(y, y_ref[:, t]) < 1e-5


def test_padding_is_exact_and_chunk_invariant():
    x, dt, A, B, C, D, init = make(37, seed=5)
    f = lambda a: jnp.asarray(np.asarray(a, np.float32))
    outs = [ssd_chunked(f(x), f(dt), f(A), f(B), f(C), q, D=f(D), initial_state=f(init), precision="highest")
            for q in (8, 16, 37, 64)]
    for y, s in outs[1:]:
        assert rel(y, np.asarray(outs[0][0], np.float64)) < 1e-6
        assert rel(s, np.asarray(outs[0][1], np.float64)) < 1e-6
    # q=37 has no padding; q=64 pads 27 positions: identical results
    np.testing.assert_allclose(np.asarray(outs[3][0]), np.asarray(outs[2][0]), rtol=0, atol=2e-6)


def test_discretize_dt_softplus_and_limit():
    raw = jnp.asarray([-30.0, -1.0, 0.0, 3.0, 25.0])
    bias = jnp.zeros(5)
    got = np.asarray(discretize_dt(raw, bias, (0.0, float("inf"))))
    want = np.where(np.asarray(raw) > 20, np.asarray(raw), np.log1p(np.exp(np.asarray(raw, np.float64))))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    got = np.asarray(discretize_dt(raw, bias, (0.01, 2.0)))
    np.testing.assert_allclose(got, np.clip(want, 0.01, 2.0), rtol=1e-6)


def test_segsum_accuracy_on_long_strongly_decaying_chunks():
    """exp(segsum) to fp32 rounding even when |cumsum| is large (a plain cumsum difference is
    off by ~1e-5 here)."""
    rng = np.random.default_rng(0)
    a = -rng.uniform(0, 8.0, (3, 256)).astype(np.float32)
    a64 = a.astype(np.float64)
    cs = np.concatenate([np.zeros((3, 1)), np.cumsum(a64, -1)], -1)
    ref = cs[:, 1:, None] - cs[:, None, 1:]  # sum_{k=j+1}^{i} a_k, exact enough in float64
    mask = np.tril(np.ones((256, 256), bool))
    got = np.asarray(segsum(jnp.asarray(a)), np.float64)
    assert np.all(got[:, ~mask] == -np.inf)
    err = np.abs(np.exp(got) - np.exp(np.where(mask, ref, -np.inf)))[:, mask]
    assert err.max() < 1e-7


@pytest.mark.parametrize("per_headdim", [False, True])
@pytest.mark.parametrize("chunk_loop", [False, True])
def test_skip_D_per_head_and_per_headdim(per_headdim, chunk_loop):
    """D enters as the diagonal of the intra-chunk matrix when it is per head, as a separate term
    when it is per (head, headdim); both equal x·D added to the float64 scan without D."""
    x, dt, A, B, C, D, init = make(29, seed=11)
    Dfull = np.random.default_rng(5).standard_normal((4, 8)) if per_headdim else D
    y0, s_ref = seq_scan64(x, dt, A, B, C, np.zeros(4), init)
    y_ref = y0 + x * (Dfull if per_headdim else Dfull[:, None])
    f = lambda a: jnp.asarray(np.asarray(a, np.float32))
    y, s = ssd_chunked(f(x), f(dt), f(A), f(B), f(C), 8, D=f(Dfull), initial_state=f(init), precision="highest",
                       chunk_loop=chunk_loop)
    assert rel(y, y_ref) < 1e-5 and rel(s, s_ref) < 1e-5
