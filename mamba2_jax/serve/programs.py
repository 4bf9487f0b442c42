"""The serving engine's compiled programs over a fixed table of S state slots.

The slot table is one :class:`~mamba2_jax.cache.Mamba2Cache` of batch S, allocated once.  The
programs:

* ``read_rows`` / ``write_rows``: gather some slots' states out of the table, or scatter states into
  it (in place: the table is donated).  They are programs of their own: a program that both gathers
  from and scatters into the table (a prefill of some slots, inside one jit) compiled on XLA:CPU to a
  copy of the whole table per call (measured: a 256-token prefill of the 130m shape took 0.68 s with
  8 slots and 1.5 s with 64).
* ``prefill``: P gathered rows, one chunk (P, C): ``model.prefill`` from their states (right-padded,
  exact for any length 0..C: see ``Mamba2Mixer.prefill``) and each row's next token sampled from its
  last logits.  C is a power-of-two bucket, with P as many rows as the engine's token budget holds:
  one compile per bucket.
* ``decode``: up to k decode steps over a batch of rows in one ``lax.while_loop``: the whole table in
  place when every slot is decoding, else the active slots gathered into a power-of-two batch (one
  compile per batch size).  Per-row sampling settings, EOS ids, token limits, positions and PRNG
  keys are arrays, so requests with different settings share these programs.  Every row is stepped
  (the batch is one dot per weight), but only active rows sample, advance and count; the loop stops
  after the step in which any row finishes, so a finished row's state is exactly the tokens it
  consumed when the host snapshots it.  Masking every row's state update inside the loop (a select
  over the whole state) was a separate pass over the state in XLA:CPU's compiled step, which the
  batched decode, bound by state bytes, cannot afford.

Sampling is per row and batch-invariant: row r's token at position p uses the key
``fold_in(key_r, p)`` and a Gumbel draw over that row alone, so its output depends only on its logits,
settings and key, never on the other rows.  With ``key_r = key(seed)`` this is exactly the draw of
``Generator.generate([prompt], seed=seed)`` (``sample_logits`` over a batch of one).

Why a loop of its own: the Generator's ``decode_loop`` (generate.py) takes one static
``SamplingConfig`` and one key for the batch, and generate.py is numerics code whose every change
invalidates the committed results (paper/results_audit.py).  This loop is built from the same pieces
(``model.step``, the same temperature / top-k / top-p rule as ``sample_logits``, tested equal to it)
and is the one to fold into ``decode_loop`` when the results are next regenerated.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..cache import Mamba2Cache

__all__ = ["SamplingArrays", "sample_rows", "SlotPrograms", "DecodeCarry"]


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class SamplingArrays:
    """Per-row sampling settings as device arrays (b,): ``greedy`` rows take the argmax; the others
    sample at ``temperature`` (> 0) from the ``top_k`` (0: all) largest logits, then the smallest
    prefix of that sorted distribution whose mass reaches ``top_p`` (1: all)."""

    greedy: jax.Array  # bool
    temperature: jax.Array  # float32
    top_k: jax.Array  # int32
    top_p: jax.Array  # float32

    @classmethod
    def host(cls, greedy, temperature, top_k, top_p) -> SamplingArrays:
        return cls(greedy=np.asarray(greedy, bool), temperature=np.asarray(temperature, np.float32),
                   top_k=np.asarray(top_k, np.int32), top_p=np.asarray(top_p, np.float32))

    def take(self, idx) -> SamplingArrays:
        return SamplingArrays(*(np.asarray(a)[idx] for a in (self.greedy, self.temperature, self.top_k, self.top_p)))


def sample_rows(logits: jax.Array, keys: jax.Array, s: SamplingArrays, vocab_size: int) -> jax.Array:
    """(b, V) float32 logits, (b,) PRNG keys → (b,) int32 tokens, each row by its own settings.

    The rule of ``generate.sample_logits`` row by row: padded vocabulary entries are never chosen;
    logits minus their max, over the temperature; entries below the k-th largest dropped; entries
    below the last one of the smallest sorted prefix whose probability reaches top_p dropped; a
    Gumbel-max draw with the row's key.  The draws are paid only when some row samples, and the sort
    only when some sampled row asks for top-k or top-p."""
    b, V = logits.shape
    if vocab_size < V:
        logits = jnp.where(jnp.arange(V) < vocab_size, logits, -jnp.inf)
    greedy_tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    use_k = (s.top_k > 0) & (s.top_k < V)
    use_p = s.top_p < 1.0

    def filtered(z):
        srt = jnp.sort(z, axis=-1)[:, ::-1]
        k = jnp.where(use_k, s.top_k, V)
        kth = jnp.take_along_axis(srt, (k - 1)[:, None], axis=-1)
        z = jnp.where(z < kth, -jnp.inf, z)
        srt = jnp.where(srt < kth, -jnp.inf, srt)  # the sorted top-k-filtered logits
        probs = jax.nn.softmax(srt, axis=-1)
        cum = jnp.cumsum(probs, axis=-1)
        keep = (cum - probs) < s.top_p[:, None]
        thresh = jnp.min(jnp.where(keep, srt, jnp.inf), axis=-1, keepdims=True)
        return jnp.where(use_p[:, None] & (z < thresh), -jnp.inf, z)

    def sampled(logits):
        t = jnp.where(s.greedy, 1.0, s.temperature).astype(jnp.float32)
        z = (logits - jnp.max(logits, axis=-1, keepdims=True)) / t[:, None]
        z = jax.lax.cond(jnp.any(~s.greedy & (use_k | use_p)), filtered, lambda z: z, z)
        drawn = jax.vmap(lambda k, row: jax.random.categorical(k, row))(keys, z).astype(jnp.int32)
        return jnp.where(s.greedy, greedy_tok, drawn)

    # an all-greedy batch (the common serving case) pays for the argmax only, not for b x V random draws
    return jax.lax.cond(jnp.all(s.greedy), lambda lg: greedy_tok, sampled, logits)


def _finite_rows(logits: jax.Array, vocab_size: int) -> jax.Array:
    return jnp.all(jnp.isfinite(logits[:, :vocab_size]), axis=-1)


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class DecodeCarry:
    """The decode program's loop state, per slot (S,) unless said."""

    cache: Mamba2Cache
    token: jax.Array  # int32: the last token, the next step's input
    position: jax.Array  # int32: the position of ``token`` among the request's new tokens
    done: jax.Array  # bool: not decoding (idle, prefilling, finished): no sample, no advance
    nonfinite: jax.Array  # bool: met a non-finite logit ...
    nonfinite_at: jax.Array  # int32: ... at this position
    tokens: jax.Array  # (S, k) int32: the tokens of this dispatch, column j from step j
    step: jax.Array  # () int32

    def replace(self, **kw) -> DecodeCarry:
        return replace(self, **kw)


def _rows(cache: Mamba2Cache, idx) -> Mamba2Cache:
    return jax.tree.map(lambda a: jnp.take(a, idx, axis=0, mode="clip"), cache)


def _set_rows(cache: Mamba2Cache, idx, rows: Mamba2Cache) -> Mamba2Cache:
    return jax.tree.map(lambda a, r: a.at[idx].set(r.astype(a.dtype), mode="drop"), cache, rows)


class SlotPrograms:
    """The jitted programs of one model over ``slots`` state slots, ``prefill_rows`` rows per prefill
    call and ``decode_steps`` tokens per decode dispatch.  ``trace_counts`` counts compilations."""

    def __init__(self, model, slots: int, prefill_rows: int, decode_steps: int):
        self.cfg = model.cfg
        self.model_dtype = model.dtype
        self.state_dtype = model.state_dtype
        self.mesh = getattr(model, "mesh", None)
        self.graphdef, self.state = nnx.split(model)
        self.S, self.P, self.k = int(slots), int(prefill_rows), int(decode_steps)
        self.trace_counts = {"prefill": 0, "decode": 0, "read_rows": 0, "write_rows": 0}
        self.prefill = jax.jit(self._prefill, donate_argnums=(1,))
        self.decode = jax.jit(self._decode, donate_argnums=(1,))
        self.read_rows = jax.jit(self._read_rows)
        self.write_rows = jax.jit(self._write_rows, donate_argnums=(0,))
        self._model = model

    def init_cache(self) -> Mamba2Cache:
        return self._model.init_cache(self.S)

    def zero_row(self) -> Mamba2Cache:
        return Mamba2Cache.zeros(self.cfg, 1, dtype=self.model_dtype, state_dtype=self.state_dtype)

    # -- programs ----------------------------------------------------------------------------
    def _prefill(self, state, rows: Mamba2Cache, ids, lengths, keys, sampling: SamplingArrays):
        """→ (rows' new states, next token (P,), its logits finite (P,))."""
        self.trace_counts["prefill"] += 1
        model = nnx.merge(self.graphdef, state)
        logits, rows = model.prefill(ids, cache=rows, lengths=lengths, last_only=True)
        V = self.cfg.vocab_size
        keys0 = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
        tok = sample_rows(logits, keys0, sampling, V)
        return rows, tok, _finite_rows(logits, V)

    def _decode(self, state, cache: Mamba2Cache, token, position, done, keys, sampling: SamplingArrays,
                eos, limit) -> DecodeCarry:
        self.trace_counts["decode"] += 1
        return self._loop(nnx.merge(self.graphdef, state), cache, token, position, done, keys, sampling, eos, limit)

    def _read_rows(self, cache: Mamba2Cache, idx):
        """The states of slots ``idx`` (index S and above: clamped, for dummies)."""
        self.trace_counts["read_rows"] += 1
        return _rows(cache, idx)

    def _write_rows(self, cache: Mamba2Cache, idx, rows: Mamba2Cache):
        """``rows`` into slots ``idx`` (index S: dropped)."""
        self.trace_counts["write_rows"] += 1
        return _set_rows(cache, idx, rows)

    def _loop(self, model, cache, token, position, done, keys, sampling, eos, limit) -> DecodeCarry:
        """Up to k steps, stopping after the first step in which a row finishes.  A row is done after
        its EOS (``eos`` ≥ 0), when its position reaches ``limit`` - 1, or at a non-finite logit (whose
        token is not a sample).  Done rows keep their token and position; their state is stepped too
        (and is meaningless afterwards)."""
        V = self.cfg.vocab_size
        S, k = token.shape[0], self.k
        pad = jnp.where(eos >= 0, eos, 0)

        def cond(c: DecodeCarry):
            return (c.step < k) & ~jnp.all(c.done) & ~jnp.any(c.done & ~done)

        def body(c: DecodeCarry):
            active = ~c.done
            logits, cache = model.step(c.token, c.cache)
            pos = c.position + active.astype(jnp.int32)
            step_keys = jax.vmap(jax.random.fold_in)(keys, pos)
            nxt = jnp.where(active, sample_rows(logits, step_keys, sampling, V), c.token)
            bad = active & ~_finite_rows(logits, V)
            fin = active & (((nxt == eos) & (eos >= 0)) | (pos + 1 >= limit))
            tokens = jax.lax.dynamic_update_slice(c.tokens, jnp.where(active, nxt, pad)[:, None],
                                                  (jnp.int32(0), c.step))
            return c.replace(cache=cache, token=nxt, position=pos, done=c.done | bad | fin,
                             nonfinite=c.nonfinite | bad, nonfinite_at=jnp.where(bad, pos, c.nonfinite_at),
                             tokens=tokens, step=c.step + 1)

        c0 = DecodeCarry(cache=cache, token=token, position=position, done=done,
                         nonfinite=jnp.zeros((S,), bool), nonfinite_at=jnp.zeros((S,), jnp.int32),
                         tokens=jnp.broadcast_to(pad[:, None], (S, k)).astype(jnp.int32), step=jnp.int32(0))
        return jax.lax.while_loop(cond, body, c0)
