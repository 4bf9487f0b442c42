"""Perplexity on WikiText: evaluation protocols, scoring windows, a resumable JAX scorer, and the
subprocess contract of the reference backends.

Windows
-------
Every protocol is reduced to one set of *windows*, written once to a ``.npz`` file and fed
unchanged to every backend (JAX and the references)::

    input_ids  (n, T) int32   right-padded token ids
    lengths    (n,)   int32   real length of each row
    score_from (n,)   int32   first scored position
    doc_index  (n,)   int32   which document / sequence the window belongs to (extra key)
    meta       ()     str     JSON: protocol and its parameters (extra key)

For window i the targets ``t in [score_from_i, lengths_i)`` are scored as
``log p(ids[t] | ids[:t])``; position 0 is never a target (``score_from >= 1``).  A backend
returns ``loglik`` (n,) float64, the sum over those targets, and ``n_scored`` (n,).

Protocol ``lm_eval_rolling`` (lm-evaluation-harness ``wikitext``, semantics of v0.4.9)
--------------------------------------------------------------------------------------
1. Documents: the EleutherAI/wikitext_document_level articles (:func:`mamba2_jax.eval.data.split_documents`).
2. Text scored: ``wikitext_detokenizer(page)``, tokenized without special tokens.
3. Windows: ``get_rolling_token_windows(tokens, prefix_token=EOT(0), max_seq_len=max_length,
   context_len=1)`` followed by ``make_disjoint_window`` and HFLM's ``(context + continuation)
   [-(max_length+1):][:-1]`` input truncation.  In our format that is:
     * first window: ``ids = [EOT] + tokens[:m]``, ``m = min(max_length, N)``, ``score_from = 1``;
     * then, while tokens remain: ``p = min(N - done, max_length)``, ``e = done + p``,
       ``ids = tokens[e - max_length - 1 : e]`` (length ``max_length + 1``), ``score_from =
       max_length + 1 - p``: the final window re-reads already scored tokens as context so that it
       is full length, and scores only the ``p`` new ones.
   Every token is scored exactly once, each with at most ``max_length`` tokens of context.
   An empty document has no windows (log-likelihood 0) but its words and bytes still count.
4. Metrics (``process_results`` / ``weighted_perplexity`` / ``bits_per_byte``):
   ``word_perplexity = exp(-ΣLL / Σwords)``, ``byte_perplexity = exp(-ΣLL / Σbytes)``,
   ``bits_per_byte = -ΣLL / Σbytes / ln 2``, with ``words = len(re.split(r"\\s+", page))`` and
   ``bytes = len(page.encode("utf-8"))`` on the *original* page (before detokenization).
   We also report ``token_perplexity = exp(-ΣLL / Σtokens)``.

Protocol ``strided`` (the HF "Perplexity of fixed-length models" guide)
-----------------------------------------------------------------------
``text = "\\n\\n".join(rows)`` tokenized once without special tokens (N tokens); for
``begin = 0, stride, 2·stride, ...``: ``end = min(begin + max_length, N)``, the window is
``tokens[begin:end]`` and its targets are the positions ``>= max(prev_end - begin, 1)`` (the new
tokens; the window's first token has no context and is never scored); stop after the window that
reaches N.  ``token_perplexity = exp(-ΣLL / Σscored)``.  With the default ``stride == max_length``
this equals the guide's number exactly (N - #windows tokens scored).  For ``stride < max_length``
we sum exact per-token log-likelihoods, whereas the guide weights each window's *mean* loss by
``trg_len - 1``, which differs slightly when a window's first target is not its first token.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import atomic_savez, atomic_write_json, atomic_write_text
from ..paths import checkout_root

__all__ = [
    "PROTOCOLS", "LM_EVAL_VERSION", "Windows", "WindowScores", "pack_windows", "rolling_windows",
    "lm_eval_windows", "strided_windows", "aggregate", "JaxScorer", "ReferenceUnavailable", "ReferenceFailed",
    "REFERENCE_BACKENDS", "reference_available", "run_reference", "relative_diff",
]

PROTOCOLS = ("lm_eval_rolling", "strided")
LM_EVAL_VERSION = "0.4.9"
REFERENCE_MODULE = "reference.score"
REFERENCE_BACKENDS = ("mamba_ssm_ref_cpu", "transformers", "mamba_ssm_triton", "llama_cpp")


def _json_array(d: dict[str, Any]) -> np.ndarray:
    return np.array(json.dumps(d, sort_keys=True))


# ------------------------------------------------------------------------------ windows
@dataclass
class Windows:
    input_ids: np.ndarray  # (n, T) int32, right-padded
    lengths: np.ndarray  # (n,) int32
    score_from: np.ndarray  # (n,) int32
    doc_index: np.ndarray  # (n,) int32
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ids = np.asarray(self.input_ids, np.int32)
        self.input_ids = ids.reshape(len(self.lengths), -1) if ids.size else ids.reshape(len(self.lengths), 1)
        self.lengths = np.asarray(self.lengths, np.int32)
        self.score_from = np.asarray(self.score_from, np.int32)
        self.doc_index = np.asarray(self.doc_index, np.int32)
        n = len(self.lengths)
        if not (len(self.input_ids) == len(self.score_from) == len(self.doc_index) == n):
            raise ValueError("windows: input_ids, lengths, score_from, doc_index must have the same length")
        if n and (np.any(self.score_from < 1) or np.any(self.score_from > self.lengths)
                  or np.any(self.lengths > self.input_ids.shape[1])):
            raise ValueError("windows: need 1 <= score_from <= lengths <= width")

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def width(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def n_targets(self) -> np.ndarray:
        return (self.lengths - self.score_from).astype(np.int64)

    @property
    def total_targets(self) -> int:
        return int(self.n_targets.sum())

    def sha256(self) -> str:
        """Content hash of the window arrays (independent of the file's compression)."""
        h = hashlib.sha256()
        for a in (self.input_ids, self.lengths, self.score_from, self.doc_index):
            h.update(str(a.shape).encode())
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()

    def subset(self, idx) -> Windows:
        idx = np.asarray(idx)
        return Windows(self.input_ids[idx], self.lengths[idx], self.score_from[idx], self.doc_index[idx],
                       dict(self.meta))

    def save(self, path: str | Path, compress: bool = True) -> Path:
        path = Path(path)
        atomic_savez(path, compress=compress, input_ids=self.input_ids, lengths=self.lengths,
                     score_from=self.score_from,
                     doc_index=self.doc_index, meta=_json_array({**self.meta, "sha256": self.sha256()}))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Windows:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"])) if "meta" in z else {}
            meta.pop("sha256", None)
            doc = z["doc_index"] if "doc_index" in z else np.arange(len(z["lengths"]))
            return cls(z["input_ids"], z["lengths"], z["score_from"], doc, meta)

    def targets(self, i: int) -> list[tuple[list[int], int]]:
        """(context, target) pairs of window i (for tests and debugging)."""
        ids = self.input_ids[i, : self.lengths[i]].tolist()
        return [(ids[:t], ids[t]) for t in range(int(self.score_from[i]), int(self.lengths[i]))]


def pack_windows(seqs: Sequence[tuple[Sequence[int], int, int]], meta: dict[str, Any] | None = None,
                 pad_id: int = 0, width: int | None = None) -> Windows:
    """[(ids, score_from, doc_index), ...] → right-padded :class:`Windows`."""
    n = len(seqs)
    w = width if width is not None else max((len(s[0]) for s in seqs), default=1)
    ids = np.full((n, w), pad_id, np.int32)
    lengths = np.zeros(n, np.int32)
    score_from = np.zeros(n, np.int32)
    doc = np.zeros(n, np.int32)
    for i, (s, f, d) in enumerate(seqs):
        ids[i, : len(s)] = s
        lengths[i], score_from[i], doc[i] = len(s), f, d
    return Windows(ids, lengths, score_from, doc, dict(meta or {}))


def rolling_windows(tokens: Sequence[int], max_length: int = 2048,
                    prefix_token: int = 0) -> list[tuple[list[int], int]]:
    """lm-eval rolling disjoint windows (context_len=1) of one document, as (ids, score_from)."""
    if max_length < 1:
        raise ValueError("max_length must be >= 1")
    toks = list(tokens)
    n = len(toks)
    out: list[tuple[list[int], int]] = []
    if n == 0:
        return out
    m = min(max_length, n)
    out.append(([int(prefix_token)] + toks[:m], 1))
    done = m
    while done < n:
        p = min(n - done, max_length)
        e = done + p
        out.append((toks[e - max_length - 1: e], max_length + 1 - p))
        done = e
    return out


def lm_eval_windows(doc_tokens: Sequence[Sequence[int]], max_length: int = 2048, prefix_token: int = 0,
                    meta: dict[str, Any] | None = None) -> Windows:
    seqs = [(ids, f, d) for d, toks in enumerate(doc_tokens)
            for ids, f in rolling_windows(toks, max_length, prefix_token)]
    m = {"protocol": "lm_eval_rolling", "max_length": max_length, "prefix_token": prefix_token,
         "context_len": 1, "n_docs": len(doc_tokens), **(meta or {})}
    return pack_windows(seqs, m, width=max_length + 1 if seqs else 1)


def strided_windows(tokens: Sequence[int], max_length: int = 2048, stride: int = 2048,
                    meta: dict[str, Any] | None = None) -> Windows:
    """HF-guide sliding windows over one token stream (see module docstring)."""
    if not 1 <= stride <= max_length:
        raise ValueError(f"need 1 <= stride ({stride}) <= max_length ({max_length}); a larger stride would "
                         f"leave tokens unscored")
    if max_length < 2:
        raise ValueError("max_length must be >= 2")
    toks = list(tokens)
    n = len(toks)
    seqs = []
    prev_end = 0
    for begin in range(0, n, stride):
        end = min(begin + max_length, n)
        f = max(prev_end - begin, 1)
        if end - begin >= 2 and f < end - begin:
            seqs.append((toks[begin:end], f, 0))
        prev_end = end
        if end == n:
            break
    m = {"protocol": "strided", "max_length": max_length, "stride": stride, "n_stream_tokens": n, **(meta or {})}
    return pack_windows(seqs, m, width=max_length if seqs else 1)


# ------------------------------------------------------------------------------ metrics
@dataclass
class WindowScores:
    loglik: np.ndarray  # (n,) float64
    n_scored: np.ndarray  # (n,) int64
    info: dict[str, Any] = field(default_factory=dict)


def aggregate(windows: Windows, scores: WindowScores, doc_words: Sequence[int] | None = None,
              doc_bytes: Sequence[int] | None = None) -> dict[str, Any]:
    """Totals and perplexities.  Word/byte metrics need per-document counts (lm_eval_rolling)."""
    ll = np.asarray(scores.loglik, np.float64)
    ns = np.asarray(scores.n_scored, np.int64)
    expected = windows.n_targets
    if ll.shape != (len(windows),) or not np.array_equal(ns, expected):
        raise ValueError("scores do not match the windows (shape or number of scored tokens differ)")
    if not np.all(np.isfinite(ll)):
        raise ValueError(f"{int((~np.isfinite(ll)).sum())} window log-likelihoods are not finite")
    s = float(ll.sum())
    n_tok = int(ns.sum())
    out: dict[str, Any] = {"sum_loglik": s, "n_tokens": n_tok, "n_windows": len(windows),
                           "nll_per_token": -s / n_tok if n_tok else float("nan"),
                           "token_perplexity": math.exp(-s / n_tok) if n_tok else float("nan")}
    if doc_words is not None:
        w = int(np.sum(doc_words))
        b = int(np.sum(doc_bytes))
        out.update({"n_docs": len(doc_words), "n_words": w, "n_bytes": b,
                    "word_perplexity": math.exp(-s / w), "byte_perplexity": math.exp(-s / b),
                    "bits_per_byte": -s / b / math.log(2)})
    return out


def relative_diff(a: float, ref: float) -> float:
    return (a - ref) / ref if ref else float("nan")


# ------------------------------------------------------------------------------ JAX scorer
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
                 devices: Sequence[Any] | None = None, mesh=None):
        import jax
        from flax import nnx

        if bucket % logits_chunk:
            raise ValueError(f"bucket ({bucket}) must be a multiple of logits_chunk ({logits_chunk})")
        if mesh is not None:
            from ..sharding import make_mesh, shard_model

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
        self._fn = _jitted_score_fn(model, graphdef, logits_chunk)
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
                "bucket": self.bucket, "n_devices": len(self.devices),
                "mesh": None if self.mesh is None else {k: int(v) for k, v in self.mesh.shape.items()},
                "tokens_per_second_incl_compile": tok_done / wall if tok_done else None}
        return WindowScores(loglik, n_scored, info)


def _make_score_fn(graphdef, chunk: int):
    """(state, ids (b, w), lengths, score_from) → per-target log-probs (b, w-1), fp32 log-softmax."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    def fn(state, ids, lengths, score_from):
        model = nnx.merge(graphdef, state)
        b, w = ids.shape
        lb = w - 1
        inp, tgt = ids[:, :-1], ids[:, 1:]
        in_len = jnp.clip(lengths - 1, 1, lb).astype(jnp.int32)
        h, _, _, _ = model.backbone.prefill(inp, model.init_cache(b), in_len)  # (b, lb, d) f32
        nc = lb // chunk
        hc = jnp.swapaxes(h.reshape(b, nc, chunk, h.shape[-1]), 0, 1)
        tc = jnp.swapaxes(tgt.reshape(b, nc, chunk), 0, 1)

        def one(args):
            hh, tt = args
            logits = model.logits(hh).astype(jnp.float32)  # (b, chunk, V)
            lse = jax.nn.logsumexp(logits, axis=-1)
            return jnp.take_along_axis(logits, tt[..., None], axis=-1)[..., 0] - lse

        lp = jnp.swapaxes(jax.lax.map(one, (hc, tc)), 0, 1).reshape(b, lb)
        t = jnp.arange(1, w)[None, :]
        mask = (t >= score_from[:, None]) & (t < lengths[:, None])
        return jnp.where(mask, lp, 0.0)

    return fn


_JIT_CACHE: weakref.WeakKeyDictionary[Any, dict[int, Any]] = weakref.WeakKeyDictionary()


def _jitted_score_fn(model, graphdef, chunk: int):
    """One jitted function per (model object, chunk): scorers of one model share compiled shapes."""
    import jax

    per_model = _JIT_CACHE.setdefault(model, {})
    if chunk not in per_model:
        per_model[chunk] = jax.jit(_make_score_fn(graphdef, chunk))
    return per_model[chunk]


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


# ------------------------------------------------------------------------------ references
class ReferenceUnavailable(RuntimeError):
    """The reference scorer module (``python -m reference.score``) cannot be found."""


class ReferenceFailed(RuntimeError):
    """The reference scorer ran but failed or returned something that breaks the contract."""


def reference_available(module: str = REFERENCE_MODULE, cwd: str | Path | None = None, python: str = sys.executable,
                        env: dict[str, str] | None = None) -> str | None:
    """None if ``python -m module`` can be found from ``cwd`` (default: the checkout), else the reason why not."""
    cwd = cwd if cwd is not None else checkout_root()
    code = ("import importlib.util, sys\n"
            "try:\n    s = importlib.util.find_spec(sys.argv[1])\nexcept Exception:\n    s = None\n"
            "sys.exit(0 if s is not None else 3)")
    r = subprocess.run([python, "-c", code, module], cwd=None if cwd is None else str(cwd), capture_output=True,
                       text=True,
                       env=env)
    if r.returncode == 0:
        return None
    return (f"reference scorer `python -m {module}` not found (looked from {cwd}). It is the subprocess "
            f"contract `python -m {module} --backend B --model DIR --windows W.npz --out OUT.npz`; until it "
            f"exists only the JAX backends run. Install/add the `reference` package, or drop the reference "
            f"backends (Hydra: backends=[jax_fp32,jax_bf16]).")


def run_reference(backend: str, model_dir: str | Path, windows_path: str | Path, out_path: str | Path,
                  windows: Windows | None = None, *, module: str = REFERENCE_MODULE, python: str = sys.executable,
                  cwd: str | Path | None = None, env: dict[str, str] | None = None, timeout: float | None = None,
                  log_path: str | Path | None = None, extra_args: Sequence[str] = (),
                  reuse: bool = True) -> WindowScores:
    """Run one reference backend on a windows file and read back its scores.

    With ``reuse`` an existing ``out_path`` made from the same windows file (checked through a
    ``.meta.json`` sidecar holding the windows hash) is read instead of recomputed.
    """
    windows = windows if windows is not None else Windows.load(windows_path)
    out_path = Path(out_path)
    sidecar = out_path.with_name(out_path.name + ".meta.json")
    want = {"backend": backend, "model": str(model_dir), "windows_sha256": windows.sha256(),
            "extra_args": [str(a) for a in extra_args]}
    if reuse and out_path.exists() and sidecar.exists():
        try:
            if json.loads(sidecar.read_text()) == want:
                sc = _read_reference_out(out_path, windows, backend)
                sc.info["reused"] = True
                return sc
        except (ReferenceFailed, ValueError, OSError):
            pass
    cwd = cwd if cwd is not None else checkout_root()
    why = reference_available(module, cwd, python, env)
    if why is not None:
        raise ReferenceUnavailable(why)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    from .supervise import run_supervised

    # a unique name per run: two concurrent runs never write into each other's output
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".partial.npz", dir=out_path.parent)
    os.close(fd)
    tmp_out = Path(tmp_name)
    cmd = [python, "-m", module, "--backend", backend, "--model", str(model_dir), "--windows", str(windows_path),
           "--out", str(tmp_out), *map(str, extra_args)]
    t0 = time.perf_counter()
    try:
        r = run_supervised(cmd, cwd=cwd, env=env, timeout=timeout, echo_stderr=False, tail_lines=200)
        wall = time.perf_counter() - t0
        if log_path is not None:
            atomic_write_text(log_path, f"$ {' '.join(cmd)}\n# rc={r.returncode} timed_out={r.timed_out}\n"
                                        f"--- stdout\n{r.stdout}\n--- stderr (tail)\n{r.stderr_tail}")
        tail = "\n".join((r.stderr_tail or r.stdout).strip().splitlines()[-15:])
        if r.timed_out:
            raise ReferenceFailed(f"reference backend {backend!r} timed out after {timeout} s and was killed; "
                                  f"its stderr ended with:\n{tail}")
        if r.returncode != 0:
            raise ReferenceFailed(f"reference backend {backend!r} failed (exit {r.returncode}):\n{tail}")
        sc = _read_reference_out(tmp_out, windows, backend)
        os.replace(tmp_out, out_path)
    finally:
        tmp_out.unlink(missing_ok=True)
    atomic_write_json(sidecar, want, indent=None)
    sc.info.update({"wall_seconds": wall, "command": cmd, "reused": False})
    return sc


def _read_reference_out(path: Path, windows: Windows, backend: str) -> WindowScores:
    try:
        with np.load(path, allow_pickle=False) as z:
            ll = np.asarray(z["loglik"], np.float64)
            ns = np.asarray(z["n_scored"], np.int64)
            extra = {k: z[k].tolist() for k in z.files
                     if k not in ("loglik", "n_scored", "meta_json") and z[k].size <= 64}
            if "meta_json" in z.files:
                try:
                    extra["meta"] = json.loads(str(z["meta_json"]))
                except ValueError:
                    extra["meta"] = str(z["meta_json"])
    except (OSError, KeyError, ValueError) as e:
        raise ReferenceFailed(f"{backend}: cannot read {path}: {e}") from None
    n = len(windows)
    if ll.shape != (n,) or ns.shape != (n,):
        raise ReferenceFailed(f"{backend}: expected loglik/n_scored of shape ({n},), got {ll.shape}/{ns.shape}")
    if not np.array_equal(ns, windows.n_targets):
        bad = int(np.sum(ns != windows.n_targets))
        raise ReferenceFailed(f"{backend}: n_scored disagrees with lengths - score_from in {bad} windows")
    return WindowScores(ll, ns, {"backend_extra": extra})
