"""The serving engine: continuous batching over a fixed table of O(1) state slots.

One scheduler thread loops:

1. drop cancelled requests (a client that went away, a stop string) and free their slots;
2. admit waiting requests into free slots: restore the longest cached exact prefix of the prompt
   (:class:`~.prefix_cache.PrefixCache`), else zero the slot;
3. prefill compiled calls of about ``prefill_chunk`` tokens each (one chunk of a long prompt, or the
   chunks of up to ``prefill_rows`` short ones: at most that many slots are between prefill chunks at
   a time), admitting more requests between calls, until ``prefill_budget`` prompt tokens are done,
   so the decoding rows wait for at most that many prompt tokens per iteration; chunk ends fall on
   multiples of the block (= ``prefill_chunk``), where the state is snapshotted into the prefix cache;
4. run the compiled decode program (``decode_steps`` tokens) over all slots, hand the tokens to their
   requests, snapshot and free the slots of finished requests.

Memory is fixed at start-up: S slots × (conv + SSM state of every layer), whatever the prompt
lengths; the prefix cache holds further states under its own byte budget.

A request's output depends only on its prompt, its settings and its key (``seed``, and the choice
index for ``n`` > 1): rows are independent in the model, sampling draws per row with the row's key
(:func:`~mamba2_jax.generate.sample_rows`, in the project's one decode loop,
:func:`~mamba2_jax.generate.decode_loop`), and a row that is not decoding never samples, advances or
emits.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..cache import Mamba2Cache
from ..generate import SamplingArrays, bucket_length, row_key
from .prefix_cache import PrefixCache
from .programs import SlotPrograms

__all__ = ["Engine", "EngineError", "QueueFull", "Request", "RequestParams"]

MAX_SEED = 2**63 - 1


class EngineError(RuntimeError):
    """The engine cannot take a request (stopped), or a request failed (non-finite logits)."""


class QueueFull(EngineError):
    """The waiting queue is full: retry later."""


@dataclass(frozen=True)
class RequestParams:
    """``temperature`` 0 is greedy.  ``top_k`` 0 (or -1) and ``top_p`` 1 disable those filters."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    ignore_eos: bool = False

    def __post_init__(self):
        def bad(msg):
            raise ValueError(msg)

        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            bad(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if not (0.0 <= float(self.temperature) < float("inf")):
            bad(f"temperature must be finite and >= 0, got {self.temperature!r}")
        if not (0.0 < float(self.top_p) <= 1.0):
            bad(f"top_p must be in (0, 1], got {self.top_p!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < -1:
            bad(f"top_k must be an integer >= -1 (0 or -1: off), got {self.top_k!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not 0 <= self.seed <= MAX_SEED):
            bad(f"seed must be an integer in [0, 2**63), got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        return float(self.temperature) == 0.0


_ids = itertools.count()


@dataclass(eq=False)
class Request:
    """One sequence being generated.  Events go to ``on_event(kind, payload)`` from the scheduler
    thread: ("tokens", [ids]), then ("done", finish_reason) or ("error", message).  ``finish_reason``
    is "stop" (EOS, or ``cancel("stop")``), "length" (``max_tokens``), "abort" (cancelled) or "error"."""

    prompt: list[int]
    params: RequestParams
    key_data: np.ndarray  # (2,) uint32: the request's PRNG key
    on_event: Callable[[str, Any], None] | None = None
    id: int = field(default_factory=lambda: next(_ids))
    output: list[int] = field(default_factory=list)
    cached_tokens: int = 0
    finish_reason: str | None = None
    error: str | None = None
    t_submit: float = field(default_factory=time.perf_counter)
    t_first: float | None = None
    t_last: float | None = None
    _cancel: str | None = None
    _done: threading.Event = field(default_factory=threading.Event)

    def cancel(self, reason: str = "abort") -> None:
        """Stop this request at the next scheduler iteration (its slot is freed there)."""
        if self._cancel is None:
            self._cancel = reason

    @property
    def finished(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def _emit(self, kind: str, payload: Any) -> None:
        if self.on_event is not None:
            try:
                self.on_event(kind, payload)
            except Exception:  # a consumer that went away must not stop the scheduler
                traceback.print_exc()


@dataclass
class _Slot:
    req: Request
    progress: int = 0  # prompt tokens consumed
    decoding: bool = False


class Engine:
    """Continuous batching over ``slots`` state slots (see the module docstring).

    ``prefill_chunk``: prompt tokens per prefill call (and the prefix-cache block);
    ``prefill_budget``: prompt tokens per scheduler iteration (None: ``prefill_chunk``), the most the
    decoding rows wait for between dispatches; ``prefill_rows``: requests per prefill call;
    ``decode_steps``: tokens per decode dispatch;
    ``prefix_cache_bytes``: the prefix cache's budget (0: off); ``max_queue``: waiting requests
    before ``submit`` raises :class:`QueueFull`.
    """

    def __init__(self, model, *, slots: int = 8, prefill_chunk: int = 256, prefill_rows: int | None = None,
                 prefill_budget: int | None = None, decode_steps: int = 4, prefix_cache_bytes: int = 1 << 30,
                 max_queue: int = 256,
                 eos_id: int | None = 0, metrics=None, min_bucket: int = 16):
        if slots < 1 or decode_steps < 1 or prefill_chunk < 1 or max_queue < 0:
            raise ValueError("slots, decode_steps and prefill_chunk must be >= 1 and max_queue >= 0")
        if prefill_chunk & (prefill_chunk - 1):
            raise ValueError(f"prefill_chunk must be a power of two, got {prefill_chunk}")
        self.model = model
        self.cfg = model.cfg
        self.S = int(slots)
        self.prefill_chunk = int(prefill_chunk)
        self.prefill_budget = self.prefill_chunk if prefill_budget is None else int(prefill_budget)
        if self.prefill_budget < 1:
            raise ValueError(f"prefill_budget must be >= 1, got {prefill_budget}")
        self.min_bucket = min(int(min_bucket), self.prefill_chunk)
        mesh = getattr(model, "mesh", None)
        self.D = 1 if mesh is None else int(mesh.shape["data"])  # batches the model runs: multiples of D
        self.P = int(prefill_rows or min(self.S, 8))  # slots between prefill chunks at a time, at most
        self.k = int(decode_steps)
        self.eos_id = eos_id
        self.max_queue = int(max_queue)
        self.programs = SlotPrograms(model, self.S, self.P, self.k)
        self.prefix_cache = PrefixCache(prefix_cache_bytes)
        self.metrics = metrics
        self.slot_bytes = self.state_bytes(self.cfg, model.dtype, model.state_dtype)
        self.buckets = sorted({bucket_length(n, self.min_bucket) for n in
                               (2 ** i for i in range(0, self.prefill_chunk.bit_length()))
                               if n <= self.prefill_chunk})
        self._slots: list[_Slot | None] = [None] * self.S
        self._waiting: deque[Request] = deque()
        self._cv = threading.Condition()
        self._admitting = False
        self._stop = False
        self._thread: threading.Thread | None = None
        self.ready = False
        self.iterations = 0
        self.decode_time = 0.0
        self.decode_dispatches = 0
        self.decode_row_steps = 0
        self.prefill_calls = 0
        self.prefill_tokens = 0
        self.max_prefill_per_iteration = 0  # prompt tokens, the most one iteration ran
        self.fatal: str | None = None
        # per-slot decode inputs, on the host
        S = self.S
        self._tok = np.zeros(S, np.int32)
        self._pos = np.zeros(S, np.int32)
        self._done = np.ones(S, bool)
        self._eos = np.full(S, -1, np.int32)
        self._limit = np.ones(S, np.int32)
        self._keys = np.zeros((S, 2), np.uint32)
        self._samp = SamplingArrays.host(np.ones(S, bool), np.ones(S), np.zeros(S), np.ones(S))

    # ------------------------------------------------------------------------------ set-up
    @staticmethod
    def state_bytes(cfg, dtype, state_dtype="float32") -> int:
        """Bytes of one sequence's state: conv (d_conv - 1, conv_dim) in the activation dtype and SSM
        (nheads, headdim, d_state) in the state dtype, per layer, plus its length counter."""
        return Mamba2Cache.row_bytes(cfg, dtype, state_dtype)

    def start(self) -> dict:
        """Allocate the slot table, compile and run every program once (warm-up), start the scheduler.
        Returns the seconds spent compiling."""
        t0 = time.perf_counter()
        self._cache = self.programs.init_cache()
        self._zero_row = self.programs.zero_row()
        S = self.S
        pr = self.programs
        for C, P in sorted({(c, p) for c in self.buckets for p in (self._batch(1), self.rows_for(c))}):
            idx = np.full(P, S, np.int32)  # every prefill bucket, one row or its full rows (dummies: dropped)
            rows, tok, _ = pr.prefill(pr.state, pr.read_rows(self._cache, idx), np.zeros((P, C), np.int32),
                                      np.zeros(P, np.int32), self._key_arr(np.zeros((P, 2), np.uint32)),
                                      self._samp.take(np.zeros(P, int)))
            self._cache = pr.write_rows(self._cache, idx, rows)
        B = self._batch(1)
        while True:  # every decode batch: 1, 2, 4, ... below S gathered, then the whole table (rows done)
            idx = np.zeros(min(B, S), int)
            cache = self._cache if B >= S else pr.read_rows(self._cache, np.full(B, S, np.int32))
            c = pr.decode(cache, self._tok[idx], self._pos[idx], np.ones(len(idx), bool),
                          self._key_arr(self._keys[idx]), self._samp.take(idx), self._eos[idx], self._limit[idx])
            if B >= S:
                self._cache = c.cache
                break
            self._cache = pr.write_rows(self._cache, np.full(B, S, np.int32), c.cache)
            B *= 2
        for n in sorted({1, self.P, self._batch(1)} | {self.rows_for(C) for C in self.buckets}):  # other counts
            self._cache = pr.write_rows(self._cache, np.full(n, S, np.int32),
                                        pr.read_rows(self._cache, np.full(n, S, np.int32)))
        jax.block_until_ready(self._cache)
        compile_s = time.perf_counter() - t0
        self._thread = threading.Thread(target=self._run, name="mamba2-jax-scheduler", daemon=True)
        self._admitting = True
        self._thread.start()
        self.ready = True
        return {"warmup_s": compile_s, "trace_counts": dict(self.programs.trace_counts)}

    @staticmethod
    def _key_arr(key_data):
        return jax.random.wrap_key_data(jnp.asarray(key_data, jnp.uint32))

    @staticmethod
    def request_key(seed: int | None, choice: int = 0) -> np.ndarray:
        """The key data of a request's choice: row ``choice`` of ``Generator.generate([prompt] * n,
        seed=seed)`` (``generate.row_key``)."""
        if seed is None:
            seed = int(np.random.default_rng().integers(0, 2**62))
        k = row_key(jax.random.key(int(seed)), int(choice))
        return np.asarray(jax.random.key_data(k), np.uint32)

    # ------------------------------------------------------------------------------ API
    def submit(self, prompt: Sequence[int], params: RequestParams, choice: int = 0,
               on_event: Callable[[str, Any], None] | None = None) -> Request:
        """Queue a request.  Raises ValueError (bad prompt), QueueFull, or EngineError (stopped)."""
        prompt = [int(t) for t in prompt]
        if not prompt:
            raise ValueError("the prompt is empty: give at least one token")
        V = self.cfg.vocab_size
        bad = [t for t in prompt if not 0 <= t < V]
        if bad:
            raise ValueError(f"prompt token ids outside [0, {V}): {bad[:8]}")
        req = Request(prompt=prompt, params=params, key_data=self.request_key(params.seed, choice),
                      on_event=on_event)
        with self._cv:
            if self.fatal:
                raise EngineError(f"the engine stopped after an internal error: {self.fatal}")
            if not self._admitting:
                raise EngineError("the server is shutting down and takes no new requests")
            # the waiting requests take the free slots first; only what is left of them queues
            free = sum(s is None for s in self._slots)
            if len(self._waiting) - free >= self.max_queue:
                raise QueueFull(f"{len(self._waiting) - free} requests are waiting for a slot "
                                f"(--max-queue {self.max_queue})")
            self._waiting.append(req)
            self._cv.notify()
        self._gauges()
        return req

    def generate(self, prompt: Sequence[int], params: RequestParams, choice: int = 0) -> Iterator[list[int]]:
        """Blocking convenience: submit and yield token lists as they come.  Raises EngineError on a
        failed request."""
        q: queue.SimpleQueue = queue.SimpleQueue()
        req = self.submit(prompt, params, choice, on_event=lambda k, p: q.put((k, p)))
        while True:
            kind, payload = q.get()
            if kind == "tokens":
                yield payload
            elif kind == "error":
                raise EngineError(payload)
            else:
                return req

    def stop_admission(self) -> None:
        with self._cv:
            self._admitting = False
            self._cv.notify()

    def shutdown(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop taking requests; with ``drain`` finish the admitted and waiting ones first (else cancel
        them), then stop the scheduler thread."""
        with self._cv:
            self._admitting = False
            if not drain:
                for r in self._waiting:
                    r.cancel()
                for s in self._slots:
                    if s is not None:
                        s.req.cancel()
            self._stop = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def busy_slots(self) -> int:
        return sum(s is not None for s in self._slots)

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    # ------------------------------------------------------------------------------ scheduler
    def _run(self) -> None:
        try:
            while True:
                with self._cv:
                    while not (self._waiting or any(self._slots) or self._stop):
                        self._cv.wait()
                    if self._stop and not self._waiting and not any(self._slots):
                        return
                self._iteration()
        except Exception as e:  # fail every request rather than hang them
            self.fatal = f"{type(e).__name__}: {e}"
            traceback.print_exc()
            with self._cv:
                self._admitting = False
                reqs = list(self._waiting) + [s.req for s in self._slots if s is not None]
                self._waiting.clear()
                self._slots = [None] * self.S
            for r in reqs:
                self._fail(r, f"internal error in the serving engine: {self.fatal}")

    def _iteration(self) -> None:
        self.iterations += 1
        self._drop_cancelled()
        done = 0
        while done < self.prefill_budget:
            self._admit()
            n = self._prefill()
            if not n:
                break
            done += n
            self.prefill_calls += 1
        self.prefill_tokens += done
        self.max_prefill_per_iteration = max(self.max_prefill_per_iteration, done)
        self._decode()
        self._gauges()

    def _drop_cancelled(self) -> None:
        with self._cv:
            gone = [r for r in self._waiting if r._cancel]
            for r in gone:
                self._waiting.remove(r)
        for r in gone:
            self._finish(r, r._cancel)
        for i, s in enumerate(self._slots):
            if s is not None and s.req._cancel:
                self._release(i, s.req._cancel)

    def _admit(self) -> None:
        while True:
            with self._cv:
                free = [i for i, s in enumerate(self._slots) if s is None]
                prefilling = sum(s is not None and not s.decoding for s in self._slots)
                if not free or not self._waiting or prefilling >= self.P:  # at most P slots between chunks
                    return
                req = self._waiting.popleft()
            i = free[0]
            hit = self.prefix_cache.lookup(req.prompt) if self.prefix_cache.max_bytes else None
            if hit is not None:
                self._cache = self.programs.write_rows(self._cache, np.array([i], np.int32), hit.state)
                req.cached_tokens = hit.length
            else:
                self._cache = self.programs.write_rows(self._cache, np.array([i], np.int32), self._zero_row)
            if self.metrics is not None and self.prefix_cache.max_bytes:
                self.metrics.prefix_lookup(hit.length if hit is not None else None)
            self._slots[i] = _Slot(req=req, progress=req.cached_tokens)
            self._done[i] = True

    def rows_for(self, C: int) -> int:
        """Rows of the prefill call of chunk bucket C: as many as the token budget holds (at most P), so
        every call does about ``prefill_chunk`` tokens of work, many short prompts or one long chunk."""
        return self._batch(max(1, min(self.P, self.prefill_chunk // C)))

    def _batch(self, n: int) -> int:
        """n rounded up to a multiple of the mesh's "data" axis (1 without a mesh)."""
        return -(-n // self.D) * self.D

    def _prefill(self) -> int:
        """One prefill call; returns the prompt tokens it ran (0: nothing to prefill)."""
        chosen = []  # (slot, start, n): FIFO while the rows fit the budget at the batch's bucket
        for i, s in sorted(((i, s) for i, s in enumerate(self._slots) if s is not None and not s.decoding),
                           key=lambda x: x[1].req.id):
            room = self.prefill_chunk - s.progress % self.prefill_chunk  # end chunks on block boundaries
            n = min(len(s.req.prompt) - s.progress, room)
            C = bucket_length(max([n] + [m for _, _, m in chosen]), self.min_bucket)
            if len(chosen) + 1 > self.rows_for(C):
                break
            chosen.append((i, s.progress, n))
        if not chosen:
            return 0
        C = bucket_length(max(n for _, _, n in chosen), self.min_bucket)
        P, S = (self._batch(1) if len(chosen) == 1 else self.rows_for(C)), self.S  # a lone row: no batch
        slots = np.full(P, S, np.int32)
        ids = np.zeros((P, C), np.int32)
        lens = np.zeros(P, np.int32)
        keys = np.zeros((P, 2), np.uint32)
        rows = np.zeros(P, int)
        for j, (i, start, n) in enumerate(chosen):
            slots[j], lens[j], keys[j], rows[j] = i, n, self._slots[i].req.key_data, i
            ids[j, :n] = self._slots[i].req.prompt[start:start + n]
            self._set_sampling(i, self._slots[i].req.params)
        pr = self.programs
        rows_state, tok, finite = pr.prefill(pr.state, pr.read_rows(self._cache, slots), ids, lens,
                                             self._key_arr(keys), self._samp.take(rows))
        self._cache = pr.write_rows(self._cache, slots, rows_state)
        tok, finite = np.asarray(tok), np.asarray(finite)
        now = time.perf_counter()
        for j, (i, start, n) in enumerate(chosen):
            s = self._slots[i]
            s.progress = start + n
            req = s.req
            if s.progress < len(req.prompt):
                if s.progress % self.prefill_chunk == 0:
                    self._snapshot(i, req.prompt[:s.progress])
                continue
            self._snapshot(i, req.prompt)
            if not finite[j]:
                self._release(i, "error", f"non-finite logits (NaN/Inf) at the prompt's last position of request "
                                          f"{req.id}; no token was emitted")
                continue
            s.decoding = True
            t = int(tok[j])
            self._tok[i], self._pos[i] = t, 0
            self._eos[i] = -1 if (self.eos_id is None or req.params.ignore_eos) else self.eos_id
            self._limit[i] = req.params.max_tokens
            self._keys[i] = req.key_data
            self._emit_tokens(req, [t], now)
            if self._eos[i] == t or req.params.max_tokens <= 1:
                self._release(i, "stop" if self._eos[i] == t else "length")
            else:
                self._done[i] = False
        return sum(n for _, _, n in chosen)

    def _decode(self) -> None:
        act = np.nonzero(~self._done)[0]
        if not len(act):
            return
        t0 = time.perf_counter()
        S, n = self.S, len(act)
        B = self._batch(bucket_length(n, 1))
        pr = self.programs
        if B >= S:  # every slot: the whole table in place; slots between prefill chunks saved and restored
            mid = [i for i, s in enumerate(self._slots) if s is not None and not s.decoding]
            protect = np.full(self.P, S, np.int32)
            protect[:len(mid)] = mid
            saved = pr.read_rows(self._cache, protect) if mid else None
            c = pr.decode(self._cache, self._tok, self._pos, self._done, self._key_arr(self._keys),
                          self._samp, self._eos, self._limit)
            self._cache = c.cache
            if mid:
                self._cache = pr.write_rows(self._cache, protect, saved)
            sel = act
        else:  # the active rows only, in a batch of B (dummies: slot S, done, dropped)
            rows = np.full(B, S, np.int32)
            rows[:n] = act
            idx = np.minimum(rows, S - 1)
            done = self._done[idx].copy()
            done[n:] = True
            c = pr.decode(pr.read_rows(self._cache, rows), self._tok[idx], self._pos[idx], done,
                          self._key_arr(self._keys[idx]), self._samp.take(idx), self._eos[idx], self._limit[idx])
            self._cache = pr.write_rows(self._cache, rows, c.cache)
            sel = np.arange(n)
        toks, tok, pos, done, bad, bad_at, steps = (np.asarray(x) for x in (
            c.tokens, c.token, c.position, c.done, c.nonfinite, c.nonfinite_at, c.step))
        now = time.perf_counter()
        self.decode_time += now - t0
        self.decode_dispatches += 1
        self.decode_row_steps += int(steps) * n
        pos0 = self._pos[act].copy()
        self._tok[act], self._pos[act], self._done[act] = tok[sel], pos[sel], done[sel]
        for q, (j, i) in enumerate(zip(sel, act)):
            req = self._slots[i].req
            m = int(pos[j] - pos0[q])
            if bad[j]:
                good = toks[j, : m - 1].tolist()
                if good:
                    self._emit_tokens(req, good, now)
                self._release(i, "error", f"non-finite logits (NaN/Inf) at new token {int(bad_at[j])} of request "
                                          f"{req.id}; no token was emitted from them")
                continue
            if m:
                self._emit_tokens(req, toks[j, :m].tolist(), now)
            if done[j]:
                last = req.output[-1]
                self._release(i, "stop" if (self._eos[i] >= 0 and last == self._eos[i]) else "length")

    # ------------------------------------------------------------------------------ helpers
    def _set_sampling(self, i: int, p: RequestParams) -> None:
        s = self._samp
        s.greedy[i] = p.greedy
        s.temperature[i] = 1.0 if p.greedy else float(p.temperature)
        s.top_k[i] = max(int(p.top_k), 0)
        s.top_p[i] = float(p.top_p)

    def _snapshot(self, i: int, tokens: Sequence[int]) -> None:
        pc = self.prefix_cache
        if pc.would_store(tokens, self.slot_bytes):
            pc.insert(tokens, self.programs.read_rows(self._cache, np.array([i], np.int32)), self.slot_bytes)

    def _emit_tokens(self, req: Request, toks: list[int], now: float) -> None:
        prev = req.t_last
        if req.t_first is None:
            req.t_first = now
        req.t_last = now
        req.output.extend(toks)
        if self.metrics is not None:
            self.metrics.tokens(req, len(toks), now, prev)
        req._emit("tokens", toks)

    def _release(self, i: int, reason: str, error: str | None = None) -> None:
        """Free slot i: its request finished (``reason``) or failed (``error``).  A finished request's
        state (prompt + every emitted token but the last, which was never fed) goes to the prefix cache."""
        s = self._slots[i]
        self._slots[i] = None
        self._done[i] = True
        req = s.req
        if error is None and s.decoding and req.output:
            self._snapshot(i, req.prompt + req.output[:-1])
        if error is not None:
            self._fail(req, error)
        else:
            self._finish(req, reason)

    def _finish(self, req: Request, reason: str) -> None:
        req.finish_reason = reason
        if self.metrics is not None:
            self.metrics.finished(req, reason)
        req._done.set()
        req._emit("done", reason)

    def _fail(self, req: Request, message: str) -> None:
        req.finish_reason, req.error = "error", message
        if self.metrics is not None:
            self.metrics.finished(req, "error")
        req._done.set()
        req._emit("error", message)

    def _gauges(self) -> None:
        if self.metrics is not None:
            self.metrics.gauges(self.busy_slots, self.S, self.queue_depth, self.prefix_cache.bytes)

    def stats(self) -> dict:
        pc = self.prefix_cache
        return {"slots": self.S, "busy_slots": self.busy_slots, "queue_depth": self.queue_depth,
                "iterations": self.iterations, "decode_dispatches": self.decode_dispatches,
                "decode_s": self.decode_time, "decode_row_steps": self.decode_row_steps,
                "prefill_calls": self.prefill_calls, "prefill_tokens": self.prefill_tokens,
                "prefill_budget": self.prefill_budget, "max_prefill_per_iteration": self.max_prefill_per_iteration,
                "prefix_cache": {"entries": len(pc), "bytes": pc.bytes, "max_bytes": pc.max_bytes, "hits": pc.hits,
                                 "misses": pc.misses, "hit_tokens": pc.hit_tokens, "evictions": pc.evictions},
                "trace_counts": dict(self.programs.trace_counts)}
