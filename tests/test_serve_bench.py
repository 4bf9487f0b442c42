"""The serving benchmark (issue 27, section 7; mamba2_jax/eval/serve_bench.py): its pure parts without a
server (trace construction, the streaming client's parsing against a mock transport, statistics, metrics,
ratios and targets, result writing), and a `quick`-profile smoke against our server (integration)."""

import asyncio
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from mamba2_jax.eval import serve_bench as sb
from mamba2_jax.eval.results import REQUIRED_COLUMNS, validate_result, write_results
from mamba2_jax.paths import CONF_DIR

REPO = Path(__file__).resolve().parents[1]
TOKENS = np.arange(10_000, dtype=np.int32) + 2  # every window is distinct: prefixes are easy to check


# ------------------------------------------------------------------------------ trace
def test_trace_concurrency_is_seeded_and_in_range():
    a = sb.trace_concurrency(TOKENS, 20, 128, 512, 128, seed=0, salt=(0, 1, 0))
    b = sb.trace_concurrency(TOKENS, 20, 128, 512, 128, seed=0, salt=(0, 1, 0))
    c = sb.trace_concurrency(TOKENS, 20, 128, 512, 128, seed=0, salt=(0, 1, 1))  # the next round
    assert [s[0].prompt for s in a] == [s[0].prompt for s in b]
    assert [s[0].prompt for s in a] != [s[0].prompt for s in c]
    assert all(len(s) == 1 and 128 <= len(s[0].prompt) <= 512 and s[0].max_tokens == 128 for s in a)
    assert all(isinstance(t, int) for s in a for t in s[0].prompt)
    assert len({s[0].rid for s in a}) == 20
    with pytest.raises(ValueError, match="fewer"):
        sb.trace_concurrency(TOKENS[:100], 1, 200, 200, 4, seed=0)


def test_trace_shared_prefix():
    tr = sb.trace_shared_prefix(TOKENS, 8, 2048, 32, 16, seed=3)
    prompts = [s[0].prompt for s in tr]
    assert all(len(p) == 2080 for p in prompts)
    assert len({tuple(p[:2048]) for p in prompts}) == 1
    assert len({tuple(p[2048:]) for p in prompts}) == 8


def test_trace_multiturn_grows_the_conversation():
    calls = []

    def respond(prompt, n):
        calls.append(len(prompt))
        return [7] * n

    tr = sb.trace_multiturn(TOKENS, 2, 4, 256, 32, 16, seed=1, respond=respond)
    assert [len(s) for s in tr] == [4, 4]
    for sess in tr:
        for k in range(1, 4):
            prev, cur = sess[k - 1], sess[k]
            assert cur.prompt[: len(prev.prompt)] == prev.prompt
            assert cur.prompt[len(prev.prompt): len(prev.prompt) + 16] == [7] * 16
            assert len(cur.prompt) == len(prev.prompt) + 16 + 32
            assert cur.session == prev.session and cur.turn == k
    assert calls == [256, 304, 352] * 2
    # without a responder the replies are WikiText, and the trace is still seeded
    t1 = sb.trace_multiturn(TOKENS, 1, 3, 64, 8, 4, seed=1)
    t2 = sb.trace_multiturn(TOKENS, 1, 3, 64, 8, 4, seed=1)
    assert [r.prompt for r in t1[0]] == [r.prompt for r in t2[0]]
    assert len(t1[0][2].prompt) == 64 + 2 * (4 + 8)


def test_wikitext_tokens(tmp_path):
    class Tok:
        def encode_batch(self, lines):
            return [[len(x)] for x in lines]

    f = tmp_path / "w.raw"
    f.write_text(" = A = \n\n some text\n \n")
    assert sb.wikitext_tokens(f, Tok()).tolist() == [8, 11]
    assert sb.wikitext_tokens(f, Tok(), max_chars=4).tolist() == [4]


def test_build_trace_every_workload():
    conf = _cfg("serve_profile=quick")
    W = conf["serve"]["workloads"]
    for name in ("concurrency", "shared_prefix", "multiturn", "saturation", "soak"):
        for variant, conc in sb._variants(name, W[name]):
            tr = sb.build_trace(name, W[name], TOKENS, 0, (0, 0, 0), conc, respond=lambda p, n: [5] * n)
            assert tr and all(r.max_tokens == W[name]["max_tokens"] for r in sb.flatten(tr)), variant
    assert [v for v, _ in sb._variants("concurrency", W["concurrency"])] == ["c1", "c4"]
    assert len(sb.build_trace("concurrency", W["concurrency"], TOKENS, 0, (0,), 4)) == 2 * 4


# ------------------------------------------------------------------------------ statistics
def _res(rid, ttft, itl, n, ok=True, max_tokens=None, t0=100.0):
    return sb.RequestResult(rid, ok, t0, t_first=t0 + ttft, t_last=t0 + ttft + itl * (n - 1),
                            t_done=t0 + ttft + itl * n,
                            completion_tokens=n, max_tokens=n if max_tokens is None else max_tokens,
                            status=200 if ok else 500, error=None if ok else "HTTP 500: boom")


def test_request_latencies_and_summary():
    r = _res("a", 0.5, 0.02, 11)
    assert r.ttft == pytest.approx(0.5) and r.itl == pytest.approx(0.02)
    assert _res("b", 0.1, 0.0, 1).itl is None  # one token: no inter-token latency
    rs = [_res(str(i), 0.1 * (i + 1), 0.01 * (i + 1), 8) for i in range(10)]
    rs.append(_res("bad", 0, 0, 0, ok=False))
    rs.append(_res("short", 0.1, 0.01, 4, max_tokens=8))
    s = sb.summarize(rs, wall_s=2.0)
    assert s["n_requests"] == 12 and s["errors"] == 1 and s["short"] == 1 and s["failures"] == 2
    assert s["error_kinds"] == {"HTTP 500: boom": 1}
    assert s["completion_tokens"] == 84 and s["output_tok_s"] == pytest.approx(42.0)
    assert s["requests_s"] == pytest.approx(11 / 2.0)
    ttfts = [0.1 * (i + 1) for i in range(10)] + [0.1]
    assert s["ttft_p50_s"] == pytest.approx(np.percentile(ttfts, 50))
    assert s["ttft_p99_s"] == pytest.approx(np.percentile(ttfts, 99))
    assert s["itl_p50_s"] == pytest.approx(np.percentile([0.01 * (i + 1) for i in range(10)] + [0.01], 50))
    assert sb.percentile([], 50) is None and sb.percentile([None, float("nan"), 2.0], 50) == 2.0


def test_median_summary_ratio_and_decode_fraction():
    rounds = [{"output_tok_s": 10.0, "ttft_p50_s": 0.3, "failures": 0, "n_requests": 4},
              {"output_tok_s": 30.0, "ttft_p50_s": None, "failures": 1, "n_requests": 4},
              {"output_tok_s": 20.0, "ttft_p50_s": 0.1, "failures": 0, "n_requests": 4}]
    m = sb.median_summary(rounds)
    assert m["output_tok_s"] == 20.0 and m["ttft_p50_s"] == pytest.approx(0.2)
    assert m["failures"] == 1 and m["n_requests"] == 12 and m["rounds"] == 3 and m["itl_p50_s"] is None
    assert sb.ratio(4.0, 2.0) == 2.0 and sb.ratio(None, 1.0) is None and sb.ratio(1.0, 0) is None
    d = sb.decode_fraction(1e9, 0.1, 2e10)
    assert d["decode_bytes_per_s"] == pytest.approx(1e10) and d["decode_fraction_of_bound"] == pytest.approx(0.5)
    assert sb.decode_fraction(1e9, None, 2e10)["decode_fraction_of_bound"] is None
    assert [sb.decode_rows(c, 64) for c in (1, 3, 4, 16, 33, 64, 100)] == [1, 4, 4, 16, 64, 64, 64]
    assert [sb.decode_rows(c, 48) for c in (20, 33, 48)] == [32, 48, 48]
    assert sb.decode_fraction(1e9, 0.1, float("nan"))["decode_fraction_of_bound"] is None


def test_metrics_parsing_and_occupancy():
    from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

    reg = CollectorRegistry()
    busy = Gauge("mamba2_slots_busy", "busy", registry=reg)
    Gauge("mamba2_slots_total", "total", registry=reg).set(8)
    c = Counter("mamba2_requests", "requests", ["outcome"], registry=reg)
    c.labels("ok").inc(5)
    c.labels("error").inc(2)
    samples = []
    for b in (2, 4, 8):
        busy.set(b)
        samples.append(sb.parse_metrics(generate_latest(reg).decode()))
    assert samples[0]["mamba2_requests_total"] == 7.0  # summed over label sets
    assert sb.occupancy(samples, "mamba2_slots_busy", "mamba2_slots_total") == pytest.approx((2 + 4 + 8) / 3 / 8)
    llama = sb.parse_metrics("# HELP llamacpp:requests_processing n\n# TYPE llamacpp:requests_processing gauge\n"
                             "llamacpp:requests_processing 3\n")
    assert sb.occupancy([llama], "llamacpp:requests_processing", 4.0) == 0.75
    assert sb.occupancy([], "x", 1.0) is None


def test_rss_growth():
    s = [(0.0, 100.0), (1.0, 110.0), (2.0, 120.0), (3.0, 126.0)]
    g = sb.rss_growth(s, t_half=1.5)
    assert g["rss_half"] == 120.0 and g["rss_end"] == 126.0 and g["rss_max"] == 126.0
    assert g["rss_growth_second_half"] == pytest.approx(0.05)
    assert sb.rss_growth([], 1.0)["rss_growth_second_half"] is None


def test_read_rss_and_free_port():
    import os

    assert sb.read_rss(os.getpid()) > 1e6
    assert sb.read_rss(2 ** 30) is None
    p = sb.free_port()
    assert 0 < p < 65536


# ------------------------------------------------------------------------------ the client, on a mock transport
def _sse(chunks):
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


def _mock_client(handler):
    httpx = sb.http_module()

    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


def test_stream_completion_parses_sse():
    httpx = sb.http_module()

    seen = {}

    def handler(request):
        seen.update(json.loads(request.content))
        chunks = [{"choices": [{"index": 0, "text": "", "finish_reason": None}]},  # nothing yet (held back)
                  {"choices": [{"index": 0, "text": "a", "token_ids": [5], "finish_reason": None}]},
                  {"choices": [{"index": 0, "text": "", "token_ids": [6, 7], "finish_reason": None}]},
                  {"choices": [{"index": 0, "text": "b", "finish_reason": "length"}]},
                  {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4,
                                            "prompt_tokens_details": {"cached_tokens": 2}}}]
        return httpx.Response(200, content=_sse(chunks), headers={"content-type": "text/event-stream"})

    async def go():
        async with _mock_client(handler) as c:
            return await sb.stream_completion(c, "http://x", "m", sb.Request([1, 2, 3], 4, "r0"), {"extra": 1})

    r = asyncio.run(go())
    assert r.ok and r.completion_tokens == 4 and r.prompt_tokens == 3 and r.cached_tokens == 2 and r.chunks == 5
    assert r.t_send <= r.t_first <= r.t_last <= r.t_done and r.ttft >= 0 and r.itl is not None
    assert seen == {"prompt": [1, 2, 3], "max_tokens": 4, "temperature": 0, "stream": True, "ignore_eos": True,
                    "stream_options": {"include_usage": True}, "model": "m", "extra": 1}


def test_sse_lines_split_on_newlines_only():
    """llama-server's JSON encoder leaves U+2028 / U+0085 / U+2029 raw inside strings (str.splitlines breaks
    at them); a body arrives in arbitrary pieces."""
    httpx = sb.http_module()
    text = "a\u2028b\x85c\u2029"
    body = _sse([{"choices": [{"text": text}]}, {"choices": [], "usage": {"completion_tokens": 1}}])
    for esc, raw in ((b"\\u2028", "\u2028"), (b"\\u0085", "\x85"), (b"\\u2029", "\u2029")):
        body = body.replace(esc, raw.encode())  # as nlohmann::json writes them: raw UTF-8
    assert "\u2028".encode() in body and "\x85".encode() in body

    class Pieces(httpx.AsyncByteStream):
        async def __aiter__(self):
            for i in range(0, len(body), 7):
                yield body[i: i + 7]

    def handler(request):
        return httpx.Response(200, stream=Pieces())

    async def go():
        async with _mock_client(handler) as c:
            return await sb.stream_completion(c, "http://x", None, sb.Request([1], 1))

    r = asyncio.run(go())
    assert r.ok and r.completion_tokens == 1 and r.chunks == 2, r.error


def test_stream_completion_failures_are_results():
    httpx = sb.http_module()

    def handler(request):
        body = json.loads(request.content)
        if body["max_tokens"] == 1:
            return httpx.Response(429, json={"error": {"message": "queue full"}}, headers={"Retry-After": "1"})
        if body["max_tokens"] == 2:
            return httpx.Response(200, content=b'data: {"choices": [{"text": "a"}]}\n\n')  # no [DONE]
        if body["max_tokens"] == 3:
            return httpx.Response(200, content=b'data: {"error": {"message": "nan"}}\n\n')
        raise httpx.ConnectError("refused")

    async def go():
        async with _mock_client(handler) as c:
            return [await sb.stream_completion(c, "http://x", None, sb.Request([1], n)) for n in (1, 2, 3, 4)]

    rs = asyncio.run(go())
    assert not any(r.ok for r in rs)
    assert rs[0].status == 429 and "queue full" in rs[0].error
    assert "[DONE]" in rs[1].error and "nan" in rs[2].error and "ConnectError" in rs[3].error
    assert sb.summarize(rs, 1.0)["errors"] == 4


def test_run_sessions_keeps_turn_order(monkeypatch):
    httpx = sb.http_module()

    order = []
    real = httpx.AsyncClient

    def handler(request):
        body = json.loads(request.content)
        order.append(tuple(body["prompt"]))
        return httpx.Response(200, content=_sse([{"choices": [{"text": "x"}]},
                                                 {"choices": [], "usage": {"completion_tokens": 1}}]))

    monkeypatch.setattr(httpx, "AsyncClient", lambda **kw: real(transport=httpx.MockTransport(handler), **kw))
    sessions = [[sb.Request([s, t], 1, f"{s}.{t}", s, t) for t in range(3)] for s in range(4)]
    done = []
    results, wall = asyncio.run(sb.run_sessions("http://x", "m", sessions, 2, on_result=done.append))
    assert [r.rid for r in results] == [f"{s}.{t}" for s in range(4) for t in range(3)]
    assert len(done) == 12 and wall > 0 and all(r.ok for r in results)
    for s in range(4):  # within a session, turn t is sent after turn t-1
        idx = [order.index((s, t)) for t in range(3)]
        assert idx == sorted(idx)


# ------------------------------------------------------------------------------ commands, ratios, targets, writing
def test_commands():
    ours = sb.ours_command("/m", 8001, 16, prefix_cache_bytes=0, extra=["--decode-steps", 4], python="py")
    assert ours[:4] == ["py", "-m", "mamba2_jax.cli", "serve"]
    assert ours[ours.index("--slots") + 1] == "16" and ours[ours.index("--prefix-cache-bytes") + 1] == "0"
    assert ours[-2:] == ["--decode-steps", "4"] and ours[ours.index("--host") + 1] == "127.0.0.1"
    assert ours[ours.index("--state-dtype") + 1] == "float32"  # the default: a float32 SSM state
    assert "--prefill-budget" not in ours  # unset: the server's default
    pb = sb.ours_command("/m", 8001, 16, prefill_budget=2048)
    assert pb[pb.index("--prefill-budget") + 1] == "2048"
    bf = sb.ours_command("/m", 8001, 16, state_dtype="bfloat16")
    assert bf[bf.index("--state-dtype") + 1] == "bfloat16" and bf[bf.index("--dtype") + 1] == "float32"
    from mamba2_jax.cli import build_parser  # the command is one `mamba2-jax serve` accepts

    a = build_parser().parse_args(bf[3:])
    assert (a.state_dtype, a.dtype, a.slots) == ("bfloat16", "float32", 16)
    ll = sb.llama_server_command("/b/llama-server", "/m.gguf", 8002, 16, 16 * 1024, 2, alias="m")
    assert ll[ll.index("-np") + 1] == "16" and "-cb" in ll and ll[ll.index("-c") + 1] == str(16 * 1024)
    assert ll[ll.index("-t") + 1] == "2" and ll[ll.index("--host") + 1] == "127.0.0.1"


def _summaries():
    def s(model, variant, system, **kw):
        return {f"{model}/{variant}/{system}": {"model": model, "workload": "w", "variant": variant,
                                                 "system": system, "n_requests": 4, "failures": 0, **kw}}

    out = {}
    out |= s("m", "c1", "ours", output_tok_s=10.0, ttft_p50_s=0.1, itl_p50_s=0.021)
    out |= s("m", "c1", "llama_server", output_tok_s=8.0, ttft_p50_s=0.2, itl_p50_s=0.03)
    out |= s("m", "c1", "generator", output_tok_s=12.0, itl_p50_s=0.02)
    out |= s("m", "c16", "ours", output_tok_s=100.0)
    out |= s("m", "c16", "llama_server", output_tok_s=60.0)
    out |= s("m", "shared_prefix", "ours", ttft_p50_s=0.1)
    out |= s("m", "shared_prefix", "ours_nocache", ttft_p50_s=1.0)
    out |= s("t", "saturation", "ours", n_requests=2000, failures=0)
    out |= s("t", "soak", "ours", n_requests=10000, rss_growth_second_half=0.08)
    return out


def test_ratios_and_targets():
    summ = _summaries()
    r = sb.compute_ratios(summ)
    assert r["m/c1"]["ours_over_llama_server_output_tok_s"] == pytest.approx(1.25)
    assert r["m/c1"]["ours_over_generator_itl_p50_s"] == pytest.approx(1.05)
    assert r["m/shared_prefix"]["cache_off_over_on_ttft_p50"] == pytest.approx(10.0)
    t = sb.compute_targets(summ, r, {})
    got = {k: v["pass"] for k, v in t.items()}
    assert got == {"m c16: output tok/s ours ÷ llama-server": False,
                   "m c1: TTFT p50 ours ÷ llama-server": True,
                   "m c1: ITL p50 ours ÷ Generator decode step": True,
                   "m shared_prefix: TTFT p50 cache off ÷ on": True,
                   "t saturation (2000 requests): failed requests": True,
                   "t soak (10000 requests): RSS growth over the second half": False}


def test_result_document_and_markdown(tmp_path):
    from synthetic_results import hardware

    rs = [_res(str(i), 0.1, 0.01, 8) for i in range(4)]
    rec = {**sb.summarize(rs, 1.0), "model": "m", "workload": "concurrency", "variant": "c4", "system": "ours",
           "round": 0, "concurrency": 4}
    summ = _summaries()
    ratios = sb.compute_ratios(summ)
    targets = sb.compute_targets(summ, ratios, {})
    jp, cp = write_results("serve", "unit", [rec], hardware=hardware(), config={"serve": {}}, label="unit",
                           out_dir=tmp_path, extra={"summary": summ, "ratios": ratios, "targets": targets})
    doc = json.loads(jp.read_text())
    validate_result(doc)
    assert all(c in doc["records"][0] for c in REQUIRED_COLUMNS["serve"])
    assert doc["provenance"]["git"]["sha"] and "dirty" in doc["provenance"]["git"]
    flags = {"ours": {"threads": "all"}, "llama_server": {"threads": 2, "build": {"cmake_flags": ["-DX=ON"]}},
             "generator": {"threads": "all"}}
    md = sb.markdown("unit", summ, ratios, targets, {"llama_server": "not built"}, flags,
                     {"m/ours": {"command": ["py", "-m", "x"], "ready_s": 1.0}}, 12.0)
    assert "| m | c1 | ours | 10 |" in md and "MISS" in md and "PASS" in md and "skipped llama_server" in md
    assert "`py -m x`" in md and "| 8.00% |" in md
    rows = sb.result_rows(rs)
    assert rows[0]["ttft_s"] == pytest.approx(0.1) and json.dumps(rows)


def _cfg(*overrides):
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return OmegaConf.to_container(compose("serve_bench", overrides=list(overrides)), resolve=True)


def test_profiles_compose():
    full, quick = _cfg(), _cfg("serve_profile=quick")
    assert full["profile_name"] == "full" and quick["profile_name"] == "quick"
    F = full["serve"]
    assert F["workloads"]["concurrency"]["levels"] == [1, 4, 16, 64]
    assert 128 == F["workloads"]["concurrency"]["prompt_min"] and F["workloads"]["concurrency"]["max_tokens"] == 128
    assert F["workloads"]["shared_prefix"]["prefix_len"] == 2048 and F["workloads"]["shared_prefix"]["suffix_len"] == 32
    assert F["workloads"]["saturation"]["n_requests"] >= 2000 and F["workloads"]["soak"]["n_requests"] >= 10000
    assert F["models"]["mamba2-130m"]["checkpoint"] is None and F["dtype"] == "float32"
    assert F["state_dtype"] == "float32"  # fp32 SSM state by default; `serve.state_dtype=bfloat16` overrides
    assert _cfg("serve.state_dtype=bfloat16")["serve"]["state_dtype"] == "bfloat16"
    for name in F["model_list"] + quick["serve"]["model_list"]:
        assert name in F["models"]
    assert quick["serve"]["models"]["tiny-wikitext"]["checkpoint"] == "checkpoints/mamba2-tiny-wikitext"


def test_missing_llama_server_is_a_reason(tmp_path):
    binary, why, info = sb.llama_server_status(tmp_path)
    assert binary is None and "make llama-server" in why
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "server-build-failed.txt").write_text("no cmake\n")
    assert "no cmake" in sb.llama_server_status(tmp_path)[1]


# ------------------------------------------------------------------------------ smoke against our server
@pytest.mark.integration
def test_quick_profile_against_ours(tmp_path, monkeypatch):
    if importlib.util.find_spec("mamba2_jax.serve") is None:
        pytest.skip("mamba2_jax.serve does not exist yet (issue 27's server has not landed): nothing to benchmark")
    from hydra import compose as _compose

    from mamba2_jax.paths import data_dir

    if data_dir() is None:
        pytest.skip("no data dir (MAMBA2_JAX_DATA): the trace needs WikiText and the tokenizer")
    # The server (a child process, which inherits this environment) compiles with XLA:CPU's LLVM passes off,
    # as tests/test_sharding.py's workers do: the optimised HLO is the same at every backend level, and
    # nothing here is about the machine code's speed or its last bits -- the quick profile's numbers mean
    # nothing, the plumbing (every workload runs, no failures, token counts, prefix-cache hits) is checked.
    # The server's start-up (compiling its programs) is most of this test's time.
    monkeypatch.setenv("XLA_FLAGS", " ".join(filter(None, [os.environ.get("XLA_FLAGS"),
                                                          "--xla_backend_optimization_level=0"])))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        # ours only, one round, every workload of the quick profile (multi-turn replies from WikiText: no
        # in-process model); the server's start-up (compiling and warming its programs) is most of the time
        cfg = _compose("serve_bench", overrides=[
            "serve_profile=quick", "serve.systems=[ours]", "serve.rounds=1", "serve.workloads.multiturn.replies=text",
            f"out_dir={tmp_path}", f"serve.work_dir={tmp_path / 'work'}", "run=smoke"])
    out = sb.run(cfg)
    doc = json.loads(Path(out["paths"][0]).read_text())
    validate_result(doc)
    recs = doc["records"]
    assert {r["system"] for r in recs} == {"ours"}
    assert {r["variant"] for r in recs} == {"c1", "c4", "shared_prefix", "multiturn", "saturation", "soak"}
    assert all(r["failures"] == 0 and r["errors"] == 0 for r in recs), [r for r in recs if r["failures"]]
    assert all(r["output_tok_s"] > 0 and r["ttft_p50_s"] > 0 and r["itl_p50_s"] > 0 for r in recs)
    assert all(r["completion_tokens"] == r["n_requests"] * r["max_tokens"] for r in recs)
    sp = next(r for r in recs if r["variant"] == "shared_prefix")
    assert sp["prefix_cache_hits_total"] >= 1 and sp["cached_tokens"] >= 512  # the prefix is reused
    assert any(r.get("slot_occupancy") for r in recs)
    assert next(r for r in recs if r["variant"] == "soak")["rss_growth_second_half"] is not None
    assert doc["servers"]["tiny-wikitext/ours"]["exit_code"] is not None  # stopped (SIGTERM), not left running
    assert (tmp_path / "smoke.md").exists() and (tmp_path / "smoke.requests.jsonl").exists()


def test_a_server_killed_mid_run_is_named_not_recorded_as_connect_errors(tmp_path):
    """A peer that the kernel's OOM killer took (SIGKILL) is reported as gone, with its exit code and log,
    so the run skips it instead of recording every later request as a connection error."""
    import signal
    import subprocess
    import sys

    sp = sb.ServerProcess(name="llama_server", cmd=[sys.executable, "-c", "import time; time.sleep(120)"],
                          port=1, log=tmp_path / "peer.log")
    assert sb.server_gone(None) is None and sb.server_gone(sp) is None          # in-process / not started
    sp.proc = subprocess.Popen(sp.cmd)
    assert sb.server_gone(sp) is None                                          # running
    sp.proc.send_signal(signal.SIGKILL)
    sp.proc.wait(timeout=30)
    why = sb.server_gone(sp)
    assert why.startswith("llama_server exited with code -9 (SIGKILL") and str(tmp_path / "peer.log") in why
