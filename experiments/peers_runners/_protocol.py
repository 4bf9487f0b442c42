"""Line protocol between experiments/peers.py and one peer runner subprocess.

The orchestrator writes one JSON object per line to the runner's stdin ({"cmd": ..., **args});
the runner answers one line ``@@PEER {json}`` on stdout.  Anything else a library prints is sent
to stderr (``sys.stdout`` is redirected), so it cannot corrupt the channel.  Each runner times its
own work (``time.perf_counter`` around blocking calls), so IPC is never part of a measurement.

This file must not import the project package: the mamba2-jax 1.1.2 peer has the same module
name (``mamba2_jax``) and runs with it first on PYTHONPATH.
"""

from __future__ import annotations

import json
import sys
import time
import traceback

import numpy as np

MARK = "@@PEER "


def random_ids(batch: int, length: int, vocab: int, seed: int = 0) -> np.ndarray:
    """Same ids as ``mamba2_jax.eval.bench.random_ids`` (duplicated: see module docstring)."""
    rng = np.random.default_rng(seed)
    return rng.integers(2, vocab, size=(batch, length), dtype=np.int32)


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def serve(handlers: dict) -> None:
    """Answer commands until "quit" or EOF."""
    chan = sys.stdout
    sys.stdout = sys.stderr
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        msg = json.loads(line)
        cmd = msg.pop("cmd")
        if cmd == "quit":
            chan.write(MARK + json.dumps({"ok": True}) + "\n")
            chan.flush()
            break
        try:
            res = {"ok": True, **(handlers[cmd](**msg) or {})}
        except Exception as e:
            res = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        chan.write(MARK + json.dumps(res) + "\n")
        chan.flush()


def versions(*names: str) -> dict:
    import importlib.metadata as md

    out = {}
    for n in names:
        try:
            out[n] = md.version(n)
        except md.PackageNotFoundError:
            out[n] = None
    return out


def timed_decode(S: dict, cache_key: str, tok_key: str, advance, tokens: int) -> dict:
    """Time ``tokens`` host-driven greedy steps ``(cache, tok) = advance(cache, tok)`` starting from
    ``S[cache_key], S[tok_key]`` (which are updated): the per-token loop every peer runs alike."""
    import jax

    c, t = S[cache_key], S[tok_key]

    def loop():
        nonlocal c, t
        for _ in range(tokens):
            c, t = advance(c, t)
        jax.block_until_ready((c, t))

    s = timed(loop)
    S[cache_key], S[tok_key] = c, t
    return {"seconds": s, "tokens": tokens}
