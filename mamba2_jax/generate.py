"""Compiled, on-device autoregressive generation.

* Prefill is jitted; prompts are right-padded to a length bucket (powers of two, at least
  ``min_bucket``) so that new prompt lengths inside a bucket reuse the compiled program.
  Padding positions are exact no-ops (dt = 0, x = 0 in the scan; the conv state is gathered at
  each row's own end), so a ragged batch gives each row the result it would get alone.  Long
  prompts are the model's business: ``model.prefill_block`` runs them block by block inside the
  one program (see ``Mamba2LMHeadModel.prefill``).
* The decode loop is one ``lax.while_loop`` on device (:func:`decode_loop`), built once: the
  ``Generator``, its streaming mode, the decode benchmarks and the server (``mamba2-jax serve``,
  k tokens per dispatch) all run it.  Its carry is a typed, registered PyTree, :class:`DecodeState`
  (cache, last token, per-row positions, output buffer, step, done flags, per-row PRNG keys,
  non-finite flags).  The state is donated, sampling happens on device with explicit PRNG keys,
  every row stops at its own EOS, the loop stops when all rows are done, and the host sees tokens
  once, when the loop ends.
* Sampling is per row (:func:`sample_rows`): each row has its own settings (:class:`SamplingArrays`)
  and key, and draws over its own logits only, so a row's tokens never depend on the other rows.
  The Generator's settings are static (one :class:`SamplingConfig`; the program is specialised to
  it: greedy is the argmax alone); the server's are device arrays, so requests with different
  settings share one program.  Row r of a batch drawn with ``key`` uses ``key`` (r = 0) or
  ``fold_in(fold_in(key, ROWS_TAG), r)`` (:func:`row_key`); its token at position p uses
  ``fold_in(row key, p)``.  A key is thus only ever the parent of draws (positions < 2**31) or, with
  the one tag no position reaches, of the other rows' keys: never both for the same data.
* Streaming runs the same loop in chunks of ``k`` tokens: one device round trip per chunk.
* A non-finite logit is never turned into a token silently: the loop records, per row, the first
  step whose logits hold a NaN or Inf (and stops that row); the host then raises
  :class:`GenerationError` naming the step and the row.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .cache import Mamba2Cache

__all__ = ["SamplingConfig", "SamplingArrays", "GenerationResult", "GenerationError", "Generator", "DecodeState",
           "decode_loop", "generate", "sample_rows", "sample_at", "sample_logits", "row_key", "row_keys",
           "bucket_length", "stepwise_greedy", "program_key"]


class GenerationError(ValueError):
    """Bad generation input, or a non-finite logit met while generating.

    For the latter, ``step`` (index of the new token whose logits were not finite: 0 is the token
    from the prompt's last position), ``row`` (the prompt's index), ``rows`` ({row: step} for every
    row that met one) and ``result`` (the :class:`GenerationResult` up to there) are set."""

    step: int | None = None
    row: int | None = None
    rows: dict[int, int] | None = None
    result: Any = None


# The output buffer is (batch, max_new_tokens) int32 on device and the step counters are int32.
MAX_NEW_TOKENS = 1 << 24


@dataclass(frozen=True)
class SamplingConfig:
    """greedy=True ignores the rest.  temperature > 0; top_k = 0 disables; top_p = 1 disables."""

    greedy: bool = True
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        if not self.greedy:
            if not 0 < self.temperature < float("inf"):
                raise GenerationError(
                    f"temperature must be finite and > 0 (use greedy=True for 0), got {self.temperature}")
            if self.top_k < 0:
                raise GenerationError(f"top_k must be >= 0, got {self.top_k}")
            if not 0 < self.top_p <= 1:
                raise GenerationError(f"top_p must be in (0, 1], got {self.top_p}")


GREEDY = SamplingConfig()


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class SamplingArrays:
    """Per-row sampling settings (b,): ``greedy`` rows take the argmax; the others sample at
    ``temperature`` (> 0) from the ``top_k`` (0: all) largest logits, then from the smallest prefix of
    that sorted distribution whose mass reaches ``top_p`` (1: all).

    NumPy arrays are known when the program is traced, and :func:`sample_rows` is specialised to them
    (the Generator: :meth:`of` a static :class:`SamplingConfig`, so an all-greedy program is the
    argmax alone); device arrays are inputs of the program, so rows with different settings share
    one compiled program (the server)."""

    greedy: Any  # bool
    temperature: Any  # float32
    top_k: Any  # int32
    top_p: Any  # float32

    @classmethod
    def host(cls, greedy, temperature, top_k, top_p) -> SamplingArrays:
        return cls(greedy=np.asarray(greedy, bool), temperature=np.asarray(temperature, np.float32),
                   top_k=np.asarray(top_k, np.int32), top_p=np.asarray(top_p, np.float32))

    @classmethod
    def of(cls, cfg: SamplingConfig, b: int) -> SamplingArrays:
        """``cfg`` for each of ``b`` rows, as NumPy arrays (a greedy config: temperature 1, no filters)."""
        if cfg.greedy:
            return cls.host(np.ones(b, bool), np.ones(b), np.zeros(b), np.ones(b))
        return cls.host(np.zeros(b, bool), np.full(b, cfg.temperature), np.full(b, cfg.top_k), np.full(b, cfg.top_p))

    def take(self, idx) -> SamplingArrays:
        return SamplingArrays(*(np.asarray(a)[idx] for a in (self.greedy, self.temperature, self.top_k, self.top_p)))


def _cond(pred, true_fn, false_fn, x):
    """``lax.cond``, or the branch itself when ``pred`` is known at trace time (NumPy)."""
    if isinstance(pred, (bool, np.bool_, np.ndarray)):
        return true_fn(x) if bool(pred) else false_fn(x)
    return jax.lax.cond(pred, true_fn, false_fn, x)


def sample_rows(logits: jax.Array, keys: jax.Array, s: SamplingArrays, vocab_size: int) -> jax.Array:
    """(b, V) float32 logits, (b,) PRNG keys → (b,) int32 tokens, each row by its own settings and key:
    the sampler of the decode loop, the Generator's prefill and the server's prefill.

    Padded vocabulary entries are never chosen.  Row by row: logits minus their max, over the
    temperature; entries below the k-th largest dropped; entries below the last one of the smallest
    sorted prefix whose probability reaches top_p dropped; a Gumbel-max draw
    (``jax.random.categorical``) with the row's key over that row alone, so a row's token depends
    only on its logits, settings and key, never on the other rows.  The draws are paid only when
    some row samples, and the sort only when some sampled row asks for top-k or top-p."""
    b, V = logits.shape
    if vocab_size < V:
        logits = jnp.where(jnp.arange(V) < vocab_size, logits, -jnp.inf)
    greedy_tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    use_k = (s.top_k > 0) & (s.top_k < V)
    use_p = s.top_p < 1.0
    xp = np if isinstance(s.greedy, np.ndarray) and isinstance(use_k, np.ndarray) \
        and isinstance(use_p, np.ndarray) else jnp

    def filtered(z):
        srt = jnp.sort(z, axis=-1)[:, ::-1]
        k = jnp.where(use_k, s.top_k, V)
        kth = jnp.take_along_axis(srt, (k - 1)[:, None], axis=-1)
        z = jnp.where(z < kth, -jnp.inf, z)
        srt = jnp.where(srt < kth, -jnp.inf, srt)  # the sorted top-k-filtered logits
        probs = jax.nn.softmax(srt, axis=-1)
        cum = jnp.cumsum(probs, axis=-1)
        keep = (cum - probs) < jnp.asarray(s.top_p)[:, None]  # the smallest prefix reaching top_p (≥ 1 token)
        thresh = jnp.min(jnp.where(keep, srt, jnp.inf), axis=-1, keepdims=True)
        return jnp.where(use_p[:, None] & (z < thresh), -jnp.inf, z)

    def sampled(logits):
        t = jnp.asarray(xp.where(s.greedy, 1.0, s.temperature), jnp.float32)
        z = (logits - jnp.max(logits, axis=-1, keepdims=True)) / t[:, None]  # max → 0: no overflow at tiny T
        z = _cond(xp.any(~s.greedy & (use_k | use_p)), filtered, lambda z: z, z)
        drawn = jax.vmap(lambda k, row: jax.random.categorical(k, row))(keys, z).astype(jnp.int32)
        return jnp.where(s.greedy, greedy_tok, drawn)

    # an all-greedy batch pays for the argmax only, not for b x V random draws
    return _cond(xp.all(s.greedy), lambda lg: greedy_tok, sampled, logits)


# fold_in data that no position reaches (positions are int32): the parent of rows 1.. of a batch
ROWS_TAG = 0xFFFFFFFF


def row_key(key: jax.Array, r: int) -> jax.Array:
    """Row r's key in a batch drawn with ``key``: ``key`` itself for r = 0 (a prompt alone draws what
    it draws in row 0 of any batch), ``fold_in(fold_in(key, ROWS_TAG), r)`` after (the server's
    choices of an ``n`` > 1 request).  Row 0 draws position p with ``fold_in(key, p)``, p < 2**31, so
    no key derived for a draw is ever the parent of another row's keys."""
    return key if r == 0 else jax.random.fold_in(jax.random.fold_in(key, ROWS_TAG), r)


def row_keys(key: jax.Array, b: int) -> jax.Array:
    """The (b,) per-row keys of a batch drawn with one ``key`` (:func:`row_key`).  A (b,) array of keys
    is returned as it is; raw uint32 key data (``jax.random.PRNGKey``) is wrapped first."""
    key = jnp.asarray(key)
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)
    if key.ndim == 1:
        return key
    if b == 1:
        return key[None]
    rows = jax.random.fold_in(key, ROWS_TAG)
    return jnp.concatenate([key[None], jax.vmap(lambda r: jax.random.fold_in(rows, r))(jnp.arange(1, b))])


def sample_at(logits: jax.Array, keys: jax.Array, position, s: SamplingArrays, vocab_size: int) -> jax.Array:
    """The tokens at ``position`` ((b,) or scalar): row r draws with ``fold_in(keys[r], position[r])``."""
    pos = jnp.broadcast_to(jnp.asarray(position, jnp.int32), keys.shape)
    return sample_rows(logits, jax.vmap(jax.random.fold_in)(keys, pos), s, vocab_size)


def sample_logits(logits: jax.Array, key: jax.Array, cfg: SamplingConfig, vocab_size: int) -> jax.Array:
    """(b, V) float32 logits → (b,) int32 tokens with one static config and one key:
    :func:`sample_rows` with the rows' keys of :func:`row_keys`."""
    b = logits.shape[0]
    return sample_rows(logits, row_keys(key, b), SamplingArrays.of(cfg, b), vocab_size)


def _finite_rows(logits: jax.Array, vocab_size: int) -> jax.Array:
    """(b, V) logits → (b,) bool: every logit of the real vocabulary is finite."""
    return jnp.all(jnp.isfinite(logits[:, :vocab_size]), axis=-1)


def bucket_length(n: int, min_bucket: int = 16) -> int:
    """The prompt-length bucket: the next power of two ≥ n (and ≥ min_bucket)."""
    b = max(int(min_bucket), 1)
    while b < n:
        b *= 2
    return b


def program_key(graphdef) -> Hashable:
    """A hashable key for the program a ``graphdef`` compiles to, for caches of jitted functions that
    close over it: two models share a program only if their graph definitions are equal (same
    structure: layers, in_proj layout, ``scan_chunk_size``, ``prefill_block``, precision, ...).
    Every static attribute of a model is hashable (``model.policy`` and ``model.source`` are frozen
    dataclasses, ``loading.ModelPolicy`` / ``ModelSource``), so the graphdef is its own key; a module
    given an unhashable attribute is refused here, not keyed by an approximation."""
    try:
        hash(graphdef)
    except TypeError as e:
        raise TypeError(f"the model's graph definition is not hashable ({e}): give its modules hashable "
                        "static attributes (frozen dataclasses, tuples), not dicts or lists") from None
    return graphdef


# ------------------------------------------------------------------------------ the decode loop
NO_LIMIT = np.iinfo(np.int32).max


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class DecodeState:
    """The carry of :func:`decode_loop`, a registered PyTree (every field is an array).

    Token positions count the new tokens of one sequence: position 0 is the token sampled from the
    prompt's last logits; row r's token at position p is drawn with ``fold_in(keys[r], p)``.  Rows
    may be at different positions (the server's slots); a done row neither samples nor advances.
    """

    cache: Mamba2Cache
    token: jax.Array  # (b,) int32: the last token (the next step's input)
    position: jax.Array  # (b,) int32: the position of ``token``
    tokens: jax.Array  # (b, n) int32: the output buffer; a done row's columns hold its EOS id (or 0)
    step: jax.Array  # () int32: columns of ``tokens`` written; the loop runs while step < n
    done: jax.Array  # (b,) bool: the row is not decoding (EOS, its limit, a non-finite logit; idle)
    nonfinite: jax.Array  # (b,) bool: the row met a non-finite logit ...
    nonfinite_at: jax.Array  # (b,) int32: ... at this position (where ``nonfinite``)
    keys: jax.Array  # (b,) PRNG keys, one per row

    @classmethod
    def start(cls, cache: Mamba2Cache, token, finite, key, n: int, eos_id: int | None,
              position: int = 0) -> DecodeState:
        """The state after the token at ``position`` (from prefill: 0), with an ``n``-column buffer
        whose first column holds it.  ``finite`` (b,) bool: its logits were finite.  ``key``: one key
        (the rows' keys are :func:`row_keys`) or (b,) keys."""
        token = jnp.asarray(token, jnp.int32)
        finite = jnp.asarray(finite, bool)
        b = token.shape[0]
        done = ~finite if eos_id is None else (token == eos_id) | ~finite
        pad = 0 if eos_id is None else eos_id
        tokens = jnp.full((b, n), pad, jnp.int32).at[:, 0].set(token)
        # the loop donates its state: a private copy of the caller's key
        return cls(cache=cache, token=token, position=jnp.full((b,), position, jnp.int32), tokens=tokens,
                   step=jnp.int32(1), done=done, nonfinite=~finite, nonfinite_at=jnp.full((b,), position, jnp.int32),
                   keys=jnp.array(row_keys(key, b), copy=True))

    @classmethod
    def rows(cls, cache: Mamba2Cache, token, position, done, keys, n: int, eos) -> DecodeState:
        """Rows at their own ``position`` (b,) after ``token`` (b,), ``done`` rows idle, with an empty
        ``n``-column buffer (step 0); ``eos`` (b,) the rows' EOS ids (-1: none), for the padding.
        Host arrays (copies: the state is donated) go to the program as its inputs."""
        eos = np.asarray(eos, np.int32)
        b = eos.shape[0]
        return cls(cache=cache, token=np.array(token, np.int32), position=np.array(position, np.int32),
                   tokens=np.repeat(np.where(eos >= 0, eos, 0)[:, None], n, axis=1).astype(np.int32),
                   step=np.int32(0), done=np.array(done, bool), nonfinite=np.zeros(b, bool),
                   nonfinite_at=np.zeros(b, np.int32), keys=keys)

    def replace(self, **kw) -> DecodeState:
        return replace(self, **kw)


def decode_loop(model, state: DecodeState, sampling: SamplingArrays | SamplingConfig = GREEDY,
                eos_id: int | jax.Array | None = None, check_finite: bool = True, *, limit=None,
                stop_at_finish: bool = False) -> DecodeState:
    """THE decode loop: fill ``state.tokens`` from column ``state.step`` on, one ``model.step`` and one
    sample per column, in one ``lax.while_loop`` that stops early when every row is done.  Traced
    (call it inside ``jax.jit``): ``Generator.generate``, ``Generator.stream``, the decode benchmarks
    and the server's decode dispatches (``Generator.decode_rows``) all run it.

    Every row is stepped (the batch is one dot per weight), but only rows not done sample, advance
    and count; a done row keeps its token and position and its buffer columns hold the padding
    (its EOS id, or 0), while its cache goes on consuming its last token: once done, a row's cache
    is meaningless (use ``stop_at_finish`` to keep it).  Settings, per row:

    * ``sampling``: :class:`SamplingArrays` (NumPy: the program is specialised to them; device
      arrays: one program for all settings) or a static :class:`SamplingConfig` for every row;
    * ``eos_id``: an int, None (no EOS) or (b,) int32 ids with -1 for none (the server's
      ``ignore_eos``): a row is done after emitting its EOS;
    * ``limit``: None, or (b,) int32: a row is done once its position reaches ``limit`` - 1 (its
      ``max_tokens``-th token).

    A row is also done after a step whose logits (real vocabulary) hold a NaN or Inf: the loop records
    that position in ``nonfinite_at`` (the token it writes there is not a sample) and the other rows
    go on.  ``stop_at_finish``: stop after the first step in which some row becomes done, so that a
    finished row's state is exactly that of the tokens it consumed (the server snapshots it).
    ``check_finite=False`` drops the non-finite check (only to measure its cost)."""
    n = state.tokens.shape[1]
    b = state.token.shape[0]
    V = model.cfg.vocab_size
    if isinstance(sampling, SamplingConfig):
        sampling = SamplingArrays.of(sampling, b)
    if eos_id is None or isinstance(eos_id, (int, np.integer)):
        eos = np.full((b,), -1 if eos_id is None else int(eos_id), np.int32)  # known at trace time
    else:
        eos = eos_id
    has_eos = (eos >= 0)
    pad = jnp.where(has_eos, eos, 0).astype(jnp.int32)
    done0 = state.done

    def cond(s: DecodeState):
        go = (s.step < n) & ~jnp.all(s.done)
        return go & ~jnp.any(s.done & ~done0) if stop_at_finish else go

    def body(s: DecodeState):
        active = ~s.done
        logits, cache = model.step(s.token, s.cache)
        pos = s.position + active.astype(jnp.int32)
        nxt = jnp.where(active, sample_at(logits, s.keys, pos, sampling, V), s.token)
        fin = active & has_eos & (nxt == eos)
        if limit is not None:
            fin = fin | (active & (pos + 1 >= limit))
        nonfinite, nonfinite_at = s.nonfinite, s.nonfinite_at
        if check_finite:
            bad = active & ~_finite_rows(logits, V)
            nonfinite, nonfinite_at = nonfinite | bad, jnp.where(bad, pos, nonfinite_at)
            fin = fin | bad
        tokens = jax.lax.dynamic_update_slice(s.tokens, jnp.where(active, nxt, pad)[:, None], (jnp.int32(0), s.step))
        return s.replace(cache=cache, token=nxt, position=pos, tokens=tokens, step=s.step + 1, done=s.done | fin,
                         nonfinite=nonfinite, nonfinite_at=nonfinite_at)

    return jax.lax.while_loop(cond, body, state)


@dataclass
class GenerationResult:
    tokens: np.ndarray  # (b, max_new_tokens) int32; after a row's EOS: eos_id
    num_generated: np.ndarray  # (b,) tokens up to and including EOS
    prompt_lengths: np.ndarray
    prefill_s: float
    decode_s: float
    decode_steps: int

    @property
    def decode_tok_s(self) -> float:
        """Decode steps per second × batch (generated tokens/s, excluding the prefill token)."""
        n = int(self.tokens.shape[0]) * max(self.decode_steps, 0)
        return n / self.decode_s if self.decode_s > 0 else float("nan")

    def sequences(self) -> list[list[int]]:
        return [list(map(int, self.tokens[i, : self.num_generated[i]])) for i in range(self.tokens.shape[0])]


class _Programs:
    """The jitted prefill and decode programs of one model structure (graphdef), EOS id, mesh and
    check setting, shared by every :class:`Generator` with these: a second Generator over a model of
    the same structure (other weights) compiles nothing new."""

    def __init__(self, graphdef, eos_id: int | None, mesh, check_finite: bool):
        self.graphdef, self.eos_id, self.mesh, self.check_finite = graphdef, eos_id, mesh, check_finite
        self.trace_counts = {"prefill": 0, "decode": 0}
        self.prefill = jax.jit(self._prefill, static_argnames=("sampling",))
        self.decode = jax.jit(self._decode, static_argnames=("sampling",), donate_argnums=(1,))
        self.decode_rows = jax.jit(self._decode_rows, static_argnames=("stop_at_finish",), donate_argnums=(1,))

    def _prefill(self, state, ids, lengths, key, sampling: SamplingConfig):
        """→ (first token (b,), its logits finite (b,), cache)."""
        self.trace_counts["prefill"] += 1
        model = nnx.merge(self.graphdef, state)
        V = model.cfg.vocab_size
        logits, cache = model.prefill(ids, lengths=lengths, last_only=True)
        b = logits.shape[0]
        tok = sample_at(logits, row_keys(key, b), 0, SamplingArrays.of(sampling, b), V)
        return self._replicated(tok), self._replicated(_finite_rows(logits, V)), cache

    def _decode(self, state, dstate: DecodeState, sampling: SamplingConfig) -> DecodeState:
        """The loop with one static config and this program's EOS id (the Generator)."""
        self.trace_counts["decode"] += 1
        return self._loop(state, dstate, sampling, self.eos_id, None, False)

    def _decode_rows(self, state, dstate: DecodeState, sampling: SamplingArrays, eos, limit,
                     stop_at_finish: bool) -> DecodeState:
        """The same loop with per-row settings as device arrays (the server)."""
        self.trace_counts["decode"] += 1
        return self._loop(state, dstate, sampling, eos, limit, stop_at_finish)

    def _loop(self, state, dstate, sampling, eos, limit, stop_at_finish) -> DecodeState:
        model = nnx.merge(self.graphdef, state)
        s = decode_loop(model, dstate, sampling, eos, self.check_finite, limit=limit, stop_at_finish=stop_at_finish)
        r = self._replicated
        return s.replace(token=r(s.token), tokens=r(s.tokens), done=r(s.done), nonfinite=r(s.nonfinite),
                         nonfinite_at=r(s.nonfinite_at))

    def _replicated(self, x):
        """Tokens leave the device program replicated, so every process can read them (mesh only)."""
        if self.mesh is None:
            return x
        from .sharding import replicate

        return replicate(x, self.mesh)


_PROGRAMS: dict[Any, _Programs] = {}


def _programs(graphdef, eos_id: int | None, mesh, check_finite: bool) -> _Programs:
    key = (program_key(graphdef), eos_id, mesh, check_finite)
    if key not in _PROGRAMS:
        _PROGRAMS[key] = _Programs(graphdef, eos_id, mesh, check_finite)
    return _PROGRAMS[key]


class Generator:
    """Prefill and decode for one model, through compiled programs shared by all Generators of the
    same model structure (see :func:`program_key`), EOS id and mesh.

    ``trace_counts`` counts how many times these programs were traced (= compiled), which the tests
    use to check that prompt bucketing avoids recompiles.  ``check_finite=False`` drops the
    non-finite-logit check from the loop; it exists only to measure the check's cost.
    ``share_programs=False`` gives this Generator programs of its own (benchmarks that compile
    variants of the model code in one process).
    """

    def __init__(self, model, eos_id: int | None = 0, min_bucket: int = 16, mesh=None, *,
                 check_finite: bool = True, share_programs: bool = True):
        if mesh is not None:  # a jax.sharding.Mesh or "data=2,model=4" (see sharding.py)
            from .loading import shard_model
            from .sharding import make_mesh

            model = shard_model(model, make_mesh(mesh))
        self.mesh = getattr(model, "mesh", None)
        self.model = model
        self.cfg = model.cfg
        self.eos_id = eos_id
        self.min_bucket = min_bucket
        self.graphdef, self.state = nnx.split(model)
        self._programs = (_programs(self.graphdef, eos_id, self.mesh, bool(check_finite)) if share_programs
                          else _Programs(self.graphdef, eos_id, self.mesh, bool(check_finite)))
        self._prefill = self._programs.prefill
        self._decode = self._programs.decode

    @property
    def trace_counts(self) -> dict[str, int]:
        return self._programs.trace_counts

    def decode(self, dstate: DecodeState, sampling: SamplingConfig = GREEDY) -> DecodeState:
        """Run the compiled decode loop from ``dstate`` (donated: do not reuse it), every row with
        ``sampling`` and this generator's EOS id (the program is specialised to both)."""
        return self._decode(self.state, dstate, sampling=sampling)

    def decode_rows(self, dstate: DecodeState, sampling: SamplingArrays, eos, limit, *,
                    stop_at_finish: bool = True) -> DecodeState:
        """The same decode loop with per-row settings, all device inputs of one compiled program (per
        batch and buffer shape): ``sampling`` (b,) arrays, ``eos`` (b,) EOS ids (-1: none), ``limit``
        (b,) positions at which rows stop (``max_tokens``).  ``dstate`` is donated.  With
        ``stop_at_finish`` the loop stops after the step in which some row finishes (see
        :func:`decode_loop`).  The server's decode dispatches run this."""
        return self._programs.decode_rows(self.state, dstate, sampling, eos, limit, stop_at_finish=stop_at_finish)

    def start_state(self, cache: Mamba2Cache, token, key=None, n: int = 1, position: int = 0,
                    finite=None) -> DecodeState:
        """A :class:`DecodeState` for this generator's EOS after ``token`` (b,) at ``position``, with an
        ``n``-column buffer; ``finite`` defaults to all True."""
        token = jnp.asarray(token, jnp.int32)
        finite = jnp.ones(token.shape, bool) if finite is None else finite
        return DecodeState.start(cache, token, finite, jax.random.key(0) if key is None else key, n, self.eos_id,
                                 position)

    # -- host API ---------------------------------------------------------------------------
    def _validate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[list[int]]:
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) \
                or not 0 < max_new_tokens <= MAX_NEW_TOKENS:
            raise GenerationError(
                f"max_new_tokens must be a positive integer <= {MAX_NEW_TOKENS}, got {max_new_tokens!r}")
        if len(prompts) == 0:
            raise GenerationError("no prompts given")
        out = []
        V = self.cfg.padded_vocab_size
        for j, p in enumerate(prompts):
            nonint = [t for t in p if isinstance(t, bool) or not isinstance(t, (int, np.integer))]
            if nonint:
                raise GenerationError(f"prompt {j} has token ids that are not integers: {nonint[:8]!r}")
            p = [int(t) for t in p]
            if len(p) == 0:
                raise GenerationError(f"prompt {j} is empty: give at least one token (e.g. the BOS/EOS id 0)")
            bad = [t for t in p if t < 0 or t >= V]
            if bad:
                raise GenerationError(f"prompt {j} has token ids outside [0, {V}): {bad[:8]}")
            out.append(p)
        return out

    def _prefill_raw(self, prompts, key, sampling):
        """→ ((first token, finite, cache), lengths) for the (bucketed, padded) prompts."""
        if self.mesh is not None:  # pad the batch to a multiple of the "data" axis with copies of row 0
            prompts = list(prompts) + [prompts[0]] * (-len(prompts) % self.mesh.shape["data"])
        lens = np.array([len(p) for p in prompts], np.int32)
        T = bucket_length(int(lens.max()), self.min_bucket)
        ids = np.zeros((len(prompts), T), np.int32)
        for i, p in enumerate(prompts):
            ids[i, : len(p)] = p
        key = jax.random.key(0) if key is None else key
        if self.mesh is not None:
            from .sharding import put_batch

            ids, lens_d = put_batch(ids, self.mesh), put_batch(lens, self.mesh)
        else:
            ids, lens_d = jnp.asarray(ids), jnp.asarray(lens)
        return self._prefill(self.state, ids, lens_d, key, sampling=sampling), lens

    def prefill(self, prompts, key=None, sampling: SamplingConfig = GREEDY):
        """((first token (b,), cache), prompt lengths) for the prompts (padded to a bucket)."""
        (tok, _, cache), lens = self._prefill_raw(prompts, key, sampling)
        return (tok, cache), lens

    def warmup(self, prompts: Sequence[Sequence[int]], max_new_tokens: int,
               sampling: SamplingConfig = GREEDY) -> dict:
        """Compile the programs ``generate`` will use for these shapes; returns seconds spent.

        The decode program is compiled by running it with every row already done (0 iterations).
        """
        prompts = self._validate(prompts, max_new_tokens)
        t0 = time.perf_counter()
        (tok, finite, cache), _ = self._prefill_raw(prompts, jax.random.key(0), sampling)
        tok.block_until_ready()
        t1 = time.perf_counter()
        if max_new_tokens > 1:
            st = DecodeState.start(cache, tok, finite, jax.random.key(0), max_new_tokens, self.eos_id)
            jax.block_until_ready(self.decode(st.replace(done=jnp.ones_like(st.done)), sampling))
        return {"prefill_compile_s": t1 - t0, "decode_compile_s": time.perf_counter() - t1}

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                 sampling: SamplingConfig = GREEDY, seed: int | jax.Array = 0) -> GenerationResult:
        """Generate ``max_new_tokens`` per prompt (fewer for a row that emits EOS).  Raises
        :class:`GenerationError` (with the partial ``result``) if any row meets a non-finite logit."""
        prompts = self._validate(prompts, max_new_tokens)
        key = jax.random.key(seed) if isinstance(seed, (int, np.integer)) else seed
        t0 = time.perf_counter()
        (tok, finite, cache), lens = self._prefill_raw(prompts, key, sampling)
        tok.block_until_ready()
        t1 = time.perf_counter()
        st = DecodeState.start(cache, tok, finite, key, max_new_tokens, self.eos_id)
        if max_new_tokens > 1:
            st = self.decode(st, sampling)
        tokens = np.asarray(st.tokens)  # the only device→host transfer of the loop
        t2 = time.perf_counter()
        b = len(prompts)
        res = GenerationResult(tokens=tokens[:b], num_generated=_num_generated(tokens[:b], self.eos_id),
                               prompt_lengths=lens[:b], prefill_s=t1 - t0, decode_s=t2 - t1,
                               decode_steps=int(st.step) - 1)
        _raise_if_nonfinite(st, b, res)
        return res

    def stream(self, prompt: Sequence[int], max_new_tokens: int, chunk: int = 8,
               sampling: SamplingConfig = GREEDY, seed: int = 0) -> Iterator[list[int]]:
        """Yield lists of new tokens, ``chunk`` tokens per device round trip (the same compiled loop
        as ``generate``, with a ``chunk``-column buffer).  A non-finite logit: the tokens before it
        are yielded, then :class:`GenerationError` is raised."""
        (prompt,) = self._validate([prompt], max_new_tokens)
        key = jax.random.key(seed)
        (tok, finite, cache), _ = self._prefill_raw([prompt], key, sampling)
        st = DecodeState.start(cache, tok, finite, key, 1, self.eos_id)
        _raise_if_nonfinite(st, 1)
        yield [int(tok[0])]
        produced = 1
        while produced < max_new_tokens and not bool(st.done[0]):
            n = min(chunk, max_new_tokens - produced)
            # a fixed chunk keeps one compiled program; tokens past max_new_tokens are dropped
            pad = 0 if self.eos_id is None else self.eos_id
            st = self.decode(st.replace(tokens=jnp.full((st.tokens.shape[0], chunk), pad, jnp.int32),
                                        step=jnp.int32(0)), sampling)
            toks = np.asarray(st.tokens)[0, : min(int(st.step), n)].tolist()
            if bool(st.nonfinite[0]):
                good = toks[: int(st.nonfinite_at[0]) - produced]
                if good:
                    yield good
                _raise_if_nonfinite(st, 1)
            if self.eos_id is not None and self.eos_id in toks:
                toks = toks[: toks.index(self.eos_id) + 1]
            produced += len(toks)
            yield toks
            if n < chunk:
                break


def _raise_if_nonfinite(st: DecodeState, b: int, result: GenerationResult | None = None) -> None:
    bad = np.asarray(st.nonfinite)[:b]
    if not bad.any():
        return
    at = np.asarray(st.nonfinite_at)[:b]
    rows = {int(r): int(at[r]) for r in np.nonzero(bad)[0]}
    row = min(rows, key=lambda r: (rows[r], r))
    err = GenerationError(
        f"non-finite logits (NaN/Inf) at new token {rows[row]} of row {row} (token 0 comes from the prompt's "
        f"last position); no token was emitted from them. Rows affected {{row: token}}: {rows}. "
        f"Non-finite weights or activations: check the checkpoint (mamba2-jax info) and the dtype.")
    err.step, err.row, err.rows, err.result = rows[row], row, rows, result
    raise err


def _num_generated(tokens: np.ndarray, eos_id: int | None) -> np.ndarray:
    n = np.full((tokens.shape[0],), tokens.shape[1], np.int64)
    if eos_id is None:
        return n
    for i in range(tokens.shape[0]):
        hits = np.nonzero(tokens[i] == eos_id)[0]
        if hits.size:
            n[i] = hits[0] + 1
    return n


def generate(model, prompts, max_new_tokens: int, sampling: SamplingConfig = GREEDY, seed=0,
             eos_id: int | None = 0) -> GenerationResult:
    """One-shot convenience wrapper (compiles on first use; keep a ``Generator`` to reuse)."""
    return Generator(model, eos_id=eos_id).generate(prompts, max_new_tokens, sampling, seed)


# ------------------------------------------------------------------------------ host-driven reference loop
_STEPWISE_JIT: dict[Any, Any] = {}


def _stepwise_programs(graphdef):
    """Jitted prefill (with per-layer hidden states) and step closed over ``graphdef``, cached by
    :func:`program_key`: models of one structure share compilations, and only they."""
    key = program_key(graphdef)
    if key not in _STEPWISE_JIT:
        def prefill(state, ids):
            return nnx.merge(graphdef, state).prefill(ids, collect_hidden=True)

        def step(state, tok, cache):
            return nnx.merge(graphdef, state).step(tok, cache)

        _STEPWISE_JIT[key] = (jax.jit(prefill), jax.jit(step, donate_argnums=2))
    return _STEPWISE_JIT[key]


def stepwise_greedy(model, prompt_ids: Sequence[int], max_new_tokens: int, *, eos_id: int | None = None,
                    mask_padded_vocab: bool = True) -> dict[str, np.ndarray]:
    """Greedy decoding driven from the host: one jitted prefill of the exact prompt (no buckets),
    then one jitted ``step`` per token.  Slower than :class:`Generator`; it returns what a check
    needs: ``tokens``, ``step_logits`` (one row per emitted token), the prompt's ``logits`` and
    per-layer ``hidden`` states (layer, position, d).  It is the independent path that parity and
    the tests compare :class:`Generator` and the references against.

    ``mask_padded_vocab=False`` takes the argmax over the padded vocabulary too (as mamba_ssm's
    ``generate`` does when it is not given ``vocab_size``)."""
    graphdef, state = nnx.split(model)
    prefill, step = _stepwise_programs(graphdef)
    V = model.cfg.vocab_size if mask_padded_vocab else model.cfg.padded_vocab_size

    def pick(lg: np.ndarray) -> int:
        return int(np.argmax(lg[:V]))

    logits, cache, hidden = prefill(state, jnp.asarray(np.asarray([list(prompt_ids)], np.int32)))
    step_logits = [np.asarray(logits[0, -1])]
    tokens = [pick(step_logits[-1])] if max_new_tokens > 0 else []
    while 0 < len(tokens) < max_new_tokens and not (eos_id is not None and tokens[-1] == eos_id):
        lg, cache = step(state, jnp.asarray([tokens[-1]], jnp.int32), cache)
        step_logits.append(np.asarray(lg[0]))
        tokens.append(pick(step_logits[-1]))
    return {"tokens": np.asarray(tokens, np.int64), "step_logits": np.stack(step_logits[:max(len(tokens), 1)]),
            "logits": np.asarray(logits[0]), "hidden": np.asarray(hidden[:, 0])}
