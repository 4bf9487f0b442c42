"""Serving benchmark (issue 27, section 7): ``mamba2-jax serve`` vs llama.cpp's ``llama-server`` vs our
static-batch :class:`~mamba2_jax.generate.Generator`, one request trace and one client for all.

The pieces, each usable on its own (the experiment is ``experiments/serve_bench.py``):

* **Trace** (:func:`wikitext_tokens`, :func:`trace_concurrency`, :func:`trace_shared_prefix`,
  :func:`trace_multiturn`, :func:`trace_short`): prompts are token-id lists cut from WikiText-103
  validation (the GPT-NeoX tokenizer), at offsets drawn from a seeded generator, so every system sees
  identical tokens.  A trace is a list of *sessions*; a session is a list of :class:`Request` sent one
  after the other (one request, or the turns of a conversation).  Every round gets fresh prompts
  (seed + round), so a prefix cache never sees a prompt of an earlier round.
* **Client** (:func:`stream_completion`, :func:`run_sessions`): an asyncio closed loop of ``concurrency``
  workers over ``httpx`` streaming ``POST /v1/completions`` (OpenAI's wire format, server-sent events),
  greedy, ``ignore_eos``.  Per request: time to first token (first chunk carrying text or token ids),
  inter-token latency ``(t_last - t_first) / (completion_tokens - 1)``, completion tokens (``usage``),
  failures.  The same code drives every server.
* **Statistics** (:func:`percentile`, :func:`summarize`): output tok/s, requests/s, TTFT and ITL p50/p99.
* **Servers** (:class:`ServerProcess`, :func:`ours_command`, :func:`llama_server_command`): subprocesses
  on free loopback ports, ready once ``GET /health`` answers 200; resident memory from
  ``/proc/PID/status``; Prometheus ``/metrics`` sampled during a run (:func:`parse_metrics`,
  :class:`MetricsSampler`) for slot occupancy.
* **Static batches** (:func:`run_generator`): our ``Generator`` in this process, batches of
  ``concurrency`` prompts, each batch prefilled then decoded to ``max_tokens``.

Nothing here starts a server or loads a model at import.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Request", "RequestResult", "wikitext_tokens", "trace_concurrency", "trace_shared_prefix",
           "trace_multiturn", "trace_short", "flatten", "percentile", "summarize", "parse_metrics",
           "occupancy", "rss_growth", "stream_completion", "run_sessions", "MetricsSampler", "ServerProcess",
           "free_port", "read_rss", "ours_command", "llama_server_command", "run_generator", "decode_fraction",
           "median_summary", "ratio"]


# ------------------------------------------------------------------------------ trace
@dataclass
class Request:
    """One completion request of the trace: a token-id prompt and the number of tokens to generate."""
    prompt: list[int]
    max_tokens: int
    rid: str = ""
    session: int = 0
    turn: int = 0


def wikitext_tokens(path: str | os.PathLike, tokenizer, max_chars: int | None = 2_000_000) -> np.ndarray:
    """The token ids of a WikiText raw file (its first ``max_chars`` characters), one int32 array.
    Lines are tokenized in one batch and concatenated (blank lines dropped)."""
    text = Path(path).read_text(encoding="utf-8")
    if max_chars:
        text = text[: int(max_chars)]
    lines = [ln for ln in text.splitlines(keepends=True) if ln.strip()]
    ids = [i for seq in tokenizer.encode_batch(lines) for i in seq]
    return np.asarray(ids, np.int32)


def _cut(tokens: np.ndarray, rng: np.random.Generator, n: int) -> list[int]:
    """``n`` consecutive ids from a random offset."""
    if n <= 0:
        return []
    if len(tokens) < n:
        raise ValueError(f"the token stream has {len(tokens)} ids, fewer than the {n} one prompt needs")
    off = int(rng.integers(0, len(tokens) - n + 1))
    return [int(t) for t in tokens[off: off + n]]


def _rng(seed: int, *salt: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), *[int(s) for s in salt]])


def trace_concurrency(tokens: np.ndarray, n: int, prompt_min: int, prompt_max: int, max_tokens: int,
                      seed: int, salt: Sequence[int] = ()) -> list[list[Request]]:
    """Workload (a): ``n`` one-request sessions, prompt lengths uniform in [prompt_min, prompt_max]."""
    rng = _rng(seed, 1, *salt)
    out = []
    for i in range(int(n)):
        L = int(rng.integers(int(prompt_min), int(prompt_max) + 1))
        out.append([Request(_cut(tokens, rng, L), int(max_tokens), f"c{i}", i)])
    return out


def trace_short(tokens: np.ndarray, n: int, prompt_min: int, prompt_max: int, max_tokens: int, seed: int,
                salt: Sequence[int] = ()) -> list[list[Request]]:
    """Saturation / soak: many short requests (the same shape as :func:`trace_concurrency`)."""
    return trace_concurrency(tokens, n, prompt_min, prompt_max, max_tokens, seed, (7, *salt))


def trace_shared_prefix(tokens: np.ndarray, n: int, prefix_len: int, suffix_len: int, max_tokens: int,
                        seed: int, salt: Sequence[int] = ()) -> list[list[Request]]:
    """Workload (b): one ``prefix_len``-token prefix, ``n`` requests = prefix + a distinct ``suffix_len``-token
    suffix each (one-request sessions)."""
    rng = _rng(seed, 2, *salt)
    prefix = _cut(tokens, rng, int(prefix_len))
    out, seen = [], set()
    for i in range(int(n)):
        for _ in range(100):
            suf = _cut(tokens, rng, int(suffix_len))
            if tuple(suf) not in seen:
                break
        seen.add(tuple(suf))
        out.append([Request(prefix + suf, int(max_tokens), f"p{i}", i)])
    return out


def trace_multiturn(tokens: np.ndarray, conversations: int, turns: int, first_len: int, new_len: int,
                    max_tokens: int, seed: int, salt: Sequence[int] = (),
                    respond: Callable[[list[int], int], list[int]] | None = None) -> list[list[Request]]:
    """Workload (c): ``conversations`` sessions of ``turns`` requests.  Turn 1's prompt is ``first_len``
    tokens; turn k's is turn k-1's prompt + its reply + ``new_len`` new tokens (the whole conversation so
    far).  The reply is ``respond(prompt, max_tokens)`` (e.g. our greedy output, so that a server that
    snapshots prompt + output at the end of a request finds it) or, without ``respond``, ``max_tokens``
    tokens of WikiText (a recorded conversation).  Either way the trace is fixed before any system runs:
    every system gets the same prompts."""
    rng = _rng(seed, 3, *salt)
    out = []
    for c in range(int(conversations)):
        prompt = _cut(tokens, rng, int(first_len))
        sess = []
        for t in range(int(turns)):
            if t:
                prev = sess[-1]
                reply = respond(prev.prompt, prev.max_tokens) if respond else _cut(tokens, rng, prev.max_tokens)
                prompt = prev.prompt + [int(x) for x in reply] + _cut(tokens, rng, int(new_len))
            sess.append(Request(list(prompt), int(max_tokens), f"m{c}.{t}", c, t))
        out.append(sess)
    return out


def flatten(sessions: list[list[Request]]) -> list[Request]:
    return [r for s in sessions for r in s]


# ------------------------------------------------------------------------------ statistics
@dataclass
class RequestResult:
    """What the client saw of one request (times: ``time.perf_counter`` seconds)."""
    rid: str
    ok: bool
    t_send: float
    t_first: float | None = None
    t_last: float | None = None
    t_done: float | None = None
    completion_tokens: int = 0
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    max_tokens: int = 0
    status: int | None = None
    error: str | None = None
    chunks: int = 0

    @property
    def ttft(self) -> float | None:
        return None if self.t_first is None else self.t_first - self.t_send

    @property
    def itl(self) -> float | None:
        if self.t_first is None or self.t_last is None or self.completion_tokens < 2:
            return None
        return (self.t_last - self.t_first) / (self.completion_tokens - 1)


def percentile(xs: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (linear interpolation, NumPy's default) of the finite values; None if none."""
    v = [float(x) for x in xs if x is not None and math.isfinite(float(x))]
    return float(np.percentile(v, q)) if v else None


def summarize(results: Sequence[RequestResult], wall_s: float) -> dict[str, Any]:
    """Output tok/s and requests/s over ``wall_s``, TTFT and ITL p50/p99 over the successful requests,
    failures (errors, non-200) and short completions (fewer tokens than ``max_tokens``, counted as
    failures too: every request is ``ignore_eos``)."""
    ok = [r for r in results if r.ok]
    short = [r for r in ok if r.max_tokens and r.completion_tokens < r.max_tokens]
    toks = sum(r.completion_tokens for r in ok)
    ttft = [r.ttft for r in ok]
    itl = [r.itl for r in ok]
    errors: dict[str, int] = {}
    for r in results:
        if not r.ok:
            key = (r.error or f"HTTP {r.status}").splitlines()[0][:160]
            errors[key] = errors.get(key, 0) + 1
    cached = [r.cached_tokens for r in ok if r.cached_tokens is not None]
    prompt = [r.prompt_tokens for r in ok if r.prompt_tokens is not None]
    return {
        "n_requests": len(results), "n_ok": len(ok), "failures": len(results) - len(ok) + len(short),
        "errors": len(results) - len(ok), "short": len(short), "error_kinds": errors,
        "wall_s": wall_s, "completion_tokens": toks,
        "output_tok_s": toks / wall_s if wall_s > 0 else None,
        "requests_s": len(ok) / wall_s if wall_s > 0 else None,
        "ttft_p50_s": percentile(ttft, 50), "ttft_p99_s": percentile(ttft, 99), "ttft_mean_s": _mean(ttft),
        "itl_p50_s": percentile(itl, 50), "itl_p99_s": percentile(itl, 99), "itl_mean_s": _mean(itl),
        "prompt_tokens": sum(prompt) if prompt else None,
        "cached_tokens": sum(cached) if cached else None,
    }


def _mean(xs) -> float | None:
    v = [float(x) for x in xs if x is not None]
    return float(np.mean(v)) if v else None


def median_summary(rounds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per metric, the median over rounds (None-valued rounds ignored); failures and requests summed."""
    keys = ("wall_s", "output_tok_s", "requests_s", "ttft_p50_s", "ttft_p99_s", "itl_p50_s", "itl_p99_s",
            "slot_occupancy", "decode_bytes_per_s", "decode_fraction_of_bound", "rss_growth_second_half")
    out: dict[str, Any] = {"rounds": len(rounds)}
    for k in keys:
        v = [r[k] for r in rounds if r.get(k) is not None]
        out[k] = float(np.median(v)) if v else None
    for k in ("n_requests", "failures", "errors", "short", "completion_tokens", "prefix_cache_hits_total",
              "prefix_cache_misses_total", "prefix_cache_hit_tokens_total"):
        out[k] = int(sum(r.get(k) or 0 for r in rounds))
    return out


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else float(a / b)


def decode_rows(concurrency: int, slots: int) -> int:
    """The rows one decode step of our server computes with ``concurrency`` busy slots: the active slots
    gathered into the next power of two (the whole table of ``slots`` when that is not smaller)."""
    n = max(1, min(int(concurrency), int(slots)))
    p = 1 << (n - 1).bit_length()
    return int(slots) if p >= int(slots) else p


def decode_fraction(decode_bytes: float, step_s: float | None, bandwidth: float | None) -> dict[str, float | None]:
    """The decode part against the memory bound: ``decode_bytes`` (what one decode step must move: the
    weights + every slot's state, :func:`mamba2_jax.eval.flops.decode_bytes`) over the measured step time,
    as B/s and as a fraction of ``bandwidth``."""
    if not step_s or step_s <= 0:
        return {"decode_bytes_per_step": decode_bytes, "decode_bytes_per_s": None, "decode_fraction_of_bound": None}
    bps = decode_bytes / step_s
    frac = bps / bandwidth if bandwidth and math.isfinite(bandwidth) else None
    return {"decode_bytes_per_step": decode_bytes, "decode_bytes_per_s": bps, "decode_fraction_of_bound": frac}


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text → {sample name: value summed over its label sets} (``prometheus_client``'s parser)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[s.name] = out.get(s.name, 0.0) + float(s.value)
    return out


def occupancy(samples: Sequence[dict[str, float]], busy: str, total: str | float) -> float | None:
    """Mean of busy / total over metric samples (``total``: a sample name or a number)."""
    vals = []
    for s in samples:
        tot = s.get(total) if isinstance(total, str) else total
        if busy in s and tot:
            vals.append(s[busy] / tot)
    return float(np.mean(vals)) if vals else None


def rss_growth(samples: Sequence[tuple[float, float]], t_half: float) -> dict[str, float | None]:
    """Resident memory growth over the second half of a run: samples ``(t, rss_bytes)``; the reference is
    the first sample at or after ``t_half``, the end the last sample.  Also the start and the maximum."""
    if not samples:
        return {"rss_start": None, "rss_half": None, "rss_end": None, "rss_max": None, "rss_growth_second_half": None}
    samples = sorted(samples)
    half = next((v for t, v in samples if t >= t_half), samples[-1][1])
    end = samples[-1][1]
    return {"rss_start": samples[0][1], "rss_half": half, "rss_end": end, "rss_max": max(v for _, v in samples),
            "rss_growth_second_half": (end - half) / half if half else None}


# ------------------------------------------------------------------------------ client
def http_module():
    """The async HTTP library: ``httpx2`` (what the pinned ``openai`` client is built on here) or ``httpx``
    (what older ``openai`` releases use): the same API."""
    try:
        import httpx2 as httpx
    except ImportError:  # pragma: no cover - older openai releases: httpx
        import httpx
    return httpx


def client_info() -> dict[str, str | None]:
    import importlib.metadata as md

    h = http_module()
    try:
        v = md.version(h.__name__)
    except md.PackageNotFoundError:  # pragma: no cover
        v = None
    return {"client": f"mamba2_jax.eval.serve_bench.run_sessions (asyncio, {h.__name__} streaming SSE)",
            "library": h.__name__, "version": v}


def _sse_events(line: str):
    if not line.startswith("data:"):
        return None
    return line[5:].strip()


async def _sse_lines(resp):
    """The lines of a server-sent-events body, split on LF (CRLF, CR-less) only: a JSON payload may hold raw
    U+2028, U+2029 or U+0085 (nlohmann::json, llama-server's encoder, leaves them unescaped), which
    ``str.splitlines`` -- and so ``aiter_lines`` -- would break lines at."""
    buf = b""
    async for chunk in resp.aiter_bytes():
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for ln in lines:
            yield ln.rstrip(b"\r").decode("utf-8", errors="replace")
    if buf:
        yield buf.rstrip(b"\r").decode("utf-8", errors="replace")


async def stream_completion(client, base_url: str, model: str | None, req: Request,
                            extra: dict[str, Any] | None = None, timeout: float = 600.0) -> RequestResult:
    """One streaming ``POST /v1/completions`` (greedy, ``ignore_eos``); never raises."""
    body: dict[str, Any] = {"prompt": list(req.prompt), "max_tokens": int(req.max_tokens), "temperature": 0,
                            "stream": True, "ignore_eos": True, "stream_options": {"include_usage": True}}
    if model:
        body["model"] = model
    body.update(extra or {})
    res = RequestResult(req.rid, False, time.perf_counter(), max_tokens=int(req.max_tokens))
    counted = 0
    try:
        async with client.stream("POST", base_url + "/v1/completions", json=body, timeout=timeout) as resp:
            res.status = resp.status_code
            if resp.status_code != 200:
                txt = (await resp.aread()).decode(errors="replace")
                res.error = f"HTTP {resp.status_code}: {txt[:300]}"
                return res
            done = False
            async for line in _sse_lines(resp):
                data = _sse_events(line)
                if data is None:
                    continue
                now = time.perf_counter()
                if data == "[DONE]":
                    done = True
                    break
                obj = json.loads(data)
                if obj.get("error"):
                    res.error = f"stream error: {json.dumps(obj['error'])[:300]}"
                    return res
                res.chunks += 1
                for ch in obj.get("choices") or []:
                    ids = ch.get("token_ids")
                    if (ids is not None and len(ids)) or ch.get("text"):
                        if res.t_first is None:
                            res.t_first = now
                        res.t_last = now
                        counted += len(ids) if ids is not None else 1
                u = obj.get("usage")
                if u:
                    res.completion_tokens = int(u.get("completion_tokens") or 0)
                    res.prompt_tokens = u.get("prompt_tokens")
                    det = u.get("prompt_tokens_details") or {}
                    res.cached_tokens = det.get("cached_tokens")
            res.t_done = time.perf_counter()
            if not done:
                res.error = "the stream ended without data: [DONE]"
                return res
            if not res.completion_tokens:
                res.completion_tokens = counted
            if res.t_first is None:  # every token's text held back to the end: the last chunk carries it
                res.t_first = res.t_last = res.t_done
            res.ok = True
    except Exception as e:  # noqa: BLE001 - a failed request is a result, not a crash of the benchmark
        res.error = f"{type(e).__name__}: {e}"
    return res


async def run_sessions(base_url: str, model: str | None, sessions: list[list[Request]], concurrency: int,
                       extra: dict[str, Any] | None = None, timeout: float = 600.0,
                       on_result: Callable[[RequestResult], None] | None = None
                       ) -> tuple[list[RequestResult], float]:
    """A closed loop: ``concurrency`` workers take sessions in order and send each session's requests one
    after the other.  Returns the results (trace order) and the wall seconds."""
    httpx = http_module()
    queue: asyncio.Queue = asyncio.Queue()
    for i, s in enumerate(sessions):
        queue.put_nowait((i, s))
    results: dict[int, list[RequestResult]] = {}
    limits = httpx.Limits(max_connections=int(concurrency) + 4, max_keepalive_connections=int(concurrency) + 4)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        async def worker():
            while True:
                try:
                    i, sess = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                out = []
                for req in sess:
                    r = await stream_completion(client, base_url, model, req, extra, timeout)
                    out.append(r)
                    if on_result:
                        on_result(r)
                results[i] = out

        t0 = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(max(1, min(int(concurrency), len(sessions))))])
        wall = time.perf_counter() - t0
    return [r for i in sorted(results) for r in results[i]], wall


class MetricsSampler:
    """Samples ``GET /metrics`` (parsed) and the server's resident memory every ``interval`` seconds while
    a run is in flight (an asyncio task: ``async with MetricsSampler(...) as m:``)."""

    def __init__(self, base_url: str | None, pid: int | None, interval: float = 0.5):
        self.base_url, self.pid, self.interval = base_url, pid, float(interval)
        self.metrics: list[dict[str, float]] = []
        self.rss: list[tuple[float, float]] = []
        self._task = None
        self.errors = 0

    async def _loop(self):
        httpx = http_module()
        async with httpx.AsyncClient(timeout=10) as c:
            while True:
                t = time.perf_counter()
                if self.pid:
                    v = read_rss(self.pid)
                    if v is not None:
                        self.rss.append((t, v))
                if self.base_url:
                    try:
                        r = await c.get(self.base_url + "/metrics")
                        if r.status_code == 200:
                            self.metrics.append(parse_metrics(r.text))
                        else:
                            self.errors += 1
                    except Exception:  # noqa: BLE001
                        self.errors += 1
                await asyncio.sleep(max(0.0, self.interval - (time.perf_counter() - t)))

    async def __aenter__(self):
        self._task = asyncio.get_running_loop().create_task(self._loop())
        return self

    async def __aexit__(self, *exc):
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


# ------------------------------------------------------------------------------ servers
def free_port() -> int:
    """A free loopback TCP port (bind to 0, read it, close it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def read_rss(pid: int) -> float | None:
    """VmRSS of a process in bytes (Linux /proc), None if unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def ours_command(model_dir: str, port: int, slots: int, *, dtype: str = "float32", state_dtype: str = "float32",
                 prefix_cache_bytes: int | None = None, prefill_budget: int | None = None, extra: Sequence[str] = (),
                 python: str | None = None, name: str | None = None) -> list[str]:
    cmd = [python or sys.executable, "-m", "mamba2_jax.cli", "serve", "--model", str(model_dir), "--host",
           "127.0.0.1", "--port", str(port), "--slots", str(slots), "--dtype", dtype, "--state-dtype", state_dtype]
    if name:
        cmd += ["--served-model-name", name]
    if prefix_cache_bytes is not None:
        cmd += ["--prefix-cache-bytes", str(int(prefix_cache_bytes))]
    if prefill_budget is not None:
        cmd += ["--prefill-budget", str(int(prefill_budget))]
    return cmd + [str(x) for x in extra]


def llama_server_command(binary: str, gguf: str, port: int, slots: int, ctx: int, threads: int,
                         extra: Sequence[str] = (), alias: str | None = None) -> list[str]:
    """``llama-server`` with ``-np`` = our slots and continuous batching on (``-cb``), ``-c`` covering
    every slot's longest sequence (llama.cpp splits the context evenly over the slots)."""
    cmd = [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-np", str(slots), "-cb",
           "-c", str(int(ctx)), "-t", str(threads), "-tb", str(threads), "--metrics"]
    if alias:
        cmd += ["--alias", alias]
    return cmd + [str(x) for x in extra]


@dataclass
class ServerProcess:
    """A server subprocess on a loopback port: started, waited for (``GET /health`` 200), stopped
    (SIGTERM, then SIGKILL after ``stop_timeout``).  Its output goes to ``log``."""
    name: str
    cmd: list[str]
    port: int
    log: Path
    env: dict[str, str] | None = None
    cwd: str | None = None
    startup_timeout: float = 900.0
    stop_timeout: float = 60.0
    proc: subprocess.Popen | None = None
    ready_s: float | None = None
    model: str | None = None
    exit_code: int | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> ServerProcess:
        httpx = http_module()
        self.log.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        with open(self.log, "w") as f:
            self.proc = subprocess.Popen(self.cmd, stdout=f, stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd,
                                         start_new_session=True)
        deadline = t0 + self.startup_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} before it was ready; "
                                   f"log {self.log}:\n{self.tail()}")
            try:
                r = httpx.get(self.base_url + "/health", timeout=5)
                if r.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.perf_counter() > deadline:
                self.stop()
                raise TimeoutError(f"{self.name} not ready after {self.startup_timeout:.0f} s; log {self.log}:\n"
                                   f"{self.tail()}")
            time.sleep(0.5)
        self.ready_s = time.perf_counter() - t0
        try:
            data = httpx.get(self.base_url + "/v1/models", timeout=10).json().get("data") or []
            self.model = data[0]["id"] if data else None
        except Exception:  # noqa: BLE001
            self.model = None
        return self

    def tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def rss(self) -> float | None:
        return read_rss(self.pid) if self.pid else None

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            self.exit_code = None if self.proc is None else self.proc.returncode
            return self.exit_code
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.exit_code = self.proc.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.exit_code = self.proc.wait(timeout=30)
        return self.exit_code


def server_gone(sp: ServerProcess | None) -> str | None:
    """Why ``sp`` can no longer serve (its process has exited), or None while it runs (or is in-process)."""
    if sp is None or sp.proc is None or sp.proc.poll() is None:
        return None
    code = sp.proc.returncode
    how = " (SIGKILL: the kernel's out-of-memory killer, or a kill from outside)" if code == -signal.SIGKILL else ""
    return f"{sp.name} exited with code {code}{how}; log {sp.log}"


# ------------------------------------------------------------------------------ static batches
def run_generator(gen, requests: Sequence[Request], concurrency: int
                  ) -> tuple[list[RequestResult], float, list[float]]:
    """Our ``Generator`` with static batches: ``concurrency`` prompts at a time, in trace order, each batch
    one ``generate`` (prefill, then the compiled decode loop to ``max_tokens``), the next batch sent when
    the last one is done (a closed loop).  A request's TTFT is its batch's prefill (when its first token
    exists; the batch hands every token over at its end), its ITL the batch's decode seconds per step.
    Returns (results, wall seconds, per-batch latencies)."""
    results: list[RequestResult] = []
    lat = []
    t0 = time.perf_counter()
    for i in range(0, len(requests), int(concurrency)):
        batch = list(requests[i: i + int(concurrency)])
        n = max(r.max_tokens for r in batch)
        tb = time.perf_counter()
        res = gen.generate([r.prompt for r in batch], n)
        te = time.perf_counter()
        lat.append(te - tb)
        step = res.decode_s / res.decode_steps if res.decode_steps > 0 else 0.0
        first = tb + res.prefill_s
        for j, r in enumerate(batch):
            k = int(res.num_generated[j])
            results.append(RequestResult(r.rid, True, tb, t_first=first, t_last=first + step * max(k - 1, 0),
                                         t_done=te, completion_tokens=k, prompt_tokens=len(r.prompt),
                                         max_tokens=r.max_tokens, status=200))
    return results, time.perf_counter() - t0, lat


def generator_warmup(gen, requests: Sequence[Request], concurrency: int) -> float:
    """Compile every (batch, prompt bucket, max_tokens) shape :func:`run_generator` will meet; seconds."""
    from ..generate import bucket_length

    t0 = time.perf_counter()
    seen = set()
    for i in range(0, len(requests), int(concurrency)):
        batch = list(requests[i: i + int(concurrency)])
        n = max(r.max_tokens for r in batch)
        key = (len(batch), bucket_length(max(len(r.prompt) for r in batch), gen.min_bucket), n)
        if key not in seen:
            seen.add(key)
            gen.warmup([r.prompt for r in batch], n)
    return time.perf_counter() - t0


def result_rows(results: Sequence[RequestResult]) -> list[dict[str, Any]]:
    """Per-request results as plain dicts (TTFT and ITL included), for the results document."""
    out = []
    for r in results:
        d = asdict(r)
        d["ttft_s"], d["itl_s"] = r.ttft, r.itl
        out.append(d)
    return out


# ------------------------------------------------------------------------------ the experiment
SYSTEMS = {
    "ours": "mamba2-jax serve (continuous batching over S state slots, prefix-state cache on)",
    "ours_nocache": "mamba2-jax serve with --prefix-cache-bytes 0 (prefix cache off)",
    "llama_server": "llama.cpp llama-server (-np S, continuous batching), GGUF f32 of the same weights",
    "generator": "our Generator in-process, static batches of `concurrency` prompts (prefill + compiled decode loop)",
}
SERVER_SYSTEMS = ("ours", "ours_nocache", "llama_server")
# where each system's slot occupancy is read: (busy sample, total sample or None = the configured slots)
OCCUPANCY = {"ours": ("mamba2_slots_busy", "mamba2_slots_total"),
             "ours_nocache": ("mamba2_slots_busy", "mamba2_slots_total"),
             "llama_server": ("llamacpp:requests_processing", None)}


def _plain(x):
    try:
        from omegaconf import OmegaConf

        return OmegaConf.to_container(x, resolve=True) if OmegaConf.is_config(x) else x
    except ImportError:  # pragma: no cover
        return x


def ours_available() -> tuple[bool, str | None]:
    import importlib.util

    if importlib.util.find_spec("mamba2_jax.serve") is None:
        return False, "mamba2_jax.serve does not exist yet (issue 27's server has not landed on this branch)"
    return True, None


def llama_server_status(llama_dir: Path) -> tuple[Path | None, str | None, dict | None]:
    """(binary, None, build info) when ``make llama-server`` built it, else (None, why not, None)."""
    build = llama_dir / "build"
    binary = build / "bin" / "llama-server"
    info_p = build / "server-build-info.json"
    if binary.exists():
        info = json.loads(info_p.read_text()) if info_p.exists() else None
        return binary, None, info
    failed = build / "server-build-failed.txt"
    if failed.exists():
        return None, f"llama-server build failed: {failed.read_text().strip()} (make llama-server)", None
    return None, f"llama-server is not built in {build} (make llama-server LLAMA_DIR={llama_dir})", None


def prepare_model(name: str, M: dict, work: Path, seed: int, data: Path | None) -> tuple[Path, Any, str]:
    """(state-spaces checkpoint dir, Mamba2Config, weights label): ``M['checkpoint']`` as given, or the
    mamba_ssm-style random init of ``M['spec']`` at float32, written once under ``work``."""
    import hashlib

    from ..checkpoint import init_state_dict, read_state_dict, write_checkpoint
    from ..paths import repo_path
    from .models import load_model_spec, model_config

    if M.get("checkpoint"):
        d = repo_path(M["checkpoint"])
        cfg, _, _ = read_state_dict(d, check_finite=False)
        return d, cfg, f"checkpoint {M['checkpoint']}"
    mcfg = model_config(load_model_spec(str(M.get("spec") or name)), data)
    key = hashlib.sha256(json.dumps([mcfg.to_state_spaces(), seed]).encode()).hexdigest()[:12]
    d = work / f"{mcfg.name}-seed{seed}-{key}" / "state-spaces"
    if not (d.parent / "done").exists():
        sd = init_state_dict(mcfg, seed=seed)
        write_checkpoint(mcfg, sd, d, fmt="state-spaces", dtype="float32", weights="safetensors")
        (d.parent / "done").write_text(key + "\n")
    return d, mcfg, f"random init (mamba_ssm-style, seed {seed}) of the {mcfg.name} shape, float32"


def _rotate(xs: list, r: int) -> list:
    k = r % max(1, len(xs))
    return xs[k:] + xs[:k]


def _variants(W: str, w: dict) -> list[tuple[str, int]]:
    if W == "concurrency":
        return [(f"c{int(c)}", int(c)) for c in w["levels"]]
    return [(W, int(w.get("concurrency", 1)))]


def build_trace(W: str, w: dict, tokens: np.ndarray, seed: int, salt: Sequence[int], concurrency: int,
                respond=None) -> list[list[Request]]:
    """The sessions of one workload variant for one round (``salt``: variant, round)."""
    if W == "concurrency":
        n = int(w.get("waves", 1)) * concurrency
        return trace_concurrency(tokens, n, w["prompt_min"], w["prompt_max"], w["max_tokens"], seed, salt)
    if W == "shared_prefix":
        return trace_shared_prefix(tokens, w["n_requests"], w["prefix_len"], w["suffix_len"], w["max_tokens"], seed,
                                   salt)
    if W == "multiturn":
        return trace_multiturn(tokens, w["conversations"], w["turns"], w["first_len"], w["new_len"], w["max_tokens"],
                               seed, salt, respond if w.get("replies", "model") == "model" else None)
    if W in ("saturation", "soak"):
        return trace_short(tokens, w["n_requests"], w["prompt_min"], w["prompt_max"], w["max_tokens"], seed, salt)
    raise ValueError(f"unknown workload {W!r}")


def _max_seq(sessions_by_round) -> int:
    return max(len(r.prompt) + r.max_tokens for ss in sessions_by_round for s in ss for r in s)


def _cpu_seconds(pid: int | None) -> float | None:
    """utime + stime of a process (and its reaped children) in seconds, Linux /proc."""
    if not pid:
        return None
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def run(cfg) -> dict:
    """The experiment (``experiments/serve_bench.py``): see ``mamba2_jax/eval/conf/serve_bench.yaml``."""
    import logging

    from ..fileio import atomic_write_text
    from ..paths import repo_path, require_data_dir
    from ..tokenizer import load_tokenizer
    from . import bench, flops
    from .results import write_results

    for name in ("httpx", "httpx2", "httpcore", "httpcore2"):  # one INFO line per request otherwise
        logging.getLogger(name).setLevel(logging.WARNING)
    t_run = time.perf_counter()
    ctx = bench.setup_run(cfg, "serve")
    S = _plain(cfg.serve)
    seed = int(cfg.seed)
    data = require_data_dir(cfg.paths.data_dir)
    work = repo_path(S["work_dir"])
    work.mkdir(parents=True, exist_ok=True)
    logs = work / "logs"
    bandwidth = ctx["profile"].bandwidth
    llama_dir = repo_path(S["llama_server"].get("dir") or os.environ.get("MAMBA2_JAX_LLAMA_DIR") or ".llama").resolve()
    os.environ["MAMBA2_JAX_LLAMA_DIR"] = str(llama_dir)  # reference.llama_gguf / llama_cpp_capi read it

    tok = load_tokenizer(data / "gpt-neox-20b", allow_hub=False)
    tokens = wikitext_tokens(data / S["wikitext"], tok, S.get("wikitext_max_chars"))
    print(f"[serve] trace source: {S['wikitext']} ({len(tokens):,} tokens), seed {seed}", flush=True)

    skipped: dict[str, str] = {}
    ok_ours, why = ours_available()
    if not ok_ours:
        for s in ("ours", "ours_nocache"):
            if s in S["systems"]:
                skipped[s] = why
    binary, why_llama, llama_build = llama_server_status(llama_dir)
    if binary is None and "llama_server" in S["systems"]:
        skipped["llama_server"] = why_llama
    for s, w in skipped.items():
        print(f"[serve] {s}: SKIPPED ({w})", flush=True)

    records: list[dict] = []
    summaries: dict[str, dict] = {}  # "model/variant/system" -> median over rounds
    request_rows: list[dict] = []
    servers_info: dict[str, dict] = {}
    model_info: dict[str, dict] = {}
    for mname in S["model_list"]:
        M = dict(S["models"][mname])
        slots = int(M["slots"])
        dtype = str(M.get("dtype") or S.get("dtype") or "float32")
        state_dtype = str(M.get("state_dtype") or S.get("state_dtype") or "float32")
        model_dir, mcfg, wlabel = prepare_model(mname, M, work, seed, data)
        wkind = f"checkpoint {M['checkpoint']}" if M.get("checkpoint") else "random-init"
        wl = list(M["workloads"])
        want = set()
        for W in wl:
            want |= {s for s in S["workloads"][W]["systems"] if s in S["systems"] and s not in skipped}
        dbytes = flops.decode_bytes(mcfg, slots, dtype, state_dtype)["total"]
        model_info[mname] = {"dir": str(model_dir), "weights": wlabel, "dtype": dtype, "state_dtype": state_dtype,
                             "slots": slots, "num_params": mcfg.num_params(),
                             "decode_bytes_per_step_all_slots": dbytes,
                             "state_bytes_per_slot": flops.state_bytes(mcfg, 1, dtype, state_dtype)["total"],
                             "workloads": wl}
        gen = None
        need_gen = "generator" in want or any(W == "multiturn" and S["workloads"][W].get("replies", "model") == "model"
                                              for W in wl)
        if need_gen:
            from ..generate import Generator
            from ..loading import load_pretrained

            gen = Generator(load_pretrained(str(model_dir), dtype=dtype, state_dtype=state_dtype), eos_id=None)

        def respond(prompt, n, gen=gen):
            return gen.generate([prompt], n).sequences()[0]

        # every trace of this model, fixed before any system runs
        traces: dict[tuple[str, str], dict[int, list[list[Request]]]] = {}
        t0 = time.perf_counter()
        for vi, W in enumerate(wl):
            w = S["workloads"][W]
            for li, (variant, conc) in enumerate(_variants(W, w)):
                rounds = int(w.get("rounds") or S["rounds"])
                traces[(W, variant)] = {r: build_trace(W, w, tokens, seed, (vi, li, r), conc, respond)
                                        for r in range(rounds)}
        print(f"[serve] {mname}: traces built in {time.perf_counter() - t0:.1f} s", flush=True)
        max_seq = max(_max_seq(tr.values()) for tr in traces.values())

        servers: dict[str, ServerProcess] = {}
        try:
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            root = repo_path(".")
            env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
            for s in [s for s in SERVER_SYSTEMS if s in want]:
                port = free_port()
                if s in ("ours", "ours_nocache"):
                    pcb = 0 if s == "ours_nocache" else S["ours"].get("prefix_cache_bytes")
                    cmd = ours_command(str(model_dir), port, slots, dtype=dtype, state_dtype=state_dtype,
                                       prefix_cache_bytes=pcb, prefill_budget=S["ours"].get("prefill_budget"),
                                       extra=S["ours"].get("args") or [], name=mname)
                else:
                    from reference.llama_gguf import convert

                    gguf = convert(model_dir, work / f"gguf-{mname}", ["f32"])["f32"]
                    ctx_len = slots * int(math.ceil((max_seq + 16) / 256) * 256)
                    cmd = llama_server_command(str(binary), str(gguf), port, slots, ctx_len,
                                               int(S["llama_server"]["threads"]), S["llama_server"].get("args") or [],
                                               alias=mname)
                sp = ServerProcess(s, cmd, port, logs / f"{mname}-{s}.log", env=env, cwd=str(root),
                                   startup_timeout=float(S["startup_timeout_s"]))
                print(f"[serve] {mname}: starting {s}: {' '.join(cmd)}", flush=True)
                try:
                    sp.start()
                except Exception as e:  # noqa: BLE001
                    skipped[s] = f"{mname}: did not start: {str(e).splitlines()[0]}"
                    print(f"[serve] {s}: SKIPPED ({skipped[s]})\n{sp.tail()}", flush=True)
                    continue
                servers[s] = sp
                servers_info[f"{mname}/{s}"] = {"command": cmd, "ready_s": sp.ready_s, "model": sp.model,
                                                "pid": sp.pid, "rss_at_ready": sp.rss(), "log": str(sp.log)}
                print(f"[serve] {mname}: {s} ready in {sp.ready_s:.1f} s (model {sp.model!r})", flush=True)
            if "generator" in want and gen is not None:
                servers_info[f"{mname}/generator"] = {"in_process": True, "eos_id": None,
                                                      "xla_flags": os.environ.get("XLA_FLAGS")}

            for W in wl:
                w = S["workloads"][W]
                systems = [s for s in w["systems"] if s in want and (s == "generator" or s in servers)]
                for variant, conc in _variants(W, w):
                    tr = traces[(W, variant)]
                    if "generator" in systems:
                        ws = generator_warmup(gen, [r for ss in tr.values() for r in flatten(ss)], conc)
                        print(f"[serve] {mname} {variant}: generator compiled in {ws:.1f} s", flush=True)
                    per_sys: dict[str, list[dict]] = {s: [] for s in systems}
                    for r in sorted(tr):
                        for s in _rotate(systems, r):
                            why = server_gone(servers.get(s))
                            if why:  # a server that died (e.g. the OOM killer): say so, do not record connect errors
                                skipped.setdefault(f"{mname}/{s}", f"{why} before {variant} round {r}")
                                print(f"[serve] {mname} {variant} round {r} {s}: SKIPPED ({why})", flush=True)
                                continue
                            rec, rows = _run_one(s, servers.get(s), gen, tr[r], conc, S, W, servers)
                            rec.update({"model": mname, "workload": W, "variant": variant, "system": s, "round": r,
                                        "concurrency": conc, "slots": slots, "dtype": dtype,
                                        "state_dtype": state_dtype, "weights": wkind,
                                        "max_tokens": tr[r][0][0].max_tokens})
                            if s in ("ours", "ours_nocache", "generator"):
                                nrows = conc if s == "generator" else decode_rows(conc, slots)
                                rec["decode_rows"] = nrows
                                rec.update(decode_fraction(flops.decode_bytes(mcfg, nrows, dtype, state_dtype)["total"],
                                                           rec.get("itl_p50_s"), bandwidth))
                            records.append(rec)
                            per_sys[s].append(rec)
                            if len(rows) <= int(S.get("keep_requests_max", 2000)):
                                request_rows += [{"model": mname, "variant": variant, "system": s, "round": r, **x}
                                                 for x in rows]
                            print(f"[serve] {mname} {variant} round {r} {s}: " + _line(rec), flush=True)
                    for s, recs in per_sys.items():
                        summaries[f"{mname}/{variant}/{s}"] = {"model": mname, "workload": W, "variant": variant,
                                                               "system": s, "concurrency": conc,
                                                               **median_summary(recs)}
        finally:
            for s, sp in servers.items():
                code = sp.stop()
                servers_info.setdefault(f"{mname}/{s}", {})["exit_code"] = code
        del gen

    ratios = compute_ratios(summaries)
    targets = compute_targets(summaries, ratios, S)
    wall = time.perf_counter() - t_run
    flags = {"ours": {"args": S["ours"].get("args") or [], "prefix_cache_bytes": S["ours"].get("prefix_cache_bytes"),
                      "prefill_budget": S["ours"].get("prefill_budget"),
                      "threads": f"XLA:CPU default (all {os.cpu_count()} cores)",
                      "xla_flags": os.environ.get("XLA_FLAGS")},
             "llama_server": {"threads": int(S["llama_server"]["threads"]), "args": S["llama_server"].get("args") or [],
                              "build": llama_build, "binary": str(binary) if binary else None},
             "generator": {"threads": f"XLA:CPU default (all {os.cpu_count()} cores)", "in_process": True}}
    label = (f"{ctx['label']}; serving: {', '.join(S['model_list'])}; one alternating run, "
             f"{S['rounds']} rounds; the same trace and client for every system")
    extra = {"summary": summaries, "ratios": ratios, "targets": targets, "skipped": skipped, "servers": servers_info,
             "models": model_info, "flags": flags, "systems": {s: SYSTEMS[s] for s in S["systems"]},
             "bandwidth": bandwidth, "wall_s": wall, "client": client_info(),
             "trace": {"source": str(S["wikitext"]), "tokens": int(len(tokens)), "tokenizer": tok.source,
                       "seed": seed}}
    if not records:
        raise RuntimeError(f"no system produced results: {skipped}")
    paths = write_results("serve", ctx["run"], records, hardware=ctx["hardware"], config=bench.config_dict(cfg),
                          label=label, out_dir=cfg.out_dir, extra=extra)
    md = Path(paths[0]).with_suffix(".md")
    atomic_write_text(md, markdown(label, summaries, ratios, targets, skipped, flags, servers_info, wall))
    rq = Path(paths[0]).with_suffix(".requests.jsonl")
    atomic_write_text(rq, "".join(json.dumps(x) + "\n" for x in request_rows))
    for k, v in targets.items():
        print(f"[serve] target {k}: {_fmt(v['value'])} (required {v['target']}): "
              f"{'PASS' if v['pass'] else 'MISS'}", flush=True)
    print(f"[serve] wrote {paths[0]}, {md.name}, {rq.name} (run wall {wall:.0f} s)", flush=True)
    return {"records": records, "summary": summaries, "ratios": ratios, "targets": targets, "skipped": skipped,
            "paths": paths, "run": ctx["run"], "wall_s": wall}


def _run_one(s: str, sp: ServerProcess | None, gen, sessions, conc: int, S: dict, W: str,
             servers: dict[str, ServerProcess]) -> tuple[dict, list[dict]]:
    """One system, one round of one workload variant → (record, per-request rows)."""
    others = {k: _cpu_seconds(v.pid) for k, v in servers.items() if k != s}
    load0 = _loadavg()
    if s == "generator":
        reqs = flatten(sessions)
        results, wall, lat = run_generator(gen, reqs, conc)
        rec = summarize(results, wall)
        rec.update({"batch_latency_p50_s": percentile(lat, 50), "batch_latency_max_s": max(lat) if lat else None,
                    "batches": len(lat)})
    else:
        n_total = sum(len(x) for x in sessions)
        half = {"t": None, "n": 0}

        def on_result(_r):
            half["n"] += 1
            if half["t"] is None and half["n"] >= n_total / 2:
                half["t"] = time.perf_counter()

        sampler = MetricsSampler(sp.base_url, sp.pid, float(S["metrics_interval_s"]))
        extra = dict(S["llama_server"].get("request_extra") or {}) if s == "llama_server" else {}

        async def go():
            async with sampler:
                return await run_sessions(sp.base_url, sp.model, sessions, conc, extra,
                                          float(S["request_timeout_s"]), on_result)

        before = _scrape(sp) if s != "llama_server" else None
        results, wall = asyncio.run(go())
        rec = summarize(results, wall)
        after = _scrape(sp) if s != "llama_server" else None
        if before and after:
            for k in ("prefix_cache_hits_total", "prefix_cache_misses_total", "prefix_cache_hit_tokens_total",
                      "requests_total", "generation_tokens_total"):
                rec[k] = after.get(f"mamba2_{k}", 0.0) - before.get(f"mamba2_{k}", 0.0)
            rec["prefix_cache_bytes"] = after.get("mamba2_prefix_cache_bytes")
        busy, total = OCCUPANCY[s]
        rec["slot_occupancy"] = occupancy(sampler.metrics, busy, total or float(sp.cmd[sp.cmd.index("-np") + 1]))
        rec["metrics_samples"] = len(sampler.metrics)
        rec["metrics_errors"] = sampler.errors
        if sampler.rss:
            rec.update(rss_growth(sampler.rss, half["t"] or sampler.rss[-1][0]))
        if sampler.metrics and s != "llama_server":
            rec["queue_depth_max"] = max(m.get("mamba2_queue_depth", 0.0) for m in sampler.metrics)
    rec["load_avg"] = [load0, _loadavg()]
    idle = {k: (None if v is None or _cpu_seconds(servers[k].pid) is None else _cpu_seconds(servers[k].pid) - v)
            for k, v in others.items()}
    rec["idle_servers_cpu_s"] = idle  # CPU the other (idle) servers used meanwhile: should be ~0
    return rec, result_rows(results)


def _scrape(sp: ServerProcess) -> dict[str, float] | None:
    """The server's /metrics now (parsed), None if it does not answer."""
    try:
        r = http_module().get(sp.base_url + "/metrics", timeout=10)
        return parse_metrics(r.text) if r.status_code == 200 else None
    except Exception:  # noqa: BLE001
        return None


def _loadavg():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        return None


def _fmt(v, unit: str = "") -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.3g}{unit}"
    return f"{v}{unit}"


def _line(r: dict) -> str:
    ms = (lambda v: None if v is None else v * 1e3)
    return (f"{_fmt(r.get('output_tok_s'))} tok/s, {_fmt(r.get('requests_s'))} req/s, TTFT p50 "
            f"{_fmt(ms(r.get('ttft_p50_s')))} ms p99 {_fmt(ms(r.get('ttft_p99_s')))} ms, ITL p50 "
            f"{_fmt(ms(r.get('itl_p50_s')))} ms p99 {_fmt(ms(r.get('itl_p99_s')))} ms, failures {r.get('failures')}"
            + (f", occupancy {r['slot_occupancy']:.2f}" if r.get("slot_occupancy") is not None else "")
            + (f", decode {r['decode_fraction_of_bound']:.2f} of bound" if r.get("decode_fraction_of_bound") else "")
            + f", wall {r.get('wall_s', 0):.1f} s")


def compute_ratios(summaries: dict[str, dict]) -> dict[str, dict]:
    """Per model/variant: ours ÷ llama-server (output tok/s, requests/s, TTFT p50, ITL p50), ours ÷
    Generator (output tok/s, ITL p50), and cache off ÷ on (TTFT p50)."""
    out: dict[str, dict] = {}
    keys = {(v["model"], v["variant"]) for v in summaries.values()}
    for m, var in sorted(keys):
        g = {s: summaries.get(f"{m}/{var}/{s}") for s in SYSTEMS}
        o, ll, gen, off = g["ours"], g["llama_server"], g["generator"], g["ours_nocache"]
        r: dict[str, float | None] = {}
        if o and ll:
            for k in ("output_tok_s", "requests_s", "ttft_p50_s", "itl_p50_s"):
                r[f"ours_over_llama_server_{k}"] = ratio(o.get(k), ll.get(k))
        if o and gen:
            r["ours_over_generator_output_tok_s"] = ratio(o.get("output_tok_s"), gen.get("output_tok_s"))
            r["ours_over_generator_itl_p50_s"] = ratio(o.get("itl_p50_s"), gen.get("itl_p50_s"))
        if o and off:
            r["cache_off_over_on_ttft_p50"] = ratio(off.get("ttft_p50_s"), o.get("ttft_p50_s"))
        if ll and off and o:
            r["llama_server_over_ours_cache_on_ttft_p50"] = ratio(ll.get("ttft_p50_s"), o.get("ttft_p50_s"))
        if r:
            out[f"{m}/{var}"] = r
    return out


def compute_targets(summaries: dict[str, dict], ratios: dict[str, dict], S: dict) -> dict[str, dict]:
    """Issue 27's targets, for the models/variants this run measured."""
    t: dict[str, dict] = {}

    def add(key, value, req, ok):
        if value is not None:
            t[key] = {"value": value, "target": req, "pass": bool(ok(value))}

    for key, r in ratios.items():
        m, var = key.split("/", 1)
        if var in ("c16", "c64"):
            add(f"{m} {var}: output tok/s ours ÷ llama-server", r.get("ours_over_llama_server_output_tok_s"), ">= 2",
                lambda v: v >= 2)
        if var == "c1":
            add(f"{m} c1: TTFT p50 ours ÷ llama-server", r.get("ours_over_llama_server_ttft_p50_s"), "<= 1",
                lambda v: v <= 1)
            add(f"{m} c1: ITL p50 ours ÷ Generator decode step", r.get("ours_over_generator_itl_p50_s"), "<= 1.1",
                lambda v: v <= 1.1)
        if var in ("shared_prefix", "multiturn"):
            add(f"{m} {var}: TTFT p50 cache off ÷ on", r.get("cache_off_over_on_ttft_p50"), ">= 5", lambda v: v >= 5)
    for s in summaries.values():
        if s["system"] != "ours":
            continue
        if s["variant"] == "saturation":
            add(f"{s['model']} saturation ({s['n_requests']} requests): failed requests", s["failures"],
                "0 (>= 2000 requests)", lambda v, n=s["n_requests"]: v == 0 and n >= 2000)
        if s["variant"] == "soak":
            add(f"{s['model']} soak ({s['n_requests']} requests): RSS growth over the second half",
                s.get("rss_growth_second_half"), "<= 5% (>= 10000 requests)",
                lambda v, n=s["n_requests"]: v <= 0.05 and n >= 10000)
    return t


def markdown(label, summaries, ratios, targets, skipped, flags, servers, wall) -> str:
    """The run as Markdown: per model and workload variant, every system's medians; the ratios; the targets;
    the flags and commands; what was skipped."""
    ms = (lambda v: "" if v is None else f"{v * 1e3:.1f}")
    lines = [f"# Serving benchmark: {label}", "",
             f"Medians over the rounds of one alternating run (run wall time {wall:.0f} s). TTFT: time to the first "
             "streamed token; ITL: (t_last − t_first) / (completion tokens − 1) per request. Generator: static "
             "batches in-process (TTFT = its batch's prefill; tokens are handed over at the batch's end). "
             "Decode ÷ bound: (weights + R × state bytes, R = the rows a step computes: the busy slots rounded up to "
             "a power of two, at most S; Generator: its batch) ÷ ITL p50 over the "
             "streaming bandwidth measured at the start. RSS growth: the server's VmRSS from half the requests "
             "done to the end.", "",
             "| model | variant | system | output tok/s | req/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms "
             "| slot occupancy | decode ÷ bound | prefix-cache hits | failures | requests | RSS growth, 2nd half |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries.values():
        lines.append(f"| {s['model']} | {s['variant']} | {s['system']} | {_fmt(s.get('output_tok_s'))} | "
                     f"{_fmt(s.get('requests_s'))} | {ms(s.get('ttft_p50_s'))} | {ms(s.get('ttft_p99_s'))} | "
                     f"{ms(s.get('itl_p50_s'))} | {ms(s.get('itl_p99_s'))} | {_fmt(s.get('slot_occupancy'))} | "
                     f"{_fmt(s.get('decode_fraction_of_bound'))} | {_fmt(s.get('prefix_cache_hits_total'))} | "
                     f"{s.get('failures')} | {s.get('n_requests')} | "
                     + ("" if s.get("rss_growth_second_half") is None else f"{s['rss_growth_second_half']:.2%}")
                     + " |")
    if ratios:
        lines += ["", "| model/variant | ratio | value |", "|---|---|---|"]
        for k, r in ratios.items():
            lines += [f"| {k} | {n} | {_fmt(v)} |" for n, v in r.items()]
    if targets:
        lines += ["", "| target | value | required | |", "|---|---|---|---|"]
        lines += [f"| {k} | {_fmt(v['value'])} | {v['target']} | {'PASS' if v['pass'] else 'MISS'} |"
                  for k, v in targets.items()]
    lines += ["", "Commands and flags:", ""]
    for k, v in servers.items():
        if v.get("command"):
            lines.append(f"- {k}: `{' '.join(map(str, v['command']))}` (ready in {_fmt(v.get('ready_s'))} s)")
    lines.append(f"- threads: ours {flags['ours']['threads']}; llama-server -t {flags['llama_server']['threads']}; "
                 f"generator {flags['generator']['threads']}")
    b = flags["llama_server"].get("build")
    if b:
        lines.append(f"- llama-server: llama.cpp {b.get('llama_cpp_commit')} from {b.get('sdist')}; cmake "
                     f"{' '.join(b.get('cmake_flags') or [])}; built in {b.get('build_wall_s')} s")
    for s, why in skipped.items():
        lines.append(f"- skipped {s}: {why.splitlines()[0]}")
    return "\n".join(lines) + "\n"
