"""Compiled, on-device autoregressive generation.

* Prefill is jitted; prompts are right-padded to a length bucket (powers of two, at least
  ``min_bucket``) so that new prompt lengths inside a bucket reuse the compiled program.
  Padding positions are exact no-ops (dt = 0, x = 0 in the scan; the conv state is gathered at
  each row's own end), so a ragged batch gives each row the result it would get alone.
* The decode loop is one ``lax.while_loop`` on device: the cache is donated, sampling happens
  on device with explicit PRNG keys, every row stops at its own EOS, the loop stops when all
  rows are done, and the host sees tokens once, when the loop ends.
* Streaming runs the same loop in chunks of ``k`` tokens: one device round trip per chunk.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = ["SamplingConfig", "GenerationResult", "Generator", "generate", "sample_logits", "bucket_length",
           "stepwise_greedy"]


class GenerationError(ValueError):
    pass


# The output buffer is (batch, max_new_tokens) int32 on device and the loop counter is int32.
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


def sample_logits(logits: jax.Array, key: jax.Array, cfg: SamplingConfig, vocab_size: int) -> jax.Array:
    """(b, V) float32 logits → (b,) int32 tokens.  Padded vocabulary entries are never chosen."""
    V = logits.shape[-1]
    if vocab_size < V:
        logits = jnp.where(jnp.arange(V) < vocab_size, logits, -jnp.inf)
    if cfg.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = (logits - jnp.max(logits, axis=-1, keepdims=True)) / cfg.temperature  # max → 0: no overflow at tiny T
    if cfg.top_k and cfg.top_k < V:
        kth = jax.lax.top_k(logits, cfg.top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if cfg.top_p < 1.0:
        srt = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(srt, axis=-1)
        cum = jnp.cumsum(probs, axis=-1)
        # keep the smallest prefix whose mass reaches top_p (always at least one token)
        keep = (cum - probs) < cfg.top_p
        thresh = jnp.min(jnp.where(keep, srt, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < thresh, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def bucket_length(n: int, min_bucket: int = 16) -> int:
    """The prompt-length bucket: the next power of two ≥ n (and ≥ min_bucket)."""
    b = max(int(min_bucket), 1)
    while b < n:
        b *= 2
    return b


@dataclass
class GenerationResult:
    tokens: np.ndarray  # (b, max_new_tokens) int32; after a row's EOS: eos_id
    num_generated: np.ndarray  # (b,) tokens up to and including EOS
    prompt_lengths: np.ndarray
    prefill_s: float
    decode_s: float
    decode_steps: int
    compile_s: dict = field(default_factory=dict)

    @property
    def decode_tok_s(self) -> float:
        """Decode steps per second × batch (generated tokens/s, excluding the prefill token)."""
        n = int(self.tokens.shape[0]) * max(self.decode_steps, 0)
        return n / self.decode_s if self.decode_s > 0 else float("nan")

    def sequences(self) -> list[list[int]]:
        return [list(map(int, self.tokens[i, : self.num_generated[i]])) for i in range(self.tokens.shape[0])]


class Generator:
    """Holds the compiled prefill and decode programs for one model.

    ``trace_counts`` counts how many times each program was traced (= compiled), which the
    tests use to check that prompt bucketing avoids recompiles.
    """

    def __init__(self, model, eos_id: int | None = 0, min_bucket: int = 16, mesh=None,
                 prefill_segment: int | None = 8192):
        if mesh is not None:  # a jax.sharding.Mesh or "data=2,model=4" (see sharding.py)
            from .loading import shard_model
            from .sharding import make_mesh

            model = shard_model(model, make_mesh(mesh))
        self.mesh = getattr(model, "mesh", None)
        self.model = model
        self.cfg = model.cfg
        self.eos_id = eos_id
        self.min_bucket = min_bucket
        if prefill_segment is not None and (prefill_segment < min_bucket or prefill_segment & (prefill_segment - 1)):
            raise GenerationError(f"prefill_segment must be a power of two >= min_bucket ({min_bucket}), "
                                  f"got {prefill_segment}")
        # Prompts whose bucket is longer than this are prefilled in segments of this many tokens,
        # carrying the cache, so peak memory does not grow with the prompt (None: never segment).
        self.prefill_segment = prefill_segment
        self.graphdef, self.state = nnx.split(model)
        self.trace_counts = {"prefill": 0, "decode": 0, "prefill_segment": 0}
        self._prefill = jax.jit(self._prefill_impl, static_argnames=("sampling",))
        self._prefill_seg = jax.jit(self._prefill_seg_impl, donate_argnums=(3, 4))
        self._sample_first = jax.jit(
            lambda logits, key, sampling: sample_logits(logits, jax.random.fold_in(key, 0), sampling,
                                                        self.cfg.vocab_size), static_argnames=("sampling",))
        self._decode = jax.jit(self._decode_impl, static_argnames=("sampling", "n_steps"), donate_argnums=(1,))

    # -- compiled programs ------------------------------------------------------------------
    def _prefill_impl(self, state, ids, lengths, key, sampling: SamplingConfig):
        self.trace_counts["prefill"] += 1
        model = nnx.merge(self.graphdef, state)
        logits, cache = model.prefill(ids, lengths=lengths, last_only=True)
        tok = sample_logits(logits, jax.random.fold_in(key, 0), sampling, self.cfg.vocab_size)
        return self._replicated(tok), cache

    def _prefill_seg_impl(self, state, ids, lengths, cache, last_logits):
        """One segment of a long prompt: (b, S) ids with per-row real lengths in [0, S] (0: the row's
        prompt has ended; its state passes through unchanged).  Keeps each row's last real logits."""
        self.trace_counts["prefill_segment"] += 1
        model = nnx.merge(self.graphdef, state)
        logits, cache = model.prefill(ids, cache, lengths=lengths, last_only=True)
        return jnp.where((lengths > 0)[:, None], logits, last_logits), cache

    def _decode_impl(self, state, cache, first_tok, done, start, key, sampling: SamplingConfig, n_steps: int):
        """Generate tokens start+1 .. start+n_steps-… into a (b, n_steps) buffer.

        Carry: (i, cache, last token, done mask, out buffer).  Stops early when all rows are done.
        """
        self.trace_counts["decode"] += 1
        model = nnx.merge(self.graphdef, state)
        b = first_tok.shape[0]
        eos = -1 if self.eos_id is None else self.eos_id
        pad = 0 if self.eos_id is None else self.eos_id
        out0 = jnp.full((b, n_steps), pad, jnp.int32)

        def cond(c):
            i, _, _, done, _ = c
            return (i < n_steps) & ~jnp.all(done)

        def body(c):
            i, cache, tok, done, out = c
            logits, cache = model.step(tok, cache)
            nxt = sample_logits(logits, jax.random.fold_in(key, start + i + 1), sampling, self.cfg.vocab_size)
            nxt = jnp.where(done, pad, nxt)
            out = jax.lax.dynamic_update_slice(out, nxt[:, None], (0, i))
            done = done | (nxt == eos)
            return i + 1, cache, nxt, done, out

        i, cache, tok, done, out = jax.lax.while_loop(cond, body, (jnp.int32(0), cache, first_tok, done, out0))
        return self._replicated(out), cache, self._replicated(tok), self._replicated(done), i

    def _replicated(self, x):
        """Tokens leave the device program replicated, so every process can read them (mesh only)."""
        if self.mesh is None:
            return x
        from .sharding import replicate

        return replicate(x, self.mesh)

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

    def prefill(self, prompts, key=None, sampling: SamplingConfig = SamplingConfig()):
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

            return self._prefill(self.state, put_batch(ids, self.mesh), put_batch(lens, self.mesh), key,
                                 sampling=sampling), lens
        S = self.prefill_segment
        if S is None or T <= S:
            return self._prefill(self.state, jnp.asarray(ids), jnp.asarray(lens), key, sampling=sampling), lens
        # segmented: fixed (b, S) programs, the cache carried from one to the next
        b = len(prompts)
        n_seg = -(-T // S)
        ids = np.pad(ids, ((0, 0), (0, n_seg * S - T)))
        cache = self.model.init_cache(b)
        logits = jnp.zeros((b, self.cfg.padded_vocab_size), jnp.float32)
        for k in range(n_seg):
            seg_len = np.clip(lens - k * S, 0, S).astype(np.int32)
            if not seg_len.any():
                break
            logits, cache = self._prefill_seg(self.state, jnp.asarray(ids[:, k * S:(k + 1) * S]),
                                              jnp.asarray(seg_len), cache, logits)
        return (self._sample_first(logits, key, sampling=sampling), cache), lens

    def warmup(self, prompts: Sequence[Sequence[int]], max_new_tokens: int,
               sampling: SamplingConfig = SamplingConfig()) -> dict:
        """Compile the programs ``generate`` will use for these shapes; returns seconds spent.

        The decode program is compiled by running it with every row already done (0 iterations).
        """
        prompts = self._validate(prompts, max_new_tokens)
        t0 = time.perf_counter()
        (tok, cache), _ = self.prefill(prompts, jax.random.key(0), sampling)
        tok.block_until_ready()
        t1 = time.perf_counter()
        if max_new_tokens > 1:
            out = self._decode(self.state, cache, tok, jnp.ones_like(tok, dtype=bool), jnp.int32(0),
                               jax.random.key(0), sampling=sampling, n_steps=max_new_tokens - 1)
            jax.block_until_ready(out)
        return {"prefill_compile_s": t1 - t0, "decode_compile_s": time.perf_counter() - t1}

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                 sampling: SamplingConfig = SamplingConfig(), seed: int | jax.Array = 0) -> GenerationResult:
        prompts = self._validate(prompts, max_new_tokens)
        key = jax.random.key(seed) if isinstance(seed, (int, np.integer)) else seed
        t0 = time.perf_counter()
        (tok, cache), lens = self.prefill(prompts, key, sampling)
        tok.block_until_ready()
        t1 = time.perf_counter()
        eos = -2 if self.eos_id is None else self.eos_id
        done = tok == eos
        if max_new_tokens > 1:
            out, cache, _, done, steps = self._decode(self.state, cache, tok, done, jnp.int32(0), key,
                                                      sampling=sampling, n_steps=max_new_tokens - 1)
            out = np.asarray(out)  # the only device→host transfer of the loop
            steps = int(steps)
        else:
            out, steps = np.zeros((tok.shape[0], 0), np.int32), 0
        t2 = time.perf_counter()
        tokens = np.concatenate([np.asarray(tok)[:, None], out], axis=1)[: len(prompts)]
        return GenerationResult(tokens=tokens, num_generated=_num_generated(tokens, self.eos_id),
                                prompt_lengths=lens[: len(prompts)], prefill_s=t1 - t0, decode_s=t2 - t1,
                                decode_steps=steps)

    def stream(self, prompt: Sequence[int], max_new_tokens: int, chunk: int = 8,
               sampling: SamplingConfig = SamplingConfig(), seed: int = 0) -> Iterator[list[int]]:
        """Yield lists of new tokens, ``chunk`` tokens per device round trip."""
        (prompt,) = self._validate([prompt], max_new_tokens)
        key = jax.random.key(seed)
        (tok, cache), _ = self.prefill([prompt], key, sampling)
        first = int(tok[0])
        yield [first]
        eos = -2 if self.eos_id is None else self.eos_id
        done = tok == eos
        produced = 1
        while produced < max_new_tokens and not bool(done[0]):
            n = min(chunk, max_new_tokens - produced)
            # fixed chunk size keeps one compiled program; extra tokens are dropped
            out, cache, tok, done, steps = self._decode(self.state, cache, tok, done, jnp.int32(produced - 1), key,
                                                        sampling=sampling, n_steps=chunk)
            toks = np.asarray(out)[0, : min(int(steps), n)].tolist()
            if self.eos_id is not None and self.eos_id in toks:
                toks = toks[: toks.index(self.eos_id) + 1]
                done = jnp.ones_like(done)
            produced += len(toks)
            yield toks
            if n < chunk:
                break


def _num_generated(tokens: np.ndarray, eos_id: int | None) -> np.ndarray:
    if eos_id is None:
        return np.full((tokens.shape[0],), tokens.shape[1], np.int64)
    n = np.full((tokens.shape[0],), tokens.shape[1], np.int64)
    for i in range(tokens.shape[0]):
        hits = np.nonzero(tokens[i] == eos_id)[0]
        if hits.size:
            n[i] = hits[0] + 1
    return n


def generate(model, prompts, max_new_tokens: int, sampling: SamplingConfig = SamplingConfig(), seed=0,
             eos_id: int | None = 0) -> GenerationResult:
    """One-shot convenience wrapper (compiles on first use; keep a ``Generator`` to reuse)."""
    return Generator(model, eos_id=eos_id).generate(prompts, max_new_tokens, sampling, seed)


# ------------------------------------------------------------------------------ host-driven reference loop
_STEPWISE_JIT: dict[Any, Any] = {}


def _stepwise_programs(graphdef, key):
    """Jitted prefill (with per-layer hidden states) and step closed over ``graphdef``, cached by
    ``key``: models of one structure share compilations."""
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
    prefill, step = _stepwise_programs(graphdef, (model.cfg, str(model.dtype), str(getattr(model, "precision", None))))
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
