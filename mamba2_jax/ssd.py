"""State Space Duality (SSD) math for Mamba-2, as pure JAX functions (no Flax).

Notation (mamba_ssm v2.2.2): b batch, l length, h heads, p headdim, g groups, n d_state,
r = h // g heads per group, c chunks, q chunk size.

The recurrence being computed, per head, with dt already passed through softplus/clamp:

    state_t = exp(dt_t * A) * state_{t-1} + dt_t * x_t ⊗ B_t       (p × n)
    y_t     = state_t · C_t + D * x_t

``ssd_chunked`` evaluates it in parallel over chunks (the "dual" quadratic form inside a chunk,
a linear recurrence across chunks), with einsums and one ``lax.scan`` over chunks.  ``ssd_step`` is the O(1) update used
for decoding.  All state arithmetic is float32 regardless of the dtype of the inputs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["segsum", "ssd_chunked", "ssd_step", "step_block", "discretize_dt", "inter_chunk_scan"]

F32 = jnp.float32
DA_FLOOR = 200.0


def discretize_dt(dt_raw: jax.Array, dt_bias: jax.Array, dt_limit: tuple[float, float]) -> jax.Array:
    """``dt = clamp(softplus(dt_raw + dt_bias), *dt_limit)`` in float32.

    Softplus uses the same threshold (20) as torch / the Triton kernels: above it dt = x.
    The clamp is skipped for the default (0, inf) limit, exactly as mamba_ssm skips it.
    """
    x = dt_raw.astype(F32) + dt_bias.astype(F32)
    dt = jnp.where(x <= 20.0, jax.nn.softplus(jnp.minimum(x, 20.0)), x)
    lo, hi = dt_limit
    if (lo, hi) != (0.0, float("inf")):
        dt = jnp.clip(dt, lo, hi)
    return dt


def _two_sum(a, b):
    """Error-free transformation: a + b = s + e exactly (Knuth's TwoSum)."""
    s = a + b
    bb = s - a
    e = (a - (s - bb)) + (b - bb)
    return s, e


def compensated_cumsum(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Prefix sums along the last axis as a (hi, lo) float pair: hi + lo is the prefix sum to about
    one rounding of its own magnitude, however long the axis.  An associative scan of TwoSum:
    O(q log q) work."""

    def combine(x, y):
        s, e = _two_sum(x[0], y[0])
        return s, e + x[1] + y[1]

    return jax.lax.associative_scan(combine, (a, jnp.zeros_like(a)), axis=-1)


def segsum(a: jax.Array) -> jax.Array:
    """Stable segment sum along the last axis.

    ``out[..., i, j] = sum_{k=j+1}^{i} a[..., k]`` for ``i >= j`` and ``-inf`` above the diagonal.

    Formed as a difference of prefix sums, but of *compensated* prefix sums (hi, lo): the
    difference ``(hi_i - hi_j) + (lo_i - lo_j)`` is accurate to about one rounding of the segment
    sum itself, so long chunks with large |dt·A| lose nothing to cancellation (a plain
    ``cumsum[i] - cumsum[j]`` carries an error of order eps·|cumsum|).  O(q²) work and memory;
    the textbook stable form, a masked cumulative sum over a (q, q) matrix, costs O(q³) on
    XLA:CPU (its cumsum lowers to a reduce-window) and took ~30% of prefill time.
    """
    q = a.shape[-1]
    hi, lo = compensated_cumsum(a.astype(F32))
    s = (hi[..., :, None] - hi[..., None, :]) + (lo[..., :, None] - lo[..., None, :])
    causal = jnp.tril(jnp.ones((q, q), dtype=bool), k=0)
    return jnp.where(causal, s, -jnp.inf)


INTER_CHUNK_BLOCK = 16


def inter_chunk_scan(states: jax.Array, chunk_dA: jax.Array, init: jax.Array,
                     block: int = INTER_CHUNK_BLOCK) -> tuple[jax.Array, jax.Array]:
    """The state entering each chunk, and the final state, in O(c) work and memory.

    Two levels.  The c chunks are grouped in blocks of ``block``.  Inside a block, the states
    entering its chunks from the block's own chunks are one batched matmul with a
    (block × block) decay matrix (the quadratic "dual" form of the recurrence, as mamba_ssm's
    ``ssd_minimal`` writes it for all chunks at once).  Across blocks, a sequential ``lax.scan``
    over the c / block blocks carries the state, which is then added in with its decay; with a
    single block (c ≤ block) there is no loop at all.  Work is O(c · block); the loop has
    c / block steps instead of c (a per-chunk loop cost ~3.7 ms per layer at c = 16 on XLA:CPU,
    24% of the SSD time, 130m shape, L = 1024).  Decays are segment sums (``segsum``) or
    compensated prefix sums: no prefix sum is ever differenced.

    Args:
      states: (b, c, g, r, p, n) state contributed by each chunk alone (decayed to its end).
      chunk_dA: (b, c, g, r) total dt·A of each chunk (log of its decay).
      init: (b, g, r, p, n) state before the first chunk.
    Returns: prev_states (b, c, g, r, p, n) entering each chunk, and the final state (b, g, r, p, n).
    """
    b, c, g, r, p, n = states.shape
    K = max(1, min(int(block), c))
    nb = -(-c // K)
    pad = nb * K - c
    a = chunk_dA.astype(F32)
    S = states.astype(F32)
    if pad:  # identity decay, zero input: leaves every real chunk and the final state unchanged
        a = jnp.pad(a, ((0, 0), (0, pad), (0, 0), (0, 0)))
        S = jnp.pad(S, ((0, 0), (0, pad), (0, 0), (0, 0), (0, 0), (0, 0)))
    a = jnp.moveaxis(a.reshape(b, nb, K, g, r), 2, -1)  # (b nb g r K)
    S = S.reshape(b, nb, K, g, r, p, n)
    seg = segsum(a)  # (b nb g r K K): seg[i, j] = sum_{j<k<=i} a_k
    # W[z, y] = decay from the end of chunk y to the start of chunk z = exp(sum_{y<k<z} a_k), y < z
    W = jnp.exp(jnp.concatenate([jnp.full(seg.shape[:-2] + (1, K), -jnp.inf, F32), seg[..., :-1, :]], axis=-2))
    local = jnp.einsum("bjgrzy,bjygrpn->bjzgrpn", W, S, precision=jax.lax.Precision.HIGHEST)
    # decay from the block start to the start of chunk z, and across the whole block
    hi, lo = compensated_cumsum(jnp.pad(a, [(0, 0)] * 4 + [(1, 0)]))  # prefix sums of [0, a_0, ..]
    into = jnp.exp(hi[..., :-1] + lo[..., :-1])  # (b nb g r K): exp(sum_{k<z} a_k)
    total = jnp.exp(hi[..., -1] + lo[..., -1])  # (b nb g r): exp(sum over the block)
    own = jnp.exp(a[..., -1])[..., None, None] * local[:, :, -1] + S[:, :, -1]  # block's final state from 0
    init = init.astype(F32)
    if nb == 1:  # no loop at all
        carries = init[:, None]
        final = total[:, 0, ..., None, None] * init + own[:, 0]
    else:
        def body(carry, xs):
            tot, o = xs
            return carry * tot[..., None, None] + o, carry

        final, carries = jax.lax.scan(body, init, (jnp.moveaxis(total, 1, 0), jnp.moveaxis(own, 1, 0)))
        carries = jnp.moveaxis(carries, 0, 1)  # (b nb g r p n): state entering each block
    prev = local + jnp.moveaxis(into, -1, 2)[..., None, None] * carries[:, :, None]
    return prev.reshape(b, nb * K, g, r, p, n)[:, :c], final


def ssd_chunked(
    x: jax.Array,
    dt: jax.Array,
    A: jax.Array,
    B: jax.Array,
    C: jax.Array,
    chunk_size: int,
    D: jax.Array | None = None,
    initial_state: jax.Array | None = None,
    precision: jax.lax.Precision | str | None = None,
    chunk_loop: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """Chunked SSD scan.

    Args:
      x: (b, l, h, p) inputs.
      dt: (b, l, h) float32 step sizes (after softplus / clamp).
      A: (h,) float32, negative.
      B, C: (b, l, g, n) per-group input / output projections, shared by the h/g heads of a group.
      chunk_size: q.  Any l is accepted: the tail is padded with dt = 0 (identity decay, zero input),
        which leaves outputs at real positions and the final state unchanged.
      D: (h,) or (h, p) skip connection, optional.
      initial_state: (b, h, p, n), optional.
      chunk_loop: run the chunks one after another (:func:`_ssd_chunk_loop`, a ``lax.scan`` carrying
        the state) instead of all at once: the same FLOPs, but only one chunk's (q × q) matrices are
        live at a time.  The structure policy's choice for TPU and GPU.

    Returns:
      y: (b, l, h, p) float32, and final_state: (b, h, p, n) float32.
    """
    b, l, h, p = x.shape
    g, n = B.shape[-2:]
    if h % g:
        raise ValueError(f"heads ({h}) must be a multiple of groups ({g})")
    r = h // g
    q = int(chunk_size)
    pad = (-l) % q
    xf, Bf, Cf, dtf = x.astype(F32), B.astype(F32), C.astype(F32), dt.astype(F32)
    if pad:
        xf = jnp.pad(xf, ((0, 0), (0, pad), (0, 0), (0, 0)))
        Bf = jnp.pad(Bf, ((0, 0), (0, pad), (0, 0), (0, 0)))
        Cf = jnp.pad(Cf, ((0, 0), (0, pad), (0, 0), (0, 0)))
        dtf = jnp.pad(dtf, ((0, 0), (0, pad), (0, 0)))
    L = l + pad
    c = L // q
    ein = lambda eq, *ops: jnp.einsum(eq, *ops, precision=precision)  # noqa: E731

    # chunked views; heads split into (g, r) so that B and C stay per group.
    xc = xf.reshape(b, c, q, g, r, p)
    Bc = Bf.reshape(b, c, q, g, n)
    Cc = Cf.reshape(b, c, q, g, n)
    dtc = dtf.reshape(b, c, q, g, r)
    # Floor dt·A at -DA_FLOOR: exp() of anything below about -104 is 0 in float32, so every segment
    # sum that contains a floored term still decays to exactly 0, while prefix sums can no longer
    # overflow to -inf (which made exp(-inf - -inf) = NaN for extreme dt or A).
    dA = jnp.maximum(dtc * A.astype(F32).reshape(g, r), -DA_FLOOR)  # (b c q g r)
    dA = jnp.moveaxis(dA, 2, -1)  # (b c g r q)
    init = (jnp.zeros((b, g, r, p, n), F32) if initial_state is None
            else initial_state.astype(F32).reshape(b, g, r, p, n))
    Df = None if D is None else D.astype(F32)
    if chunk_loop:
        y, final_state = _ssd_chunk_loop(xc, dtc, dA, Bc, Cc, init, Df, precision)
        y = y.reshape(b, L, h, p)[:, :l]
        if Df is not None and Df.ndim == 2:  # D per (head, headdim)
            y = y + x.astype(F32) * Df
        return y, final_state.reshape(b, h, p, n)
    dA_cs = jnp.cumsum(dA, axis=-1)  # (b c g r q)
    dt_q = jnp.moveaxis(dtc, 2, -1)  # (b c g r q)

    # Operands are laid out once with the batch axes (b, c, g[, r]) leading, so that every einsum
    # below is a plain batched matmul (no per-einsum transposes; ~4x faster y_diag on XLA:CPU).
    Ct = jnp.swapaxes(Cc, 2, 3)  # (b c g q n)
    Bt = jnp.swapaxes(Bc, 2, 3)  # (b c g q n)
    xt = jnp.transpose(xc, (0, 1, 3, 4, 2, 5))  # (b c g r q p)

    # 1) intra-chunk (diagonal blocks): y = (C Bᵀ ∘ L) (dt x).  C·Bᵀ once per group.  A per-head
    #    skip D is folded into the diagonal of the (q × q) matrix, so D·x costs no pass of its own.
    with jax.named_scope("intra_chunk"):
        CB = ein("bcgln,bcgsn->bcgls", Ct, Bt)  # (b c g q q)
        Lmat = jnp.exp(segsum(dA))  # (b c g r q q)
        M = CB[:, :, :, None] * Lmat * dt_q[..., None, :]  # (b c g r l s)
        if Df is not None and Df.ndim == 1:
            M = M + Df.reshape(g, r)[:, :, None, None] * jnp.eye(q, dtype=F32)
            Df = None
        y_diag = ein("bcgrls,bcgrsp->bcgrlp", M, xt)

    # 2) state contributed by each chunk, decayed to the chunk end.
    with jax.named_scope("chunk_states"):
        decay_states = jnp.exp(dA_cs[..., -1:] - dA_cs)  # (b c g r q)
        xw = xt * (decay_states * dt_q)[..., None]  # (b c g r q p)
        states = ein("bcgrsp,bcgsn->bcgrpn", xw, Bt)

    # 3) inter-chunk recurrence, linear in the number of chunks c (blocks of chunks combined by a
    #    matmul, a scan across blocks only; see ``inter_chunk_scan``):
    #    state_z = exp(sum of chunk z-1's dA) * state_{z-1} + states_{z-1}.
    with jax.named_scope("inter_chunk"):
        prev_states, final_state = inter_chunk_scan(states, dA_cs[..., -1], init)

    # 4) contribution of the state entering each chunk to that chunk's outputs.  (Written in
    #    token-major order (b c g l r p) as a dot with the heads as free dims, it saved y_off's
    #    transpose but made the whole 130m prefill ~9% slower on XLA:CPU: not used.)
    with jax.named_scope("state_output"):
        state_decay_out = jnp.exp(dA_cs)  # (b c g r q)
        y_off = ein("bcgln,bcgrpn->bcgrlp", Ct, prev_states) * state_decay_out[..., None]
    y = jnp.transpose(y_diag + y_off, (0, 1, 4, 2, 3, 5))  # (b c q g r p)
    y = y.reshape(b, L, h, p)[:, :l]
    if Df is not None:  # D per (head, headdim)
        y = y + x.astype(F32) * Df
    return y, final_state.reshape(b, h, p, n)


def _ssd_chunk_loop(xc, dtc, dA, Bc, Cc, init, Df, precision):
    """:func:`ssd_chunked`'s four steps one chunk at a time: a ``lax.scan`` over the c chunks carrying
    the state (b, g, r, p, n).  Chunk z's outputs are its intra-chunk (quadratic) part plus the
    entering state read out with its decay; the state leaving it is the entering one decayed over
    the chunk plus the chunk's own contribution.  Same FLOPs as the all-chunks form, and the (q × q)
    decay and mixing matrices of one chunk only are live at a time.  (XLA:TPU already fuses the
    all-chunks matrices into their matmuls; what the loop saved, v6e 130m prefill L = 4096 with the
    layers scanned, was compile time and code: 154 s and 6.5 MB instead of 236 s and 10 MB,
    temporaries 199 MB instead of 204 MB; probes on the shared host, load ~10.)

    xc (b c q g r p), dtc (b c q g r), dA (b c g r q) floored, Bc/Cc (b c q g n), init (b g r p n),
    Df (h,) folded into the diagonal, or (h, p) / None (the caller adds it).
    Returns y (b, c, q, g, r, p) float32 and the final state (b, g, r, p, n)."""
    b, c, q, g, r, p = xc.shape
    # chunk-major operands, laid out so that every einsum below is a plain batched matmul
    xs = (jnp.transpose(xc, (1, 0, 3, 4, 2, 5)),  # (c b g r q p)
          jnp.transpose(dtc, (1, 0, 3, 4, 2)),  # (c b g r q)
          jnp.moveaxis(dA, 1, 0),  # (c b g r q)
          jnp.transpose(Bc, (1, 0, 3, 2, 4)),  # (c b g q n)
          jnp.transpose(Cc, (1, 0, 3, 2, 4)))  # (c b g q n)
    ein = lambda eq, *ops: jnp.einsum(eq, *ops, precision=precision)  # noqa: E731
    eye_D = None
    if Df is not None and Df.ndim == 1:
        eye_D = Df.reshape(g, r)[:, :, None, None] * jnp.eye(q, dtype=F32)

    def body(state, xs):
        xt, dt_q, a, Bt, Ct = xs
        cs = jnp.cumsum(a, axis=-1)  # (b g r q)
        M = ein("bgln,bgsn->bgls", Ct, Bt)[:, :, None] * jnp.exp(segsum(a)) * dt_q[..., None, :]
        if eye_D is not None:
            M = M + eye_D
        y = ein("bgrls,bgrsp->bgrlp", M, xt)
        y = y + ein("bgln,bgrpn->bgrlp", Ct, state) * jnp.exp(cs)[..., None]
        xw = xt * (jnp.exp(cs[..., -1:] - cs) * dt_q)[..., None]
        new = jnp.exp(cs[..., -1])[..., None, None] * state + ein("bgrsp,bgsn->bgrpn", xw, Bt)
        return new, jnp.transpose(y, (0, 3, 1, 2, 4))  # (b q g r p)

    final, ys = jax.lax.scan(body, init, xs)
    return jnp.moveaxis(ys, 0, 1), final  # (b c q g r p)


def step_block(shape: tuple[int, ...], block_bytes: int | None, state_dtype=F32) -> int:
    """Batch rows per block of :func:`ssd_step`: b (one block, no loop) for ``block_bytes=None`` or a
    16-bit state; else the largest divisor of b whose float32 block (rows, h, p, n) fits in
    ``block_bytes``, at least one row (a row larger than ``block_bytes`` is a block of its own)."""
    b, h, p, n = shape
    if block_bytes is None or jnp.dtype(state_dtype) != F32:
        return b
    return max(d for d in range(1, b + 1) if b % d == 0 and (d == 1 or d * h * p * n * 4 <= block_bytes))


def ssd_step(
    state: jax.Array,
    x: jax.Array,
    dt: jax.Array,
    A: jax.Array,
    B: jax.Array,
    C: jax.Array,
    D: jax.Array | None = None,
    precision: jax.lax.Precision | str | None = None,
    block_bytes: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """One recurrent step, O(1) in the sequence length.

    One pass over the state: the update ``s = exp(dt·A)·state + dt·x⊗B`` and the read-out
    ``y = s·C`` are computed block by block, each block of the state read once from memory and
    written once, ``y`` read out of the block while it is in cache.  Blocks are rows of the batch
    axis (contiguous in memory, each block's read-out a dot of full (p, n) matrices), of at most
    ``block_bytes`` (float32) each, in a ``lax.fori_loop`` that updates the (donated) state in place;
    a state of at most ``block_bytes`` (or ``block_bytes=None``) is one block and no loop.  Why
    blocks: XLA:CPU has no multi-output fusion of an elementwise update with a reduction, so in one
    block the update fusion writes s and the read-out (a dot) reads it again; without blocks (jax
    0.10, 130m shape, b = 64: 50 MB of state per layer) that second read went back to memory.  Why
    batch rows: blocks of headdim rows (strided slices, each read-out 2 × n matrices) measured
    slower than one block at b = 64 (130m fp32: 84–119 tok/s against 124–133), blocks of 2 batch
    rows faster (139–159; b = 16: 88–101 against 88–97; a decode probe, 3 alternating rounds in one
    process, quiet host).  The structure policy (``loading.structure_policy``) sets ``block_bytes`` per platform
    (None under a mesh, whose "data" axis shards the batch); the update is the same whatever it is,
    elementwise, and y the same to float32 rounding.

    The state may be stored in a 16-bit dtype (the precision policy's ``state_dtype``): it is read,
    converted to float32, updated in float32 and rounded once, when it is stored back, all in one
    fusion; y is read out of the stored state (float32 products and sums), the state the next step
    and any snapshot of the cache see.  That state is one block, its read-out an elementwise product
    reduced over n (a YNNPACK fusion that reads the 16-bit state directly, no float32 copy): XLA:CPU
    computes a bfloat16 dynamic-update-slice in float32 over the whole state (jax 0.10), and with
    y taken from the float32 update it computes the update twice, each reading the stored state.
    So a bfloat16 state moves 2 + 2 + 2 bytes per element and step (read, write, read-out), a
    float32 one 4 + 4 (one pass, blocks).  (A float16 state is correct but not one pass on XLA:CPU:
    it copies the stored state and recomputes the update in float32 for the read-out.)

    Args:
      state: (b, h, p, n) float32, bfloat16 or float16.   x: (b, h, p).   dt: (b, h) float32.   A: (h,).
      B, C: (b, g, n).   D: (h,) or (h, p).
    Returns: y (b, h, p) float32, new state (b, h, p, n) in the dtype of ``state``.
    """
    b, h, p, n = state.shape
    g = B.shape[-2]
    r = h // g
    xf, dtf = x.astype(F32), dt.astype(F32)
    dA = jnp.exp(dtf * A.astype(F32))[:, :, None, None]  # (b h 1 1)
    # B, C per head (head k belongs to group k // r): tiny (b, h, n) arrays, so that the state is
    # never reshaped; XLA:CPU then updates the donated state buffer in place (with a (b, g, r, p, n)
    # view it copied the whole state once per layer and step).
    Bh, Ch = jnp.repeat(B.astype(F32), r, axis=1), jnp.repeat(C.astype(F32), r, axis=1)
    u = dtf[..., None] * xf  # (b h p)

    def update(st, u_blk, dA, Bh, Ch):
        """One block (rows, h, p, n) of the state and its rows of u, dA, B, C → (its y (rows, h, p),
        its new state)."""
        with jax.named_scope("state_update"):
            s = st.astype(F32) * dA + u_blk[..., None] * Bh[:, :, None, :]
        if st.dtype != F32:  # 16-bit storage: y from the stored state (see above)
            stored = s.astype(st.dtype)
            with jax.named_scope("readout"):
                return jnp.sum(stored.astype(F32) * Ch[:, :, None, :], axis=-1), stored
        # y = s·C as a batched matrix-vector product (a dot), not an elementwise product reduced over
        # n: on XLA:CPU (jax 0.10) that reduction becomes a YNNPACK custom fusion which, per layer and
        # token, cost more than the dot (decode 130m fp32: ~1.3x tok/s with the dot, measured with
        # alternating rounds in one process; tests/test_decode_hlo.py guards the op count).
        with jax.named_scope("readout"):
            return jnp.einsum("bhpn,bhn->bhp", s, Ch, precision=precision), s

    rows = step_block(state.shape, block_bytes, state.dtype)
    if rows == b:
        y, new = update(state, u, dA, Bh, Ch)
    else:
        def body(i, carry):
            st, y = carry
            sl = lambda a: jax.lax.dynamic_slice_in_dim(a, i * rows, rows, axis=0)  # noqa: E731
            y_blk, s_blk = update(sl(st), sl(u), sl(dA), sl(Bh), sl(Ch))
            return (jax.lax.dynamic_update_slice_in_dim(st, s_blk, i * rows, axis=0),
                    jax.lax.dynamic_update_slice_in_dim(y, y_blk, i * rows, axis=0))

        new, y = jax.lax.fori_loop(0, b // rows, body, (state, jnp.zeros((b, h, p), F32)))
    if D is not None:
        Df = D.astype(F32)
        Df = Df[:, None] if Df.ndim == 1 else Df
        y = y + xf * Df
    return y, new
