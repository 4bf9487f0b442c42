"""Perplexity protocols as scoring windows, and their metrics (numpy only, no JAX).

The JAX scorer is :mod:`.scorer`, the reference processes :mod:`.refproc`, the experiment
:mod:`.perplexity`.

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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import atomic_savez

PROTOCOLS = ("lm_eval_rolling", "strided")


LM_EVAL_VERSION = "0.4.9"


def _json_array(d: dict[str, Any]) -> np.ndarray:
    return np.array(json.dumps(d, sort_keys=True))


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


def primary_metric(protocol: str) -> str:
    """The headline metric of a protocol: word perplexity for ``lm_eval_rolling`` (the harness's),
    token perplexity for ``strided``.  Every table and figure takes it from here."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; known: {PROTOCOLS}")
    return "word_perplexity" if protocol == "lm_eval_rolling" else "token_perplexity"


def relative_diff(a: float, ref: float) -> float:
    return (a - ref) / ref if ref else float("nan")
