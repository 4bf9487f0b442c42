"""Peer runner: llama.cpp measured by its own benchmark tools, one tool process per measurement (issue 28).

The numbers llama.cpp's users quote come from ``llama-bench`` and ``llama-batched-bench``; this runner
runs exactly those binaries (built by ``make llama-tools`` in ``.llama/build/bin``) on the GGUFs the
orchestrator converted (``reference.llama_gguf``), one invocation per task per round:

* prefill (``prefill_last_<L>``): ``llama-bench -m GGUF -p L -n 0 -r R -o json`` -- llama-bench's
  ``pp L`` test (one prompt of L tokens on a cleared state; llama.cpp outputs the last position's logits
  only, so it is our "last" prefill mode); seconds = the median of its ``samples_ns``;
* recompute: the same ``pp`` test at ``recompute_context`` tokens (a last-position prefill of the prefix);
* decode (batch 1): ``llama-bench -m GGUF -p 0 -n N -d D -r R -o json`` -- its ``tg N`` test after a
  ``D = decode_prompt``-token context (``-d``, not timed); one ``llama_decode`` of one token per step;
* batched (``batched_b<b>``): ``llama-batched-bench -m GGUF -npp P -ntg N -npl b -c b*(P+N)
  --output-format jsonl``: b sequences of P prompt tokens, then N steps of one ``llama_decode`` of b
  tokens; seconds = its ``t_tg`` (the decode phase), tokens = b*N (its ``S_TG t/s``).

Each tool loads the model, creates one context, runs its own warm-up and exits: one model and one
context alive at a time, nothing held between tasks.  Threads: llama.cpp's tools' default unless
``peers.llama_cpp.threads`` (then ``-t``); every run records the ``n_threads`` the tool reports, its
argv, and its own tokens/s.  The parsers below are pure functions on the tools' stdout (tests/
test_peers_tools.py proves them on captured real output).
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

TOOLS = ("llama-bench", "llama-batched-bench")


class ToolError(RuntimeError):
    pass


# ---------------------------------------------------------------- parsers (pure; tested on captured output)

def parse_llama_bench_json(text: str) -> list[dict]:
    """``llama-bench -o json`` stdout: a JSON array with one object per test (n_prompt, n_gen, n_depth,
    n_threads, avg_ns, samples_ns, avg_ts, ...).  Anything printed before the array is ignored."""
    i = text.find("[")
    if i < 0:
        raise ToolError("llama-bench printed no JSON array")
    rows = json.loads(text[i:text.rindex("]") + 1])
    for r in rows:
        for k in ("n_prompt", "n_gen", "n_threads", "samples_ns", "avg_ts"):
            if k not in r:
                raise ToolError(f"llama-bench JSON test without {k!r}: {sorted(r)}")
    return rows


_BB_COLS = ("pp", "tg", "pl", "n_kv", "t_pp", "speed_pp", "t_tg", "speed_tg", "t", "speed")


def parse_batched_bench(text: str) -> list[dict]:
    """``llama-batched-bench`` stdout, either format: ``--output-format jsonl`` (one JSON object per
    line with pp, tg, pl, t_tg, speed_tg, n_threads, ...) or the default Markdown table (``| PP | TG |
    B | N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s | T s | S t/s |``, with ``n_threads`` from the
    header line above it).  One dict per measured (pp, tg, pl), keys as in the jsonl output."""
    rows, header = [], {}
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("{") and '"speed_tg"' in s:
            rows.append(json.loads(s))
            continue
        m = re.search(r"n_kv_max = .*", s)
        if m:
            header = {k: int(v) for k, v in re.findall(r"(\w+) = (-?\d+)", m.group(0))}
            continue
        if s.startswith("|") and not set(s) <= set("|- "):
            cells = [c.strip() for c in s.strip("|").split("|")]
            if len(cells) != len(_BB_COLS) or cells[0] == "PP":
                continue
            r = {k: (int(c) if k in ("pp", "tg", "pl", "n_kv") else float(c)) for k, c in zip(_BB_COLS, cells,
                                                                                              strict=True)}
            rows.append({**header, **r})
    if not rows:
        raise ToolError("llama-batched-bench printed no result rows")
    for r in rows:
        if r.get("t_tg", 0) <= 0 or r.get("tg", 0) <= 0:
            raise ToolError(f"llama-batched-bench row without a decode phase: {r}")
    return rows


def bench_seconds(row: dict) -> float:
    """One llama-bench test's time: the median of its repetitions (each is one whole pp or tg run)."""
    return statistics.median(row["samples_ns"]) / 1e9


# ---------------------------------------------------------------- commands

def tool_argv(bin_dir: Path, spec: dict, gguf: str, threads: int | None, n_ubatch: int | None,
              repetitions: int) -> list[str]:
    """The command line of one task ``spec`` ({"tool": "pp"|"tg"|"batched", ...})."""
    t = ["-t", str(int(threads))] if threads else []
    ub = ["-ub", str(int(n_ubatch))] if n_ubatch else []
    if spec["tool"] == "pp":
        return [str(bin_dir / "llama-bench"), "-m", gguf, "-p", str(spec["length"]), "-n", "0",
                "-r", str(repetitions), *t, *ub, "-o", "json"]
    if spec["tool"] == "tg":
        return [str(bin_dir / "llama-bench"), "-m", gguf, "-p", "0", "-n", str(spec["tokens"]),
                "-d", str(spec["context"]), "-r", str(repetitions), *t, *ub, "-o", "json"]
    if spec["tool"] == "batched":
        b, pp, tg = int(spec["batch"]), int(spec["context"]), int(spec["steps"])
        return [str(bin_dir / "llama-batched-bench"), "-m", gguf, "-c", str(b * (pp + tg)), "-npp", str(pp),
                "-ntg", str(tg), "-npl", str(b), *t, *ub, "--output-format", "jsonl"]
    raise ValueError(spec["tool"])


def run_tool(argv: list[str], env: dict | None = None, timeout: float | None = None) -> tuple[str, float]:
    """Run one tool process; (stdout, wall seconds).  A non-zero exit raises with the output's tail."""
    t0 = time.perf_counter()
    r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-15:])
        raise ToolError(f"`{' '.join(argv)}` exited {r.returncode}:\n{tail}")
    return r.stdout, wall


def measure(spec: dict, argv: list[str], env: dict | None = None, timeout: float | None = None) -> dict:
    """Run one task's tool and read its own timing: {"seconds", "tokens", "tool": {the run's record}}."""
    out, wall = run_tool(argv, env, timeout)
    if spec["tool"] in ("pp", "tg"):
        rows = parse_llama_bench_json(out)
        if len(rows) != 1:
            raise ToolError(f"llama-bench ran {len(rows)} tests, expected 1")
        r = rows[0]
        want = (int(spec["length"]), 0) if spec["tool"] == "pp" else (0, int(spec["tokens"]))
        if (int(r["n_prompt"]), int(r["n_gen"])) != want:
            raise ToolError(f"llama-bench ran pp{r['n_prompt']}/tg{r['n_gen']}, expected {want}")
        tokens = want[0] or want[1]
        rec = {k: r.get(k) for k in ("n_prompt", "n_gen", "n_depth", "n_threads", "n_batch", "n_ubatch", "poll",
                                     "samples_ns", "avg_ts", "stddev_ts", "build_commit", "model_type")}
        return {"seconds": bench_seconds(r), "tokens": tokens,
                "tool": {"argv": argv, "wall_s": wall, "tool_tokens_per_s": r["avg_ts"], **rec}}
    rows = parse_batched_bench(out)
    b, pp, tg = int(spec["batch"]), int(spec["context"]), int(spec["steps"])
    hit = [r for r in rows if (int(r["pl"]), int(r["pp"]), int(r["tg"])) == (b, pp, tg)]
    if not hit:
        raise ToolError(f"llama-batched-bench has no row pl={b} pp={pp} tg={tg} (n_kv_max too small?): {rows}")
    r = hit[0]
    return {"seconds": float(r["t_tg"]), "tokens": b * tg,
            "tool": {"argv": argv, "wall_s": wall, "tool_tokens_per_s": r["speed_tg"],
                     **{k: r.get(k) for k in ("pp", "tg", "pl", "n_kv", "n_kv_max", "n_batch", "n_ubatch",
                                              "n_threads", "n_threads_batch", "t_pp", "t_tg", "speed_pp",
                                              "speed_tg")}}}


# ---------------------------------------------------------------- the peer runner (line protocol)

S: dict = {}


def setup(prefill_lengths, decode_prompt, decode_tokens, recompute_context, batch_sizes=(), batch_prompt=128,
          batch_tokens=32, llama=None, **_):
    llama = dict(llama or {})
    bin_dir = Path(llama["bin_dir"])
    missing = [t for t in TOOLS if not (bin_dir / t).exists()]
    if missing:
        raise RuntimeError(f"{', '.join(missing)} not built in {bin_dir} (make llama-tools)")
    ggufs = dict(llama.get("ggufs") or {})
    if "f32" not in ggufs:
        raise RuntimeError("no f32 GGUF given")
    threads = llama.get("threads")  # None: the tools' own default
    n_ubatch = llama.get("n_ubatch")
    reps = int(llama.get("repetitions") or 1)
    lowp_batches = [int(b) for b in (llama.get("lowp_batch_sizes") or batch_sizes)]
    S.update(bin_dir=bin_dir, tasks={}, timeout=llama.get("timeout_s"))
    tasks = []
    for variant, gguf in ggufs.items():
        lowp = variant != "f32"
        tag = "" if variant == "f32" else f"_{variant}"
        meta = {"variant": f"gguf-{variant}", "lower_precision": lowp}

        def task(key, spec, kind, tokens, gguf=gguf, tag=tag, meta=meta, **kw):
            key = key + tag
            argv = tool_argv(bin_dir, spec, str(gguf), threads, n_ubatch, reps)
            S["tasks"][key] = (spec, argv)
            tasks.append({"key": key, "cmd": "tool", "args": {"key": key}, "kind": kind, "tokens": tokens,
                          "argv": argv, **kw, **meta})

        for L in ([int(x) for x in prefill_lengths] if not lowp else [int(prefill_lengths[0])]):
            task(f"prefill_last_{L}", {"tool": "pp", "length": L}, "prefill", L, length=L, logits="last")
        task("decode", {"tool": "tg", "tokens": int(decode_tokens), "context": int(decode_prompt)}, "decode",
             int(decode_tokens), batch=1, context=int(decode_prompt))
        if not lowp:
            R = int(recompute_context)
            task("recompute", {"tool": "pp", "length": R}, "recompute", 1, length=R, logits="last")
        for b in (batch_sizes if not lowp else lowp_batches):
            b = int(b)
            task(f"batched_b{b}", {"tool": "batched", "batch": b, "context": int(batch_prompt),
                                   "steps": int(batch_tokens)}, "batched", b * int(batch_tokens), batch=b,
                 context=int(batch_prompt))
    version = subprocess.run([str(bin_dir / "llama-bench"), "--version"], capture_output=True, text=True)
    info = {}
    for rec in ("tools-build-info.json", "build-info.json"):
        p = bin_dir.parent / rec
        if p.exists():
            info = {"record": rec, **{k: v for k, v in json.loads(p.read_text()).items()
                                      if k in ("llama_cpp_commit", "sdist", "sdist_sha256", "cmake_flags",
                                               "cpu_features", "compiler", "build_wall_s", "targets")}}
            break
    return {"load_s": {}, "compile_s": {}, "check_tokens": None, "tasks": tasks, "build": info,
            "fidelity": "not measured: llama.cpp's tools print timings only (see llama_cpp_capi)",
            "settings": {"threads": threads or "tool default", "n_ubatch": n_ubatch, "repetitions": reps,
                         "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")},
            "versions": {"llama-bench --version": (version.stdout + version.stderr).strip().splitlines()},
            "ggufs": {k: str(v) for k, v in ggufs.items()}, "module": str(bin_dir)}


def tool(key, **_):
    spec, argv = S["tasks"][key]
    res = measure(spec, argv, timeout=S.get("timeout"))
    if res["tokens"] <= 0:
        raise ToolError(f"{key}: no tokens")
    return res


if __name__ == "__main__":
    import _protocol as P

    P.serve({"setup": setup, "tool": tool})
