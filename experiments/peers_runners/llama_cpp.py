"""Peer runner: llama.cpp (ggml's own Mamba-2 graph and SSM scan), CPU, through its C API.

Built by ``make llama-cpp`` from the llama-cpp-python sdist; the checkpoint is the same one the other
peers read, converted by ``reference.llama_gguf`` (our ``convert --format hf`` + the GPT-NeoX tokenizer
files + llama.cpp's ``convert_hf_to_gguf.py``).  The C API is driven through llama-cpp-python's ctypes
declarations (``reference.llama_cpp_capi``), in this process, with one model per GGUF type and:

* prefill: one ``llama_decode`` of the whole prompt on a cleared state, logits for every position
  ("full") or for the last one ("last"); n_ubatch = llama.cpp's default (512) unless configured;
* decode: greedy, one ``llama_decode`` of one token per step, argmax of the returned logits over the
  real vocabulary (host side, NumPy), as llama-cpp-python's generate loop does;
* recompute: a last-position prefill over the whole prefix on a cleared state;
* batched: ``b`` parallel sequences (``n_seq_max = b``) after a ``batch_prompt``-token prompt each;
  one ``llama_decode`` of b tokens per step (the ``llama-batched-bench`` pattern), greedy per row.

Weights: f32 is the fp32 comparison; f16 / bf16 / q8_0 GGUFs are lower-precision rows (never ranked
against fp32).  Timings are ``time.perf_counter`` around the blocking C calls; nothing is copied
out of llama.cpp's logits buffer inside a timed prefill.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import _protocol as P

S: dict = {"models": {}}


def _ctx(variant: str, purpose: str):
    return S["models"][variant][purpose]


def setup(weights_dir, prefill_lengths, prefill_modes, decode_prompt, decode_tokens, recompute_context, seed,
          dump, check_tokens, vocab, batch_sizes=(), batch_prompt=128, batch_tokens=32, llama=None, **_):
    import time

    import numpy as np

    from reference.llama_cpp_capi import LlamaCpp, build_status

    llama = dict(llama or {})
    ok, info = build_status()
    if not ok:
        raise RuntimeError(info)
    ggufs = dict(llama.get("ggufs") or {})
    if "f32" not in ggufs:
        raise RuntimeError("no f32 GGUF given")
    V = int(vocab)
    threads = llama.get("threads") or os.cpu_count()
    n_ubatch = int(llama.get("n_ubatch") or 512)
    lowp_batches = [int(b) for b in (llama.get("lowp_batch_sizes") or batch_sizes)]
    max_len = max([int(x) for x in prefill_lengths] + [int(recompute_context), int(decode_prompt)])
    bmax = max([int(b) for b in batch_sizes] or [1])
    tasks, load_s = [], {}
    for variant, path in ggufs.items():
        lowp = variant != "f32"
        t0 = time.perf_counter()
        single = LlamaCpp(path, n_threads=threads, n_batch=max_len if not lowp else max(int(decode_prompt), 1024),
                          n_ubatch=n_ubatch, n_seq=1)
        multi = LlamaCpp(path, n_threads=threads, n_batch=max(int(batch_prompt), bmax), n_ubatch=n_ubatch, n_seq=bmax,
                         n_outputs=max(int(batch_prompt), bmax)) if batch_sizes else None
        load_s[variant] = time.perf_counter() - t0
        S["models"][variant] = {"single": single, "multi": multi}
        tag = "" if variant == "f32" else f"_{variant}"
        meta = {"variant": f"gguf-{variant}", "lower_precision": lowp}
        lengths = [int(x) for x in prefill_lengths] if not lowp else [int(prefill_lengths[0])]
        modes = list(prefill_modes) if not lowp else ["last"]
        def task(key, cmd, kind, tokens, variant=variant, tag=tag, meta=meta, **kw):
            args = {"variant": variant, **kw.pop("args")}
            tasks.append({"key": key + tag, "cmd": cmd, "args": args, "kind": kind, "tokens": tokens, **kw, **meta})

        for L in lengths:
            for m in modes:
                task(f"prefill_{m}_{L}", "prefill", "prefill", L, args={"length": L, "mode": m}, length=L, logits=m)
        task("decode", "decode", "decode", int(decode_tokens), args={"tokens": int(decode_tokens)}, batch=1,
             context=int(decode_prompt))
        if not lowp:
            R = int(recompute_context)
            task("recompute", "prefill", "recompute", 1, args={"length": R, "mode": "last"}, length=R, logits="last")
        for b in (batch_sizes if not lowp else lowp_batches):
            task(f"batched_b{b}", "batched", "batched", int(b) * int(batch_tokens),
                 args={"batch": int(b), "tokens": int(batch_tokens)}, batch=int(b), context=int(batch_prompt))
    # inputs: the same random ids as every peer
    S["ids"] = {L: P.random_ids(1, L, V, seed)[0] for L in set([int(x) for x in prefill_lengths]
                                                               + [int(recompute_context)])}
    prompt = P.random_ids(1, int(decode_prompt), V, seed)[0]
    S["V"] = V
    # fidelity: last-position logits of the first prefill length, greedy check tokens after the prompt
    f32 = _ctx("f32", "single")
    f32.clear()
    lg = f32.prefill(S["ids"][int(prefill_lengths[0])], last_only=True)
    np.save(dump, np.asarray(lg[-1][: _padded(vocab)], np.float32))
    for variant in ggufs:
        m = _ctx(variant, "single")
        m.clear()
        lg = m.prefill(prompt, last_only=True)
        S["models"][variant]["tok"] = int(np.argmax(lg[-1][:V]))
    toks, t = [], S["models"]["f32"]["tok"]
    for _ in range(int(check_tokens)):
        toks.append(t)
        t = int(np.argmax(f32.step([t])[0][:V]))
    S["models"]["f32"]["tok"] = t
    # batched: every row its own prompt (random ids, as ours), prefilled once; the rows then keep decoding
    bprompts = P.random_ids(bmax, int(batch_prompt), V, seed)
    for variant in ggufs:
        multi = _ctx(variant, "multi")
        if multi is None:
            continue
        multi.clear()
        first = []
        for r in range(bmax):
            multi.fill([(r, int(x)) for x in bprompts[r]], "last")
            multi.decode()
            first.append(int(np.argmax(multi.logits()[-1][:V])))
        S["models"][variant]["btok"] = first
    settings = _ctx("f32", "single").settings()
    return {"load_s": load_s, "compile_s": {}, "first_run_s": {}, "check_tokens": toks, "tasks": tasks,
            "build": {k: info.get(k) for k in ("llama_cpp_commit", "sdist", "sdist_sha256", "cmake_flags",
                                               "cpu_features", "compiler", "build_wall_s")},
            "settings": {**settings, "n_ubatch": n_ubatch}, "ggufs": {k: str(v) for k, v in ggufs.items()},
            "versions": {"llama-cpp-python (sdist)": info.get("sdist"), "llama.cpp": info.get("llama_cpp_commit")},
            "module": str(Path(info["build_dir"]) / "bin")}


def _padded(vocab) -> int:
    return S["models"]["f32"]["single"].n_vocab


def prefill(variant="f32", length=None, mode="full", **_):
    m = _ctx(variant, "single")
    ids = S["ids"][int(length)]
    m.clear()
    return {"seconds": P.timed(lambda: m.prefill(ids, last_only=(mode == "last")))}


def recompute(**_):  # kept for the generic protocol; the orchestrator uses prefill(mode="last")
    return prefill("f32", max(S["ids"]), "last")


def decode(tokens, variant="f32", **_):
    import numpy as np

    m, V = _ctx(variant, "single"), S["V"]
    t = S["models"][variant]["tok"]

    def loop():
        nonlocal t
        for _ in range(int(tokens)):
            t = int(np.argmax(m.step([t])[0][:V]))

    s = P.timed(loop)
    S["models"][variant]["tok"] = t
    return {"seconds": s, "tokens": int(tokens)}


def batched(batch, tokens, variant="f32", **_):
    import numpy as np

    m, V = _ctx(variant, "multi"), S["V"]
    b = int(batch)
    toks = list(S["models"][variant]["btok"][:b])

    def loop():
        nonlocal toks
        for _ in range(int(tokens)):
            toks = np.argmax(m.step(toks)[:, :V], axis=-1).tolist()

    s = P.timed(loop)
    S["models"][variant]["btok"][:b] = toks
    return {"seconds": s, "tokens": b * int(tokens)}


if __name__ == "__main__":
    # llama.cpp may write to fd 1 from C: keep a private copy of stdout for the protocol channel
    chan = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = chan
    P.serve({"setup": setup, "prefill": prefill, "recompute": recompute, "decode": decode, "batched": batched})
