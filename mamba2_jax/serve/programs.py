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
  last logits (:func:`~mamba2_jax.generate.sample_at`, the decode loop's sampler).  C is a
  power-of-two bucket, with P as many rows as the engine's token budget holds: one compile per bucket.
* ``decode``: the project's decode loop (:func:`~mamba2_jax.generate.decode_loop`, through
  :meth:`Generator.decode_rows <mamba2_jax.generate.Generator.decode_rows>`), up to k steps per
  dispatch in one ``lax.while_loop``: the whole table in place when every slot is decoding, else the
  active slots gathered into a power-of-two batch (one compile per batch size).  Per-row sampling
  settings, EOS ids, token limits, positions and PRNG keys are arrays, so requests with different
  settings share these programs.  Every row is stepped (the batch is one dot per weight), but only
  active rows sample, advance and count; the loop stops after the step in which any row finishes
  (``stop_at_finish``), so a finished row's state is exactly the tokens it consumed when the host
  snapshots it.  Masking every row's state update inside the loop (a select over the whole state)
  was a separate pass over the state in XLA:CPU's compiled step, which the batched decode, bound by
  state bytes, cannot afford.

Sampling is per row and batch-invariant: row r's token at position p uses the key
``fold_in(key_r, p)`` and a draw over that row alone, so its output depends only on its logits,
settings and key, never on the other rows.  With ``key_r = key(seed)`` this is exactly the draw of
``Generator.generate([prompt], seed=seed)``: the same sampler, the same loop.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ..cache import Mamba2Cache
from ..generate import DecodeState, Generator, SamplingArrays, _finite_rows, sample_at

__all__ = ["SlotPrograms"]


def _rows(cache: Mamba2Cache, idx) -> Mamba2Cache:
    return jax.tree.map(lambda a: jnp.take(a, idx, axis=0, mode="clip"), cache)


def _set_rows(cache: Mamba2Cache, idx, rows: Mamba2Cache) -> Mamba2Cache:
    return jax.tree.map(lambda a, r: a.at[idx].set(r.astype(a.dtype), mode="drop"), cache, rows)


class SlotPrograms:
    """The jitted programs of one model over ``slots`` state slots, ``prefill_rows`` rows per prefill
    call and ``decode_steps`` tokens per decode dispatch.  ``trace_counts`` counts compilations
    (the decode loop's included: this engine's :class:`~mamba2_jax.generate.Generator` has programs
    of its own)."""

    def __init__(self, model, slots: int, prefill_rows: int, decode_steps: int):
        self.cfg = model.cfg
        self.model_dtype = model.dtype
        self.state_dtype = model.state_dtype
        self.mesh = getattr(model, "mesh", None)
        self.graphdef, self.state = nnx.split(model)
        self.S, self.P, self.k = int(slots), int(prefill_rows), int(decode_steps)
        # the decode loop: the Generator's, with per-row settings (EOS ids are per row: the
        # program's own EOS id is unused)
        self.generator = Generator(model, eos_id=None, share_programs=False)
        self._counts = {"prefill": 0, "read_rows": 0, "write_rows": 0}
        self.prefill = jax.jit(self._prefill, donate_argnums=(1,))
        self.read_rows = jax.jit(self._read_rows)
        self.write_rows = jax.jit(self._write_rows, donate_argnums=(0,))
        self._model = model

    @property
    def trace_counts(self) -> dict[str, int]:
        return {**self._counts, "decode": self.generator.trace_counts["decode"]}

    def init_cache(self) -> Mamba2Cache:
        return self._model.init_cache(self.S)

    def zero_row(self) -> Mamba2Cache:
        return Mamba2Cache.zeros(self.cfg, 1, dtype=self.model_dtype, state_dtype=self.state_dtype)

    # -- programs ----------------------------------------------------------------------------
    def _prefill(self, state, rows: Mamba2Cache, ids, lengths, keys, sampling: SamplingArrays):
        """→ (rows' new states, next token (P,), its logits finite (P,))."""
        self._counts["prefill"] += 1
        model = nnx.merge(self.graphdef, state)
        logits, rows = model.prefill(ids, cache=rows, lengths=lengths, last_only=True)
        V = self.cfg.vocab_size
        return rows, sample_at(logits, keys, 0, sampling, V), _finite_rows(logits, V)

    def decode(self, cache: Mamba2Cache, token, position, done, keys, sampling: SamplingArrays, eos,
               limit) -> DecodeState:
        """Up to k steps of the decode loop over the rows of ``cache`` (donated), each row at its own
        ``position`` after ``token``, ``done`` rows idle, stopping after the first step in which a
        row finishes.  A row is done after its EOS (``eos`` ≥ 0), when its position reaches
        ``limit`` - 1, or at a non-finite logit (whose token is not a sample).  Done rows keep their
        token and position; their state is stepped too (and is meaningless afterwards)."""
        st = DecodeState.rows(cache, token, position, done, keys, self.k, eos)
        return self.generator.decode_rows(st, sampling, eos, limit, stop_at_finish=True)

    def _read_rows(self, cache: Mamba2Cache, idx):
        """The states of slots ``idx`` (index S and above: clamped, for dummies)."""
        self._counts["read_rows"] += 1
        return _rows(cache, idx)

    def _write_rows(self, cache: Mamba2Cache, idx, rows: Mamba2Cache):
        """``rows`` into slots ``idx`` (index S: dropped)."""
        self._counts["write_rows"] += 1
        return _set_rows(cache, idx, rows)
