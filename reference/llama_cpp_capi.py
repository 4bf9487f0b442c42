"""llama.cpp through its C API (ctypes), for the llama.cpp peer, parity and perplexity backends.

No JAX, no torch, no ``mamba2_jax`` import: this runs in its own process (the peer runner, or
``python -m reference.golden --backend llama_cpp``).  The ctypes declarations are llama-cpp-python's
own (``llama_cpp/llama_cpp.py`` from the same sdist that vendors the llama.cpp we build, so the
struct layouts match the library); only that low-level module is imported, through a bare package
object, so the high-level ``Llama`` class and its dependencies (jinja2, diskcache) are never loaded.
The library is the ``libllama`` built by ``make llama-cpp`` (``LLAMA_CPP_LIB_PATH``).

:class:`LlamaCpp` holds one model and one context and exposes what the callers need:
``prefill`` (all positions' logits or the last position's), ``step`` (one token per sequence for
any number of parallel sequences) and ``clear``.  Logits are returned as views of llama.cpp's
output buffer (valid until the next decode), so the timed calls copy nothing.
"""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def llama_dir() -> Path:
    """The cached llama.cpp directory (``make llama-cpp``): ``$MAMBA2_JAX_LLAMA_DIR`` or ``<repo>/.llama``."""
    return Path(os.environ.get("MAMBA2_JAX_LLAMA_DIR") or REPO / ".llama").resolve()


def sdist_root(d: Path | None = None) -> Path | None:
    d = d or llama_dir()
    hits = sorted((d / "src").glob("llama_cpp_python-*/llama_cpp/llama_cpp.py"))
    return hits[-1].parents[1] if hits else None


def build_status(d: Path | None = None) -> tuple[bool, dict | str]:
    """(True, build-info dict) when llama.cpp is built, else (False, the reason)."""
    d = d or llama_dir()
    info, failed = d / "build" / "build-info.json", d / "build" / "build-failed.txt"
    if info.exists():
        rec = json.loads(info.read_text())
        rec["build_dir"] = str(d / "build")
        rec["sdist_root"] = str(sdist_root(d))
        return True, rec
    if failed.exists():
        return False, f"llama.cpp build failed: {failed.read_text().strip()} (make llama-cpp)"
    return False, f"llama.cpp is not built in {d} (make llama-cpp)"


def binary(name: str, d: Path | None = None) -> Path:
    return (d or llama_dir()) / "build" / "bin" / name


_C = None


def binding(d: Path | None = None):
    """llama-cpp-python's low-level ctypes module, loaded against our libllama."""
    global _C
    if _C is not None:
        return _C
    ok, info = build_status(d)
    if not ok:
        raise RuntimeError(info)
    root = Path(info["sdist_root"])
    os.environ["LLAMA_CPP_LIB_PATH"] = str(Path(info["build_dir"]) / "bin")
    if "llama_cpp" not in sys.modules:  # a bare package: skip llama_cpp/__init__.py (the high-level API)
        pkg = types.ModuleType("llama_cpp")
        pkg.__path__ = [str(root / "llama_cpp")]
        sys.modules["llama_cpp"] = pkg
    import llama_cpp.llama_cpp as C  # noqa: E402

    C.llama_backend_init()
    _C = C
    return C


class LlamaCpp:
    """One GGUF model and one context.

    ``n_seq``: parallel sequences (recurrent-state cells); ``n_batch``: the most tokens (and logit
    rows, unless ``n_outputs`` is smaller) one ``decode`` takes; ``n_ubatch``: llama.cpp's physical
    micro-batch (its default 512)."""

    def __init__(self, gguf: str | Path, *, n_threads: int | None = None, n_batch: int = 2048,
                 n_ubatch: int = 512, n_seq: int = 1, n_outputs: int | None = None, quiet: bool = True):
        C = self.C = binding()
        if quiet:
            self._log_cb = C.llama_log_callback(lambda level, text, data: None)
            C.llama_log_set(self._log_cb, None)
        mp = C.llama_model_default_params()
        mp.n_gpu_layers = 0
        self.model = C.llama_model_load_from_file(str(gguf).encode(), mp)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {gguf}")
        self.n_threads = int(n_threads or os.cpu_count() or 1)
        cp = C.llama_context_default_params()
        cp.n_ctx = 0  # the model's training context (no attention here: only the recurrent cells matter)
        cp.n_batch, cp.n_ubatch, cp.n_seq_max = int(n_batch), int(min(n_ubatch, n_batch)), int(n_seq)
        cp.n_threads = cp.n_threads_batch = self.n_threads
        if n_outputs:  # logit rows one decode may return (default n_batch: the full-logits prefill)
            cp.n_outputs_max = int(n_outputs)
        cp.no_perf = True
        self.ctx = C.llama_init_from_model(self.model, cp)
        if not self.ctx:
            raise RuntimeError(f"llama.cpp could not create a context (n_batch={n_batch}, n_seq={n_seq})")
        self.n_batch, self.n_ubatch, self.n_seq = int(n_batch), int(cp.n_ubatch), int(n_seq)
        self.n_vocab = int(C.llama_vocab_n_tokens(C.llama_model_get_vocab(self.model)))
        self.batch = C.llama_batch_init(self.n_batch, 0, 1)
        self.pos = [0] * self.n_seq
        self.mem = C.llama_get_memory(self.ctx)

    def settings(self) -> dict:
        return {"n_threads": self.n_threads, "n_batch": self.n_batch, "n_ubatch": self.n_ubatch,
                "n_seq_max": self.n_seq, "n_vocab": self.n_vocab,
                "system_info": self.C.llama_print_system_info().decode()}

    def clear(self) -> None:
        self.C.llama_memory_clear(self.mem, True)
        self.pos = [0] * self.n_seq

    def fill(self, items, logits) -> None:
        """Stage a batch: ``items`` = [(seq, token), ...] (positions follow each sequence's own count);
        ``logits``: "all", "last" (the last item) or "each" (the same as all)."""
        b = self.batch
        n = len(items)
        if n > self.n_batch:
            raise ValueError(f"{n} tokens > n_batch {self.n_batch}")
        for i, (s, t) in enumerate(items):
            b.token[i] = int(t)
            b.pos[i] = self.pos[s]
            self.pos[s] += 1
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = int(s)
            b.logits[i] = 1 if logits != "last" else int(i == n - 1)
        b.n_tokens = n
        self._n_out = n if logits != "last" else 1

    def decode(self) -> None:
        rc = self.C.llama_decode(self.ctx, self.batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def logits(self) -> np.ndarray:
        """The output rows of the last decode, (n_out, n_vocab) float32, a view of llama.cpp's buffer."""
        ptr = self.C.llama_get_logits(self.ctx)
        return np.ctypeslib.as_array(ptr, shape=(self._n_out, self.n_vocab))

    def prefill(self, ids, seq: int = 0, last_only: bool = False) -> np.ndarray:
        """Run ``ids`` on sequence ``seq`` (continuing its state) in chunks of ``n_batch``; returns the
        logits of every position (T, V) (a copy) or, with ``last_only``, a view of the last (1, V)."""
        ids = [int(t) for t in ids]
        out = []
        for s in range(0, len(ids), self.n_batch):
            chunk = ids[s: s + self.n_batch]
            last = last_only or False
            self.fill([(seq, t) for t in chunk], "last" if last else "all")
            self.decode()
            if not last_only:
                out.append(np.array(self.logits()))
        return self.logits() if last_only else np.concatenate(out)

    def step(self, tokens) -> np.ndarray:
        """One token for each of sequences 0..len(tokens)-1 → their logits (b, V), a view."""
        self.fill(list(enumerate(int(t) for t in tokens)), "all")
        self.decode()
        return self.logits()

    def close(self) -> None:
        C = self.C
        if getattr(self, "batch", None) is not None:
            C.llama_batch_free(self.batch)
            self.batch = None
        if getattr(self, "ctx", None):
            C.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None):
            C.llama_model_free(self.model)
            self.model = None
