"""Text side of a completion: incremental detokenization and stop strings."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["Detokenizer", "StopMatcher"]


class Detokenizer:
    """Token ids in, new text out, never splitting a UTF-8 character: the text of the tokens since a
    prefix offset is decoded, and emitted only once it does not end in U+FFFD (a byte sequence the
    next token completes).  ``flush`` emits what is left at the end."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True) if ids else ""

    def push(self, new_ids: Sequence[int]) -> str:
        self.ids.extend(int(t) for t in new_ids)
        if self.tok is None:
            return ""
        before = self._decode(self.ids[self._prefix:self._read])
        now = self._decode(self.ids[self._prefix:])
        if len(now) > len(before) and not now.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self.ids)
            return now[len(before):]
        return ""

    def flush(self) -> str:
        if self.tok is None or self._read == len(self.ids):
            return ""
        before = self._decode(self.ids[self._prefix:self._read])
        now = self._decode(self.ids[self._prefix:])
        self._prefix = self._read = len(self.ids)
        return now[len(before):]


class StopMatcher:
    """Holds back the last ``max(len(stop)) - 1`` characters until they cannot start a stop string.
    ``feed(text)`` → (text safe to emit, stopped)."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.buf = ""
        self.stopped = False

    def feed(self, text: str, final: bool = False) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        self.buf += text
        if self.stops:
            cut = min((i for i in (self.buf.find(s) for s in self.stops) if i >= 0), default=-1)
            if cut >= 0:
                out, self.buf, self.stopped = self.buf[:cut], "", True
                return out, True
        if final or not self.hold:
            out, self.buf = self.buf, ""
        else:
            out, self.buf = self.buf[:-self.hold], self.buf[-self.hold:]
        return out, False
