"""`mamba2-jax serve` over HTTP, as users run it (issue 27, section 6, and the bad-input table of
section 4; the contract is the issue's and docs/serving.md's).

One server process serves the module: ``python -m mamba2_jax.cli serve`` on the embedded model with
4 slots and ``--prefill-chunk 64``, on a free port, started by a module fixture that waits for
``/health`` and SIGTERMs it at the end (exit code 0).  It is driven with the official ``openai``
client (and ``httpx2``, the HTTP library under it, where raw bytes or a dropped connection are the
point).  A second, small server (``--api-key``, ``--max-queue 2``) serves the key, full-queue and
SIGTERM-during-a-stream tests; both share a JAX compilation cache in the module's temporary
directory, so the second one compiles nothing.

The independent computation is ``Generator(model, eos_id=0).generate([ids], max_tokens)`` in this
process, on the same checkpoint at float32: every greedy row over HTTP must equal it, whatever else
the server is doing (other requests, prefix-cache hits, queueing)."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _compile_cache import environment as cache_environment

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
EMBEDDED = REPO / "checkpoints" / "mamba2-tiny-wikitext"
NAME = EMBEDDED.name                 # the served model name defaults to the model directory's basename
SLOTS = 4
MAX_TOKENS = 12                      # every greedy request that is compared with Generator (one decode program)
EOS = 0
START_TIMEOUT_S = 480                # the server compiles its programs before /health says 200
API_KEY = "serve-test-key"
FUZZ_EXAMPLES = 1000
MAX_QUEUE = 2                        # the second server's --max-queue
PREFILL_CHUNK = 64                   # the first server's --prefill-chunk: the 300-token prompt takes 5 chunks

PARAGRAPH = (
    "The river town grew up around a wooden bridge built in the twelfth century by monks from the abbey "
    "upstream. Merchants came to sell wool and salt at the weekly market, and by 1400 the town had a guild hall, "
    "two churches and a stone wall with four gates. During the civil war the bridge was burned twice, and the "
    "garrison held the castle for eleven weeks before it surrendered. In the nineteenth century the railway "
    "reached the valley, the mills along the river were rebuilt in brick, and the population rose from three "
    "thousand to more than twenty thousand within fifty years.")
TEXT_PROMPT = "The history of the river town"
# the prefix-cache test's prompt: it shares no first token with any other prompt of the module, so
# its first request is a true miss
PREFIX_TEXT = "Quantum chemistry describes how electrons bind atoms into molecules, using approximate solutions of"
PREFIX_EXTRA = " the Schrodinger equation for many interacting particles"
GREEDY_LENGTHS = (1, 3, 16, 40, 64, 100, 300)


# ------------------------------------------------------------------------------ the server process
@dataclasses.dataclass
class Server:
    proc: subprocess.Popen
    port: int
    log: Path
    rc: int | None = None

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def log_tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else "(no log)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(log: Path, cache_dir: Path, *args: str) -> Server:
    port = free_port()
    env = {**os.environ, **cache_environment(cache_dir), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    out = open(log, "wb")  # noqa: SIM115 -- the child writes it for its whole life
    proc = subprocess.Popen([sys.executable, "-m", "mamba2_jax.cli", "serve", "--port", str(port),
                             "--slots", str(SLOTS), *args], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    out.close()
    return Server(proc, port, log)


def wait_ready(srv: Server, timeout: float = START_TIMEOUT_S) -> None:
    import httpx2

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if srv.proc.poll() is not None:
            pytest.fail(f"the server exited with code {srv.proc.returncode} before it was ready:\n{srv.log_tail()}")
        try:
            r = httpx2.get(srv.url("/health"), timeout=5)
            if r.status_code == 200:
                assert r.json() == {"status": "ok"}, r.text
                return
            assert r.status_code == 503, f"/health before warm-up: {r.status_code} {r.text}"
        except httpx2.TransportError:
            pass
        time.sleep(0.5)
    pytest.fail(f"/health was not 200 after {timeout:.0f} s:\n{srv.log_tail()}")


def stop(srv: Server, timeout: float = 120) -> int | None:
    """SIGTERM and wait; the exit code (None if it had to be killed)."""
    if srv.proc.poll() is None:
        srv.proc.send_signal(signal.SIGTERM)
        try:
            srv.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            srv.proc.kill()
            srv.proc.wait()
            return None
    srv.rc = srv.proc.returncode
    return srv.rc


def serve_module_or_skip() -> None:
    spec = importlib.util.find_spec("mamba2_jax.serve")
    if spec is None or spec.origin is None:  # origin None: only a namespace package found elsewhere
        pytest.skip("mamba2_jax.serve not present yet")


# ------------------------------------------------------------------------------ the independent computation
class Oracle:
    """Generator alone, one prompt at a time, in this process (memoised)."""

    def __init__(self):
        import mamba2_jax
        from mamba2_jax.generate import Generator
        from mamba2_jax.tokenizer import load_tokenizer

        self.model = mamba2_jax.load_pretrained(EMBEDDED, dtype="float32")
        self.gen = Generator(self.model, eos_id=EOS)
        self.tok = load_tokenizer(EMBEDDED, allow_hub=False)
        self.vocab = self.model.cfg.vocab_size
        self._memo: dict[Any, list[int]] = {}

    def greedy(self, ids, max_tokens: int = MAX_TOKENS) -> list[int]:
        key = (tuple(ids), max_tokens)
        if key not in self._memo:
            self._memo[key] = self.gen.generate([list(ids)], max_tokens).sequences()[0]
        return self._memo[key]

    def sampled(self, ids, max_tokens: int, seed: int, temperature: float, top_k: int, top_p: float) -> list[int]:
        from mamba2_jax.generate import SamplingConfig

        cfg = SamplingConfig(greedy=False, temperature=temperature, top_k=top_k, top_p=top_p)
        return self.gen.generate([list(ids)], max_tokens, cfg, seed=seed).sequences()[0]

    def text(self, ids) -> str:
        """The completion text of generated ids: special tokens (EOS) are not text."""
        return self.tok.decode(ids, skip_special_tokens=True)


def paragraph_ids(tok) -> list[int]:
    return tok.encode(PARAGRAPH)


def cyclic(ids: list[int], start: int, n: int) -> list[int]:
    return [ids[(start + i) % len(ids)] for i in range(n)]


def greedy_prompts(tok) -> list[list[int]]:
    """Prompts of 1 to 300 tokens, each from a different place in the paragraph."""
    ids = paragraph_ids(tok)
    return [cyclic(ids, 7 * i + 1, n) for i, n in enumerate(GREEDY_LENGTHS)]


def unique_ids(seed: int, n: int) -> list[int]:
    """Token ids no other prompt of the module starts with (no prefix-cache hit)."""
    rng = np.random.default_rng(seed)
    return [int(t) for t in rng.integers(1000, 50000, n)]


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("serve-jax-cache")


@pytest.fixture(scope="module")
def oracle() -> Oracle:
    o = Oracle()
    tok = o.tok
    for p in [*greedy_prompts(tok), tok.encode(TEXT_PROMPT), tok.encode(PREFIX_TEXT),
              tok.encode(PREFIX_TEXT + PREFIX_EXTRA)]:
        o.greedy(p)
    return o


@pytest.fixture(scope="module")
def server(request, tmp_path_factory, cache_dir):
    serve_module_or_skip()
    # no --model: the embedded model
    srv = launch(tmp_path_factory.mktemp("serve") / "server.log", cache_dir, "--prefill-chunk", str(PREFILL_CHUNK))
    try:
        request.getfixturevalue("oracle")  # compile the independent Generator while the server warms up
        wait_ready(srv)
        yield srv
    finally:
        rc = stop(srv)
    assert rc == 0, f"the server's exit code after SIGTERM was {rc}:\n{srv.log_tail()}"


@pytest.fixture(scope="module")
def client(server):
    import openai

    # max_retries=0: the client must not hide a 5xx or a dropped connection by retrying
    return openai.OpenAI(base_url=server.url("/v1"), api_key="unused", max_retries=0, timeout=180)


@pytest.fixture(scope="module")
def http(server):
    import httpx2

    with httpx2.Client(base_url=server.url(), timeout=180) as c:
        yield c


# ------------------------------------------------------------------------------ helpers
def token_ids(choice) -> list[int]:
    ids = (choice.model_extra or {}).get("token_ids") if hasattr(choice, "model_extra") else choice.get("token_ids")
    assert isinstance(ids, list), f"choice has no token_ids: {choice}"
    return ids


def complete(client, prompt, max_tokens: int = MAX_TOKENS, **kw):
    extra = {k: kw.pop(k) for k in ("top_k", "ignore_eos") if k in kw}
    return client.completions.create(model=kw.pop("model", NAME), prompt=prompt, max_tokens=max_tokens,
                                     temperature=kw.pop("temperature", 0), extra_body=extra or None, **kw)


def check_greedy(resp, oracle: Oracle, ids: list[int], max_tokens: int = MAX_TOKENS, what: str = "") -> list[int]:
    """One greedy completion against Generator alone: tokens, text, finish reason and usage."""
    assert resp.object == "text_completion"
    (choice,) = resp.choices
    want = oracle.greedy(ids, max_tokens)
    got = token_ids(choice)
    assert got == want, f"{what}: HTTP greedy {got} != Generator alone {want} (prompt of {len(ids)} tokens)"
    assert choice.text == oracle.text(want), what
    assert choice.finish_reason == ("length" if len(want) == max_tokens and want[-1] != EOS else "stop"), what
    u = resp.usage
    assert (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (len(ids), len(want), len(ids) + len(want)), what
    return got


@dataclasses.dataclass
class Metrics:
    samples: dict[tuple[str, tuple], float]
    types: dict[str, str]

    def _matching(self, name: str, labels: dict) -> list[float]:
        want = set(labels.items())
        return [v for (n, lbl), v in self.samples.items() if n == name and want <= set(lbl)]

    def get(self, name: str, **labels) -> float:
        """The sum over the samples of ``name`` whose labels include ``labels`` (0 if none)."""
        return sum(self._matching(name, labels))

    def has(self, name: str, **labels) -> bool:
        return bool(self._matching(name, labels))


def scrape(srv: Server) -> Metrics:
    import httpx2
    from prometheus_client.parser import text_string_to_metric_families

    r = httpx2.get(srv.url("/metrics"), timeout=30)
    assert r.status_code == 200, r.text
    samples, types = {}, {}
    for fam in text_string_to_metric_families(r.text):
        types[fam.name] = fam.type
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return Metrics(samples, types)


def wait_until(pred: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            pytest.fail(f"not within {timeout} s: {what}")
        time.sleep(interval)


def assert_error(r, field: str | None = None, what: str = "") -> dict:
    """A 4xx with the OpenAI error object; where a field is at fault, the error names it."""
    assert 400 <= r.status_code < 500, f"{what}: {r.status_code} {r.text[:500]}"
    try:
        body = r.json()
    except ValueError:
        pytest.fail(f"{what}: {r.status_code} body is not JSON: {r.text[:500]!r}")
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), f"{what}: {body}"
    err = body["error"]
    assert {"message", "type", "param", "code"} <= set(err), f"{what}: {err}"
    assert isinstance(err["message"], str) and err["message"], f"{what}: {err}"
    if field is not None:
        assert field == err["param"] or field in err["message"], f"{what}: the error does not name {field!r}: {err}"
    return err


def sse_events(lines) -> list[str]:
    """The data payloads of an SSE body, each line checked for the `data: ` framing."""
    out = []
    for line in lines:
        if not line.strip():
            continue
        if line.startswith(":"):  # an SSE comment (keep-alive)
            continue
        assert line.startswith("data: "), f"not an SSE data line: {line!r}"
        out.append(line[len("data: "):])
    return out


# ------------------------------------------------------------------------------ basics
def test_health_models_and_ready_line(server, client):
    import httpx2

    assert httpx2.get(server.url("/health")).json() == {"status": "ok"}
    models = client.models.list()
    assert [m.id for m in models.data] == [NAME]
    assert models.data[0].owned_by == "mamba2-jax"
    ready = [line for line in server.log_tail(100_000).splitlines()
             if line.startswith("mamba2-jax serve:") and f"ready on http://127.0.0.1:{server.port}" in line]
    assert len(ready) == 1, server.log_tail()


def test_completion(client, oracle):
    tok = oracle.tok
    ids = tok.encode(TEXT_PROMPT)
    # a string prompt is tokenized by the server as the tokenizers library does
    check_greedy(complete(client, TEXT_PROMPT), oracle, ids, what="string prompt")
    check_greedy(complete(client, ids), oracle, ids, what="token-id prompt")
    check_greedy(complete(client, [TEXT_PROMPT]), oracle, ids, what="a list of one string")
    check_greedy(complete(client, [ids]), oracle, ids, what="a list of one id list")
    # n = 2, greedy: two identical choices, usage counts both
    r = complete(client, ids, n=2)
    want = oracle.greedy(ids)
    assert sorted(c.index for c in r.choices) == [0, 1]
    assert all(token_ids(c) == want for c in r.choices)
    assert r.usage.completion_tokens == 2 * len(want) and r.usage.prompt_tokens == len(ids)


def test_stop_string(client, oracle):
    ids = greedy_prompts(oracle.tok)[5]
    want = oracle.greedy(ids)
    full = oracle.text(want)
    stop = full[len(full) // 2:][:4]
    if len(full) < 8 or not stop.strip():
        pytest.skip(f"the greedy text {full!r} is too short or blank to cut with a stop string")
    # the completion ends with the token that completes the stop string; its text ends before the stop
    n = next(k for k in range(1, len(want) + 1) if stop in oracle.text(want[:k]))
    stops = [stop, "\u2603never\u2603"]
    r = complete(client, ids, stop=stops)
    (c,) = r.choices
    assert (c.text, c.finish_reason) == (full[: full.index(stop)], "stop")
    assert token_ids(c) == want[:n], f"tokens past the stop string: {token_ids(c)} (stop completed by {want[:n]})"
    assert r.usage.completion_tokens == n
    text, got, finish, usage = "", [], [], None
    for chunk in complete(client, ids, stop=stops, stream=True, stream_options={"include_usage": True}):
        for c in chunk.choices:
            text += c.text
            got += token_ids(c)
            finish += [c.finish_reason] if c.finish_reason else []
        usage = chunk.usage or usage
    assert (text, finish, got, usage.completion_tokens) == (full[: full.index(stop)], ["stop"], want[:n], n)


def test_streaming_equals_non_streaming(client, http, oracle):
    ids = greedy_prompts(oracle.tok)[3]
    want = oracle.greedy(ids)
    plain = complete(client, ids)
    check_greedy(plain, oracle, ids, what="non-streaming")
    texts, finish, usage, chunk_ids = [], [], [], []
    for chunk in complete(client, ids, stream=True, stream_options={"include_usage": True}):
        assert chunk.object == "text_completion"
        for c in chunk.choices:
            texts.append(c.text)
            if c.finish_reason is not None:
                finish.append(c.finish_reason)
            if (c.model_extra or {}).get("token_ids") is not None:
                chunk_ids.extend(c.model_extra["token_ids"])
        if chunk.usage is not None:
            usage.append(chunk.usage)
    assert "".join(texts) == plain.choices[0].text
    assert finish == [plain.choices[0].finish_reason]
    assert len(usage) == 1, usage
    assert (usage[0].prompt_tokens, usage[0].completion_tokens, usage[0].total_tokens) == \
        (len(ids), len(want), len(ids) + len(want))
    if chunk_ids:
        assert chunk_ids == want
    # the wire format itself: SSE data lines of JSON chunks, the last one `data: [DONE]`
    body = {"model": NAME, "prompt": ids, "max_tokens": MAX_TOKENS, "temperature": 0, "stream": True}
    with http.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r.iter_lines())
    assert events[-1] == "[DONE]" and "[DONE]" not in events[:-1]
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["text"] for ch in chunks for c in ch["choices"]) == plain.choices[0].text


def test_incremental_detokenization(client, oracle):
    # near-uniform sampling emits byte-level tokens that hold part of a UTF-8 character: the text,
    # streamed or not, is the decode of all the ids, never a character split at a chunk boundary
    ids = greedy_prompts(oracle.tok)[3]
    kw = dict(temperature=5.0, seed=11, max_tokens=64, ignore_eos=True)
    plain = complete(client, ids, **kw)
    got = token_ids(plain.choices[0])
    assert any("\ufffd" in oracle.tok.decode([t]) for t in got), "no partial character: choose another seed"
    assert plain.choices[0].text == oracle.text(got)
    streamed = [c.text for chunk in complete(client, ids, stream=True, **kw) for c in chunk.choices]
    assert "".join(streamed) == plain.choices[0].text


# ------------------------------------------------------------------------------ concurrency and batch invariance
SAMPLED = [  # (settings, seed): every sampling knob, each request with its own
    (dict(temperature=0.8), 1234),
    (dict(temperature=1.0, top_p=0.9), 7),
    (dict(temperature=0.7, top_k=20), 3),
    (dict(temperature=1.3, top_p=0.95, top_k=50), 99),
]


def test_concurrent_mixed_prompts(client, oracle):
    tok = oracle.tok
    prompts = greedy_prompts(tok)
    rows: list[tuple[str, Any, dict]] = [(f"greedy {len(p)}", p, {}) for p in prompts]
    rows.append(("greedy text", TEXT_PROMPT, {}))
    sampled_prompt = prompts[2]
    for i, (kw, seed) in enumerate(SAMPLED):
        rows.append((f"sampled {i}", sampled_prompt, dict(kw, seed=seed, max_tokens=24)))
    rows.append(("sampled, no seed", prompts[1], dict(temperature=1.0, max_tokens=20)))
    assert len(rows) >= 8

    # the seeded rows alone first: the reference for batch invariance
    alone = {name: token_ids(complete(client, p, **dict(kw)).choices[0]) for name, p, kw in rows
             if name.startswith("sampled") and "seed" in kw}

    def send(row):
        name, p, kw = row
        return complete(client, p, **dict(kw))

    with ThreadPoolExecutor(max_workers=len(rows)) as pool:
        results = list(pool.map(send, rows))
    for (name, p, kw), resp in zip(rows, results, strict=True):
        got = token_ids(resp.choices[0])
        assert 1 <= len(got) <= kw.get("max_tokens", MAX_TOKENS), name
        assert all(0 <= t < oracle.vocab for t in got), name
        if name.startswith("greedy"):
            check_greedy(resp, oracle, tok.encode(p) if isinstance(p, str) else p, what=name)
        elif name in alone:
            assert got == alone[name], f"{name}: seeded output changed under concurrent load: {alone[name]} -> {got}"


def test_seeded_sampling_equals_generator(client, oracle):
    ids = greedy_prompts(oracle.tok)[2]
    (kw, seed) = SAMPLED[3]
    r = complete(client, ids, max_tokens=MAX_TOKENS, seed=seed, **kw)
    want = oracle.sampled(ids, MAX_TOKENS, seed, kw["temperature"], kw["top_k"], kw["top_p"])
    assert token_ids(r.choices[0]) == want


# ------------------------------------------------------------------------------ prefix cache
def test_prefix_cache_hit_equals_miss(client, server, oracle):
    tok = oracle.tok
    p = tok.encode(PREFIX_TEXT)
    m0 = scrape(server)
    first = complete(client, p)
    check_greedy(first, oracle, p, what="prefix P (a miss)")
    assert first.usage.prompt_tokens_details.cached_tokens == 0

    p_extra = tok.encode(PREFIX_TEXT + PREFIX_EXTRA)
    assert p_extra[: len(p)] == p
    hit = complete(client, p_extra)
    check_greedy(hit, oracle, p_extra, what="P + extra (a hit)")
    assert hit.usage.prompt_tokens_details.cached_tokens == len(p), hit.usage

    # the next turn of a conversation: P + the first answer + new text starts from the first request's end
    turn = p + token_ids(first.choices[0]) + tok.encode(" Hartree and Fock")
    again = complete(client, turn)
    check_greedy(again, oracle, turn, what="the next turn (a hit)")
    cached = again.usage.prompt_tokens_details.cached_tokens
    assert len(p) <= cached < len(turn), again.usage
    # the same prompt again: whatever it restores, the tokens are the same
    check_greedy(complete(client, p_extra), oracle, p_extra, what="P + extra again")
    # a long prompt is snapshotted at every block (--prefill-chunk) boundary as well: a prompt that
    # shares its first 150 tokens restores the state after the second block
    long = unique_ids(8, 150)
    check_greedy(complete(client, long), oracle, long, what="a 150-token prompt (a miss)")
    branch = long[:150 - 10] + unique_ids(9, 10)
    r = complete(client, branch)
    check_greedy(r, oracle, branch, what="the same first 140 tokens, then others (a block hit)")
    assert r.usage.prompt_tokens_details.cached_tokens == 2 * PREFILL_CHUNK, r.usage

    m1 = scrape(server)
    assert m1.get("mamba2_prefix_cache_hits_total") - m0.get("mamba2_prefix_cache_hits_total") >= 3
    assert m1.get("mamba2_prefix_cache_misses_total") - m0.get("mamba2_prefix_cache_misses_total") >= 1
    assert m1.get("mamba2_prefix_cache_hit_tokens_total") - m0.get("mamba2_prefix_cache_hit_tokens_total") \
        >= len(p) + cached
    assert m1.get("mamba2_prefix_cache_bytes") > 0


# ------------------------------------------------------------------------------ a client that goes away
def test_client_disconnect_frees_slot(server, http, client, oracle):
    wait_until(lambda: scrape(server).get("mamba2_slots_busy") == 0, 30, "slots idle before the test")
    aborted0 = scrape(server).get("mamba2_requests_total", outcome="aborted")
    body = {"model": NAME, "prompt": unique_ids(5, 9), "max_tokens": 30_000, "ignore_eos": True,
            "temperature": 0, "stream": True}
    with http.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200
        lines = r.iter_lines()  # kept open: leaving (closing) this iterator would close the response
        while not next(lines).startswith("data: {"):
            pass
        # the gauge is set once per scheduler iteration: the first token can come before it
        wait_until(lambda: scrape(server).get("mamba2_slots_busy") >= 1, 5, "the stream's slot counted busy")
    # the connection is closed: the slot is free within a few scheduler iterations
    wait_until(lambda: scrape(server).get("mamba2_slots_busy") == 0, 5, "the slot freed after the disconnect")
    wait_until(lambda: scrape(server).get("mamba2_requests_total", outcome="aborted") == aborted0 + 1, 5,
               "requests_total{outcome=aborted} counts the disconnect")
    ids = greedy_prompts(oracle.tok)[4]
    check_greedy(complete(client, ids), oracle, ids, what="after the disconnect")


def test_client_timeout_frees_slot(server, oracle, client):
    # a non-streaming client that gives up (its read timeout) goes away as well: its slot is freed
    import httpx2

    wait_until(lambda: scrape(server).get("mamba2_slots_busy") == 0, 30, "slots idle before the test")
    aborted0 = scrape(server).get("mamba2_requests_total", outcome="aborted")
    body = {"model": NAME, "prompt": unique_ids(6, 9), "max_tokens": 30_000, "ignore_eos": True, "temperature": 0}
    with pytest.raises(httpx2.TimeoutException):
        httpx2.post(server.url("/v1/completions"), json=body, timeout=httpx2.Timeout(60, read=1.0))
    wait_until(lambda: scrape(server).get("mamba2_slots_busy") == 0, 5, "the slot freed after the client left")
    wait_until(lambda: scrape(server).get("mamba2_requests_total", outcome="aborted") == aborted0 + 1, 5,
               "requests_total{outcome=aborted} counts the client that left")
    ids = greedy_prompts(oracle.tok)[0]
    check_greedy(complete(client, ids), oracle, ids, what="after the client left")


# ------------------------------------------------------------------------------ bad input
def _body(**kw) -> dict:
    return {"model": NAME, "prompt": "Hello", "max_tokens": 4, "temperature": 0, **kw}


BAD = [  # (id, path, body (bytes, dict or a callable making bytes), field named by the error)
    ("malformed-json", "/v1/completions", b'{"prompt": "Hello", "max_tokens": ', None),
    ("body-list", "/v1/completions", b'[{"prompt": "Hello"}]', None),
    ("body-number", "/v1/completions", b"5", None),
    ("body-string", "/v1/completions", b'"Hello"', None),
    ("body-null", "/v1/completions", b"null", None),
    ("body-empty", "/v1/completions", b"", None),
    ("not-utf8", "/v1/completions", b'{"prompt": "\xff\xfe"}', None),
    ("max_tokens-str", "/v1/completions", _body(max_tokens="ten"), "max_tokens"),
    ("max_tokens-float", "/v1/completions", _body(max_tokens=3.5), "max_tokens"),
    ("temperature-str", "/v1/completions", _body(temperature="hot"), "temperature"),
    ("prompt-int", "/v1/completions", _body(prompt=5), "prompt"),
    ("prompt-mixed", "/v1/completions", _body(prompt=[1, "a"]), "prompt"),
    ("prompt-missing", "/v1/completions", {"model": NAME, "max_tokens": 4}, "prompt"),
    ("stop-int", "/v1/completions", _body(stop=3), "stop"),
    ("n-0", "/v1/completions", _body(n=0), "n"),
    ("n-str", "/v1/completions", _body(n="x"), "n"),
    ("seed-str", "/v1/completions", _body(seed="abc"), "seed"),
    ("top_k-str", "/v1/completions", _body(top_k="many"), "top_k"),
    ("max_tokens-negative", "/v1/completions", _body(max_tokens=-1), "max_tokens"),
    ("max_tokens-zero", "/v1/completions", _body(max_tokens=0), "max_tokens"),
    ("max_tokens-absurd", "/v1/completions", _body(max_tokens=10**12), "max_tokens"),
    ("max_tokens-nan", "/v1/completions", b'{"prompt": "Hello", "max_tokens": NaN}', None),
    ("prompt-empty-str", "/v1/completions", _body(prompt=""), "prompt"),
    ("prompt-empty-list", "/v1/completions", _body(prompt=[]), "prompt"),
    ("token-negative", "/v1/completions", _body(prompt=[5, -1]), "prompt"),
    ("token-huge", "/v1/completions", _body(prompt=[5, 10**9]), "prompt"),
    ("model-unknown", "/v1/completions", _body(model="no-such-model"), "model"),
    ("top_p-0", "/v1/completions", _body(temperature=1.0, top_p=0), "top_p"),
    ("top_p-2", "/v1/completions", _body(temperature=1.0, top_p=2), "top_p"),
    ("temperature-negative", "/v1/completions", _body(temperature=-1), "temperature"),
    ("temperature-nan", "/v1/completions", b'{"prompt": "Hello", "temperature": NaN}', None),
    ("oversized-20MB", "/v1/completions", lambda: json.dumps(_body(prompt="a " * 10_000_000)).encode(), None),
    ("chat", "/v1/chat/completions", {"model": NAME, "messages": [{"role": "user", "content": "Hello"}]}, None),
]


@pytest.mark.parametrize("case,path,body,field", BAD, ids=[b[0] for b in BAD])
def test_bad_input(http, server, case, path, body, field):
    import httpx2

    data = body() if callable(body) else body if isinstance(body, bytes) else json.dumps(body).encode()
    try:
        r = http.post(path, content=data, headers={"content-type": "application/json"})
    except httpx2.TransportError as e:
        pytest.fail(f"{case}: no HTTP answer ({type(e).__name__}: {e}); server alive: {server.proc.poll() is None}")
    err = assert_error(r, field, case)
    if case == "chat":
        assert r.status_code == 400 and "template" in err["message"].lower(), err
    if case == "oversized-20MB":
        assert r.status_code == 413, (r.status_code, err)
    assert server.proc.poll() is None


def test_good_request_after_bad_inputs(client, oracle):
    ids = greedy_prompts(oracle.tok)[6]
    check_greedy(complete(client, ids), oracle, ids, what="after the bad inputs")


# ------------------------------------------------------------------------------ /metrics
COUNTERS = ("mamba2_requests", "mamba2_prompt_tokens", "mamba2_generation_tokens", "mamba2_prefix_cache_hits",
            "mamba2_prefix_cache_misses", "mamba2_prefix_cache_hit_tokens")
HISTOGRAMS = ("mamba2_time_to_first_token_seconds", "mamba2_inter_token_latency_seconds")
GAUGES = ("mamba2_slots_busy", "mamba2_slots_total", "mamba2_queue_depth", "mamba2_prefix_cache_bytes")


def test_metrics(server, client):
    m0 = scrape(server)
    for name in COUNTERS:
        assert m0.types.get(name) == "counter", (name, m0.types.get(name))
    for name in HISTOGRAMS:
        assert m0.types.get(name) == "histogram", (name, m0.types.get(name))
        assert m0.has(f"{name}_bucket", le="+Inf") and m0.has(f"{name}_count") and m0.has(f"{name}_sum"), name
    for name in GAUGES:
        assert m0.types.get(name) == "gauge" and m0.has(name), (name, m0.types.get(name))
    assert m0.get("mamba2_slots_total") == SLOTS
    assert m0.has("mamba2_requests_total", outcome="ok")

    # known work: prompts that no earlier request shares a prefix with, a fixed number of tokens each
    work = [(unique_ids(100 + i, n), m) for i, (n, m) in enumerate([(5, 3), (9, 5), (13, 7), (17, 4)])]
    for i, (ids, m) in enumerate(work):
        if i == len(work) - 1:  # one of them streamed
            chunks = list(complete(client, ids, max_tokens=m, ignore_eos=True, stream=True,
                                   stream_options={"include_usage": True}))
            assert chunks[-1].usage.completion_tokens == m
        else:
            r = complete(client, ids, max_tokens=m, ignore_eos=True)
            assert r.usage.completion_tokens == m and r.usage.prompt_tokens_details.cached_tokens == 0
    n_req, n_prompt, n_gen = len(work), sum(len(p) for p, _ in work), sum(m for _, m in work)

    def delta(m1: Metrics, name: str, **labels) -> float:
        return m1.get(name, **labels) - m0.get(name, **labels)

    def settled() -> bool:
        return delta(scrape(server), "mamba2_requests_total", outcome="ok") >= n_req

    wait_until(settled, 5, "requests_total{outcome=ok} counts the requests")
    m1 = scrape(server)
    assert delta(m1, "mamba2_requests_total", outcome="ok") == n_req
    assert delta(m1, "mamba2_requests_total", outcome="error") == 0
    assert delta(m1, "mamba2_requests_total", outcome="aborted") == 0
    assert delta(m1, "mamba2_prompt_tokens_total") == n_prompt
    assert delta(m1, "mamba2_generation_tokens_total") == n_gen
    assert delta(m1, "mamba2_time_to_first_token_seconds_count") == n_req
    assert 1 <= delta(m1, "mamba2_inter_token_latency_seconds_count") <= n_gen - n_req
    assert delta(m1, "mamba2_time_to_first_token_seconds_sum") > 0
    assert delta(m1, "mamba2_prefix_cache_misses_total") == n_req
    assert delta(m1, "mamba2_prefix_cache_hits_total") == 0
    assert m1.get("mamba2_slots_busy") == 0 and m1.get("mamba2_queue_depth") == 0
    assert math.isfinite(m1.get("mamba2_prefix_cache_bytes"))


# ------------------------------------------------------------------------------ property-based fuzz
def _bodies():
    """(path, body bytes): raw bytes, any JSON value, and request-like objects whose fields have
    random types.  Fields that size the work (max_tokens, n) are bad or small, so that a body that
    happens to be valid is a short request."""
    from hypothesis import strategies as st

    leaf = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True, allow_infinity=True)
            | st.text(max_size=16))
    anyjson = st.recursive(leaf, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                                       max_size=4), max_leaves=8)
    # no digits in junk strings: a lax parser may read "9999999" as a number, and max_tokens/n are junk too
    words = st.text(alphabet=st.characters(exclude_categories=("Nd",)), max_size=8)
    junk = (st.none() | st.booleans() | words | st.lists(leaf, max_size=3)
            | st.dictionaries(st.text(max_size=4), leaf, max_size=2))
    small_or_bad = (st.integers(-3, 8) | st.sampled_from([10**9, 2**31, 2**63, 10**30, 2.5, 1e300])
                    | st.floats(-10, 8) | st.just(float("nan")) | st.just(float("inf")) | junk)
    prompt = (st.text(max_size=30) | st.lists(st.integers(-5, 50300), max_size=20)
              | st.lists(st.text(max_size=10), max_size=2) | st.lists(st.lists(st.integers(-2, 50300), max_size=5),
                                                                        max_size=2) | anyjson)
    fields = {
        "model": st.sampled_from([NAME, "no-such-model", ""]) | junk,
        "prompt": prompt,
        "max_tokens": small_or_bad,
        "n": st.integers(-2, 3) | st.sampled_from([10**9, 2**63]) | junk,
        "temperature": st.floats(allow_nan=True, allow_infinity=True) | st.integers(-3, 3) | junk,
        "top_p": st.floats(allow_nan=True, allow_infinity=True) | junk,
        "top_k": st.integers(-(2**40), 2**40) | junk,
        "seed": st.integers(-(2**70), 2**70) | junk,
        "stop": st.text(max_size=4) | st.lists(st.text(max_size=4), max_size=5) | junk,
        "stream": st.booleans() | junk,
        "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans() | junk}) | junk,
        "ignore_eos": st.booleans() | junk,
        "echo": st.booleans() | junk,
        "logprobs": st.integers(-2, 6) | junk,
        "best_of": st.integers(-2, 3) | junk,
        "logit_bias": st.dictionaries(st.text(max_size=6), st.floats(-100, 100), max_size=2) | junk,
        "suffix": junk,
        "user": junk,
    }
    unknown_keys = st.text(max_size=6).filter(lambda k: k not in fields)
    request_like = st.builds(lambda extra, known: {**extra, **known},
                             st.dictionaries(unknown_keys, anyjson, max_size=2),
                             st.fixed_dictionaries({}, optional=fields))
    as_json = st.builds(lambda v: json.dumps(v, allow_nan=True).encode(), request_like | anyjson)
    path = st.sampled_from(["/v1/completions"] * 9 + ["/v1/chat/completions"])
    return st.tuples(path, as_json | as_json | as_json | st.binary(max_size=64))


def test_fuzz_malformed_requests(server, http, client, oracle):
    import httpx2
    from hypothesis import HealthCheck, given, settings

    seen = {"n": 0, "status": {}}

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(req=_bodies())
    def one(req):
        path, data = req
        try:
            r = http.post(path, content=data, headers={"content-type": "application/json"}, timeout=60)
        except httpx2.TransportError as e:
            raise AssertionError(f"no HTTP answer to {path} {data[:300]!r}: {type(e).__name__}: {e}; "
                                 f"server alive: {server.proc.poll() is None}") from e
        seen["n"] += 1
        seen["status"][r.status_code] = seen["status"].get(r.status_code, 0) + 1
        assert r.status_code < 500, f"{r.status_code} for {path} {data[:300]!r}: {r.text[:300]}"
        if r.status_code >= 400:
            assert_error(r, None, f"{path} {data[:300]!r}")
        else:
            assert r.status_code == 200, (r.status_code, data[:300])

    t0 = time.monotonic()
    one()
    elapsed = time.monotonic() - t0
    print(f"fuzz: {seen['n']} requests in {elapsed:.1f} s, status counts {sorted(seen['status'].items())}")
    assert seen["n"] >= FUZZ_EXAMPLES
    assert server.proc.poll() is None and http.get("/health").status_code == 200
    ids = greedy_prompts(oracle.tok)[5]
    check_greedy(complete(client, ids), oracle, ids, what="after the fuzz")


# ------------------------------------------------------------------------------ a second server: --api-key, SIGTERM
@pytest.fixture(scope="module")
def keyed_server(server, tmp_path_factory, cache_dir):
    # started after the first one has filled the compilation cache: it compiles nothing
    srv = launch(tmp_path_factory.mktemp("serve-keyed") / "server.log", cache_dir, "--model", str(EMBEDDED),
                 "--api-key", API_KEY, "--served-model-name", "tiny", "--max-queue", str(MAX_QUEUE),
                 "--prefill-chunk", str(PREFILL_CHUNK))
    try:
        wait_ready(srv)
        yield srv
    finally:
        rc = stop(srv)  # the SIGTERM test has usually stopped it already
    assert rc == 0, f"the keyed server's exit code was {rc}:\n{srv.log_tail()}"


def test_api_key(keyed_server, oracle):
    import httpx2
    import openai

    body = {"model": "tiny", "prompt": "Hello", "max_tokens": 2}
    url = keyed_server.url("/v1/completions")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        r = httpx2.post(url, json=body, headers=headers, timeout=60)
        assert r.status_code == 401, (headers, r.status_code, r.text)
        assert_error(r, None, f"api key {headers}")
    bad = openai.OpenAI(base_url=keyed_server.url("/v1"), api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.completions.create(model="tiny", prompt="Hello", max_tokens=2)
    good = openai.OpenAI(base_url=keyed_server.url("/v1"), api_key=API_KEY, max_retries=0, timeout=180)
    assert [m.id for m in good.models.list().data] == ["tiny"]
    ids = greedy_prompts(oracle.tok)[3]
    check_greedy(complete(good, ids, model="tiny"), oracle, ids, what="with the right key")


def test_queue_full_429(keyed_server):
    import httpx2

    def gauge(name: str) -> float:
        return scrape(keyed_server).get(name)

    body = {"model": "tiny", "max_tokens": 30_000, "ignore_eos": True, "temperature": 0, "stream": True}
    with contextlib.ExitStack() as held:
        c = held.enter_context(httpx2.Client(base_url=keyed_server.url(), timeout=60,
                                             headers={"Authorization": f"Bearer {API_KEY}"}))

        def hold_stream(i: int):
            r = held.enter_context(c.stream("POST", "/v1/completions", json={**body, "prompt": unique_ids(300 + i, 5)}))
            assert r.status_code == 200, (i, r.status_code, r.read()[:300])

        # a burst of as many requests as slots on an idle server: free slots, so none is refused
        with ThreadPoolExecutor(SLOTS) as pool:
            list(pool.map(hold_stream, range(SLOTS)))
        wait_until(lambda: gauge("mamba2_slots_busy") == SLOTS, 30, "every slot busy")
        for i in range(MAX_QUEUE):
            hold_stream(SLOTS + i)
        wait_until(lambda: gauge("mamba2_queue_depth") == MAX_QUEUE, 10, "the queue full")
        r = c.post("/v1/completions", json={**body, "stream": False, "prompt": [5], "max_tokens": 2})
        assert r.status_code == 429, (r.status_code, r.text)
        assert int(r.headers["retry-after"]) >= 1
        assert_error(r, None, "queue full")
    # every stream closed: the waiting requests leave the queue and the slots are freed
    wait_until(lambda: gauge("mamba2_slots_busy") == 0 and gauge("mamba2_queue_depth") == 0, 10,
               "slots and queue empty after the clients left")


def test_sigterm_during_stream(keyed_server):
    import httpx2

    n = 600  # long enough to be in flight when SIGTERM comes, short enough on a loaded machine (~10 s)
    body = {"model": "tiny", "prompt": unique_ids(7, 11), "max_tokens": n, "ignore_eos": True, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    events, finished_before_sigterm = [], None
    with httpx2.Client(timeout=180, headers={"Authorization": f"Bearer {API_KEY}"}) as c, \
            c.stream("POST", keyed_server.url("/v1/completions"), json=body) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.strip():
                continue
            events.extend(sse_events([line]))
            if finished_before_sigterm is None:
                finished_before_sigterm = '"finish_reason": "' in line or '"finish_reason":"' in line
                keyed_server.proc.send_signal(signal.SIGTERM)
                time.sleep(0.5)
                # admission has stopped: a new request is refused (the socket is closed, or 503)
                try:
                    r2 = httpx2.post(keyed_server.url("/v1/completions"), timeout=10,
                                     json={**body, "stream": False, "max_tokens": 2},
                                     headers={"Authorization": f"Bearer {API_KEY}"})
                    assert r2.status_code == 503, (r2.status_code, r2.text)
                except httpx2.TransportError:
                    pass
    assert finished_before_sigterm is False, "the stream had finished before SIGTERM: make it longer"
    assert events[-1] == "[DONE]", events[-3:]
    chunks = [json.loads(e) for e in events[:-1]]
    finish = [c["finish_reason"] for ch in chunks for c in ch["choices"] if c.get("finish_reason")]
    assert finish == ["length"]
    usage = [ch["usage"] for ch in chunks if ch.get("usage")]
    assert usage and usage[-1]["completion_tokens"] == n
    try:
        rc = keyed_server.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the server did not exit within 60 s of SIGTERM after its last stream:\n{keyed_server.log_tail()}")
    assert rc == 0, keyed_server.log_tail()
