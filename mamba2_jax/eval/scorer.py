"""The JAX scorer of perplexity windows (:mod:`.windows`): batched, bucketed, resumable."""

from __future__ import annotations

import json
import sys
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import atomic_savez
from .windows import Windows, WindowScores, _json_array


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


class JaxScorer:
    """Scores windows with a :class:`~mamba2_jax.model.Mamba2LMHeadModel`.

    Windows are sorted by length and grouped into batches of ``batch_size`` (right-padded; padded
    batch rows score nothing); the model input of a batch is bucketed to a multiple of ``bucket``
    tokens, so ``jit`` compiles once per bucket.  The LM head and the fp32 log-softmax are applied
    ``logits_chunk`` positions at a time, so the (batch, length, vocab) logits are never
    materialised.  With several ``jax.devices()`` the batch axis is sharded over them.  With a
    ``mesh`` (or a model loaded on one, see :mod:`mamba2_jax.sharding`) the windows of a batch are
    split over its "data" axis and the model over its "model" axis, also across processes.
    """

    def __init__(self, model, batch_size: int = 4, bucket: int = 512, logits_chunk: int = 256,
                 devices: Sequence[Any] | None = None, mesh=None, state_chunk: int | None = None):
        import jax
        from flax import nnx

        if bucket % logits_chunk:
            raise ValueError(f"bucket ({bucket}) must be a multiple of logits_chunk ({logits_chunk})")
        if state_chunk is not None and (state_chunk < 1 or bucket % state_chunk):
            raise ValueError(f"bucket ({bucket}) must be a multiple of state_chunk ({state_chunk})")
        self.state_chunk = None if state_chunk is None else int(state_chunk)
        if mesh is not None:
            from ..loading import shard_model
            from ..sharding import make_mesh

            model = shard_model(model, make_mesh(mesh))
        self.mesh = getattr(model, "mesh", None)
        self.model = model
        self.devices = list(devices) if devices is not None else jax.devices()
        if self.mesh is not None:
            self.devices = list(self.mesh.devices.flat)
        nd = len(self.devices) if self.mesh is None else int(self.mesh.shape["data"])
        self._n_batch_shards = nd
        self.batch_size = _round_up(max(1, batch_size), nd)
        self.bucket = bucket
        self.logits_chunk = logits_chunk
        graphdef, state = nnx.split(model)
        self._in_sharding = None
        if self.mesh is not None:
            from jax.sharding import NamedSharding
            from jax.sharding import PartitionSpec as P

            self._in_sharding = NamedSharding(self.mesh, P("data"))
        elif nd > 1:
            from jax.sharding import Mesh, NamedSharding
            from jax.sharding import PartitionSpec as P

            mesh = Mesh(np.array(self.devices), ("data",))
            state = jax.device_put(state, NamedSharding(mesh, P()))
            self._in_sharding = NamedSharding(mesh, P("data"))
        self._state = state
        self._fn = _jitted_score_fn(model, graphdef, logits_chunk, self.state_chunk)
        self.shapes_compiled: set[tuple[int, int]] = set()
        self.compile_seconds = 0.0

    # -- one batch ---------------------------------------------------------------------------
    def _bucket_width(self, max_len: int) -> int:
        return _round_up(max(max_len - 1, 1), self.bucket) + 1

    def token_logprobs(self, ids: np.ndarray, lengths: np.ndarray, score_from: np.ndarray) -> np.ndarray:
        """Per-target log-probabilities (b, w-1) float32 (0 where not scored); target t is at t-1."""
        import jax

        b = len(lengths)
        w = self._bucket_width(int(np.max(lengths)))
        B = self.batch_size if b <= self.batch_size else _round_up(b, self._n_batch_shards)
        x = np.zeros((B, w), np.int32)
        cols = min(w, ids.shape[1])
        x[:b, :cols] = ids[:, :cols]
        L = np.ones(B, np.int32)
        F = np.ones(B, np.int32)
        L[:b], F[:b] = lengths, score_from
        args = [x, L, F]
        if self.mesh is not None:
            from ..sharding import put_batch, to_host

            args = [put_batch(a, self.mesh) for a in args]
        elif self._in_sharding is not None:
            args = [jax.device_put(a, self._in_sharding) for a in args]
        key = (B, w)
        t0 = time.perf_counter()
        out = self._fn(self._state, *args)
        out = to_host(out) if self.mesh is not None else np.asarray(out)
        if key not in self.shapes_compiled:
            self.shapes_compiled.add(key)
            self.compile_seconds += time.perf_counter() - t0  # first call of a shape: compile (if new) + run
        return out[:b]

    # -- all windows -------------------------------------------------------------------------
    def plan(self, windows: Windows) -> list[np.ndarray]:
        """Deterministic batches: windows sorted by length (longest first), ``batch_size`` each."""
        order = np.argsort(-windows.lengths, kind="stable")
        return [order[i: i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    def score(self, windows: Windows, state_path: str | Path | None = None, fingerprint: dict | None = None,
              progress: bool = True, desc: str = "jax", on_batch: Callable[[int], None] | None = None,
              checkpoint_every_s: float = 0.0) -> WindowScores:
        """Score all windows; with ``state_path`` per-window results are checkpointed atomically
        (after every batch, or at most every ``checkpoint_every_s`` seconds) and a rerun with the
        same windows and ``fingerprint`` resumes where the previous run stopped."""
        from tqdm.auto import tqdm

        n = len(windows)
        meta = {"windows_sha256": windows.sha256(), "fingerprint": fingerprint or {}}
        loglik = np.zeros(n, np.float64)
        n_scored = np.zeros(n, np.int64)
        done = np.zeros(n, bool)
        resumed = 0
        if state_path is not None and Path(state_path).exists():
            prev = _load_progress(state_path, meta, n)
            if prev is not None:
                loglik, n_scored, done = prev
                resumed = int(done.sum())
        targets = windows.n_targets
        todo = [bt for bt in self.plan(windows) if not done[bt].all()]
        compile0 = self.compile_seconds
        t_start = time.perf_counter()
        last_save = 0.0
        tok_done = 0
        bar = tqdm(total=int(targets[~done].sum()), unit="tok", unit_scale=True, desc=desc, disable=not progress,
                   dynamic_ncols=True, mininterval=1.0)
        try:
            for bt in todo:
                lp = self.token_logprobs(windows.input_ids[bt], windows.lengths[bt], windows.score_from[bt])
                loglik[bt] = lp.astype(np.float64).sum(axis=1)
                n_scored[bt] = targets[bt]
                done[bt] = True
                tok_done += int(targets[bt].sum())
                bar.update(int(targets[bt].sum()))
                bar.set_postfix(windows=f"{int(done.sum())}/{n}", compiled=len(self.shapes_compiled), refresh=False)
                now = time.perf_counter()
                if state_path is not None and (now - last_save >= checkpoint_every_s or done.all()):
                    _save_progress(state_path, meta, loglik, n_scored, done)
                    last_save = now
                if on_batch is not None:
                    on_batch(int(done.sum()))
        finally:
            bar.close()
            if state_path is not None and done.any():
                _save_progress(state_path, meta, loglik, n_scored, done)
        wall = time.perf_counter() - t_start
        first_calls = self.compile_seconds - compile0
        info = {"resumed_windows": resumed, "computed_windows": n - resumed, "computed_tokens": tok_done,
                "wall_seconds": wall, "first_call_seconds": first_calls,
                "shapes_compiled": sorted(self.shapes_compiled), "batch_size": self.batch_size,
                "bucket": self.bucket, "state_chunk": self.state_chunk, "n_devices": len(self.devices),
                "mesh": None if self.mesh is None else {k: int(v) for k, v in self.mesh.shape.items()},
                "tokens_per_second_incl_compile": tok_done / wall if tok_done else None}
        return WindowScores(loglik, n_scored, info)


def _make_score_fn(graphdef, chunk: int, state_chunk: int | None = None):
    """(state, ids (b, w), lengths, score_from) → per-target log-probs (b, w-1), fp32 log-softmax.
    ``state_chunk``: the input runs as prefill calls of that many tokens, each starting from the cache
    the previous one returned (in the model's state dtype), as a serving engine's chunked prefill
    stores the state between chunks; None: one call."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    def fn(state, ids, lengths, score_from):
        model = nnx.merge(graphdef, state)
        b, w = ids.shape
        lb = w - 1
        inp, tgt = ids[:, :-1], ids[:, 1:]
        in_len = jnp.clip(lengths - 1, 1, lb).astype(jnp.int32)
        if state_chunk is None or lb <= state_chunk:
            h, _ = model.hidden_states(inp, lengths=in_len)  # (b, lb, d) f32, under the model's prefill policy
        else:  # a lax.scan over the calls (one compiled call); a row with no real token in a call keeps its state
            n = lb // state_chunk
            pieces = jnp.moveaxis(inp.reshape(b, n, state_chunk), 1, 0)
            lens = jnp.clip(in_len[None, :] - jnp.arange(n, dtype=jnp.int32)[:, None] * state_chunk, 0,
                            state_chunk).astype(jnp.int32)

            def call(cache, xs):
                hk, cache = model.hidden_states(xs[0], cache, lengths=xs[1])
                return cache, hk

            _, hs = jax.lax.scan(call, model.init_cache(b), (pieces, lens))
            h = jnp.moveaxis(hs, 0, 1).reshape(b, lb, hs.shape[-1])
        # position-major rows, so that each chunk of the head holds ``chunk`` positions of every row
        rows = jnp.swapaxes(h, 0, 1).reshape(lb * b, h.shape[-1])
        lp = model.token_logprobs(rows, jnp.swapaxes(tgt, 0, 1).reshape(-1), chunk * b)
        lp = jnp.swapaxes(lp.reshape(lb, b), 0, 1)
        t = jnp.arange(1, w)[None, :]
        mask = (t >= score_from[:, None]) & (t < lengths[:, None])
        return jnp.where(mask, lp, 0.0)

    return fn


_JIT_CACHE: weakref.WeakKeyDictionary[Any, dict[tuple, Any]] = weakref.WeakKeyDictionary()


def _jitted_score_fn(model, graphdef, chunk: int, state_chunk: int | None = None):
    """One jitted function per (model object, chunk, state chunk): scorers of one model share compiled shapes."""
    import jax

    per_model = _JIT_CACHE.setdefault(model, {})
    if (chunk, state_chunk) not in per_model:
        per_model[chunk, state_chunk] = jax.jit(_make_score_fn(graphdef, chunk, state_chunk))
    return per_model[chunk, state_chunk]


def _save_progress(path, meta, loglik, n_scored, done) -> None:
    atomic_savez(path, loglik=loglik, n_scored=n_scored, done=done, meta=_json_array(meta))


def _load_progress(path, meta, n):
    try:
        with np.load(path, allow_pickle=False) as z:
            prev_meta = json.loads(str(z["meta"]))
            if prev_meta != json.loads(json.dumps(meta, sort_keys=True)) or len(z["done"]) != n:
                print(f"[perplexity] ignoring {path}: it belongs to other windows or another model", file=sys.stderr)
                return None
            return z["loglik"].astype(np.float64), z["n_scored"].astype(np.int64), z["done"].astype(bool)
    except Exception as e:
        print(f"[perplexity] ignoring unreadable checkpoint {path}: {e}", file=sys.stderr)
        return None
