"""Exact prefix-state cache: token sequence → the model state after consuming exactly those tokens.

A Mamba-2 state is O(1) in the sequence length (conv + SSM state of every layer: the same bytes for
a 10-token prefix as for a 10,000-token one), so an entry can be kept at any token boundary, not only
at block boundaries as a paged KV cache must.  A lookup returns the longest cached *strict* prefix of
a prompt (at least one token is left to prefill: its logits give the first new token).  Entries are
evicted least-recently-used under a byte budget.  Pure host bookkeeping: the states are whatever the
engine stores (device arrays), with their byte size.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["PrefixCache", "PrefixHit"]


@dataclass(frozen=True)
class PrefixHit:
    length: int  # tokens of the prompt the state covers
    state: Any


class PrefixCache:
    def __init__(self, max_bytes: int):
        if max_bytes < 0:
            raise ValueError(f"prefix cache budget must be >= 0 bytes, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self.hits = self.misses = self.hit_tokens = self.evictions = 0
        self._entries: OrderedDict[tuple[int, ...], tuple[Any, int]] = OrderedDict()
        self._lengths: dict[int, int] = {}  # length → number of entries of that length
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, prompt: Sequence[int], count: bool = True) -> PrefixHit | None:
        """The longest cached strict prefix of ``prompt`` (marked most recently used), or None."""
        prompt = tuple(prompt)
        with self._lock:
            for L in sorted(self._lengths, reverse=True):
                if L >= len(prompt):
                    continue
                hit = self._entries.get(prompt[:L])
                if hit is not None:
                    self._entries.move_to_end(prompt[:L])
                    if count:
                        self.hits += 1
                        self.hit_tokens += L
                    return PrefixHit(L, hit[0])
            if count:
                self.misses += 1
            return None

    def would_store(self, tokens: Sequence[int], nbytes: int) -> bool:
        """Whether ``insert`` would keep an entry for ``tokens`` (not already cached, fits the budget)."""
        return 0 < nbytes <= self.max_bytes and len(tokens) > 0 and tuple(tokens) not in self._entries

    def insert(self, tokens: Sequence[int], state: Any, nbytes: int) -> bool:
        """Cache ``state`` for ``tokens``, evicting least-recently-used entries to fit.  An entry that
        exists is refreshed (marked recent), not replaced: equal token prefixes have equal states."""
        key = tuple(tokens)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return True
            if not 0 < nbytes <= self.max_bytes or not key:
                return False
            while self.bytes + nbytes > self.max_bytes:
                old, (_, nb) = self._entries.popitem(last=False)
                self._drop_length(len(old))
                self.bytes -= nb
                self.evictions += 1
            self._entries[key] = (state, int(nbytes))
            self._lengths[len(key)] = self._lengths.get(len(key), 0) + 1
            self.bytes += int(nbytes)
            return True

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._lengths.clear()
            self.bytes = 0

    def _drop_length(self, L: int) -> None:
        n = self._lengths[L] - 1
        if n:
            self._lengths[L] = n
        else:
            del self._lengths[L]
