"""bench-peers' llama.cpp peer is llama.cpp's own tools (issue 28): the parsers of llama-bench's JSON and
llama-batched-bench's jsonl / Markdown output on captured real output (tests/fixtures/llama_tools/), the
command lines, and the calibration of the C-API runner against the tools (a gap > 10% is flagged, and
refused with calibration_strict).  Fast: no llama.cpp, no JAX program."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from helpers import REPO

sys.path.insert(0, str(REPO / "experiments"))
sys.path.insert(0, str(REPO / "experiments" / "peers_runners"))

import llama_tools as T  # noqa: E402
import peers  # noqa: E402

FIX = Path(__file__).parent / "fixtures" / "llama_tools"


def test_llama_bench_json_pp():
    rows = T.parse_llama_bench_json((FIX / "llama-bench-pp32.json").read_text())
    assert len(rows) == 1
    r = rows[0]
    assert (r["n_prompt"], r["n_gen"], r["n_threads"]) == (32, 0, 2)
    assert r["samples_ns"] == [711973274, 735992573]
    assert T.bench_seconds(r) == pytest.approx((711973274 + 735992573) / 2e9)
    # the tool's own tokens/s (avg_ts) is the mean over its samples of n_prompt / sample: with one
    # repetition per round (the default) exactly what our seconds give back
    assert sum(32e9 / ns for ns in r["samples_ns"]) / 2 == pytest.approx(r["avg_ts"], rel=1e-5)


def test_llama_bench_json_tg_with_depth():
    r = T.parse_llama_bench_json("log line before the array\n" + (FIX / "llama-bench-tg8-d16.json").read_text())[0]
    assert (r["n_prompt"], r["n_gen"], r["n_depth"]) == (0, 8, 16)
    assert T.bench_seconds(r) == pytest.approx((577120788 + 65215487) / 2e9)


def test_llama_bench_json_errors():
    with pytest.raises(T.ToolError, match="no JSON array"):
        T.parse_llama_bench_json("error: failed to load model\n")
    with pytest.raises(T.ToolError, match="samples_ns"):
        T.parse_llama_bench_json('[{"n_prompt": 1, "n_gen": 0, "n_threads": 2, "avg_ts": 1.0}]')


@pytest.mark.parametrize("name", ["batched-bench-npp16-ntg8-npl4.jsonl", "batched-bench-npp16-ntg8-npl4.md"])
def test_batched_bench_both_formats(name):
    rows = T.parse_batched_bench((FIX / name).read_text())
    assert len(rows) == 1
    r = rows[0]
    assert (r["pp"], r["tg"], r["pl"], r["n_kv"], r["n_threads"]) == (16, 8, 4, 96, 2)
    # S_TG t/s = pl * tg / T_TG (the Markdown table rounds T_TG to 1 ms)
    assert r["pl"] * r["tg"] / r["t_tg"] == pytest.approx(r["speed_tg"], rel=0.01)


def test_batched_bench_captured_values():
    j = T.parse_batched_bench((FIX / "batched-bench-npp16-ntg8-npl4.jsonl").read_text())[0]
    m = T.parse_batched_bench((FIX / "batched-bench-npp16-ntg8-npl4.md").read_text())[0]
    assert (j["t_tg"], j["speed_tg"], j["n_kv_max"]) == (3.068008, 10.430221, 1024)
    assert (m["t_tg"], m["speed_tg"], m["n_kv_max"]) == (0.255, 125.30, 1024)
    with pytest.raises(T.ToolError, match="no result rows"):
        T.parse_batched_bench("main: error: failed to create the llama_context\n")


def test_tool_commands(tmp_path):
    b = tmp_path / "bin"
    pp = T.tool_argv(b, {"tool": "pp", "length": 1024}, "m.gguf", None, 512, 1)
    assert pp == [str(b / "llama-bench"), "-m", "m.gguf", "-p", "1024", "-n", "0", "-r", "1", "-ub", "512",
                  "-o", "json"]
    tg = T.tool_argv(b, {"tool": "tg", "tokens": 64, "context": 128}, "m.gguf", 2, None, 3)
    assert tg == [str(b / "llama-bench"), "-m", "m.gguf", "-p", "0", "-n", "64", "-d", "128", "-r", "3", "-t", "2",
                  "-o", "json"]
    bb = T.tool_argv(b, {"tool": "batched", "batch": 16, "context": 128, "steps": 32}, "m.gguf", None, None, 1)
    assert bb == [str(b / "llama-batched-bench"), "-m", "m.gguf", "-c", str(16 * 160), "-npp", "128", "-ntg", "32",
                  "-npl", "16", "--output-format", "jsonl"]


def test_measure_reads_the_tools_own_timing(tmp_path, monkeypatch):
    """measure(): seconds from the tool's output (not our wall clock), checked against the task's shape."""
    outs = {"pp": (FIX / "llama-bench-pp32.json").read_text(),
            "batched": (FIX / "batched-bench-npp16-ntg8-npl4.jsonl").read_text()}
    monkeypatch.setattr(T, "run_tool", lambda argv, env=None, timeout=None: (outs[argv[-1] == "jsonl" and "batched"
                                                                                  or "pp"], 9.9))
    r = T.measure({"tool": "pp", "length": 32}, ["llama-bench", "-o", "json"])
    assert r["tokens"] == 32 and r["seconds"] == pytest.approx(0.723982923)
    assert r["tool"]["n_threads"] == 2 and r["tool"]["wall_s"] == 9.9
    with pytest.raises(T.ToolError, match="expected"):
        T.measure({"tool": "pp", "length": 1024}, ["llama-bench", "-o", "json"])
    r = T.measure({"tool": "batched", "batch": 4, "context": 16, "steps": 8}, ["x", "jsonl"])
    assert r["tokens"] == 32 and r["seconds"] == pytest.approx(3.068008)
    assert r["tool"]["tool_tokens_per_s"] == pytest.approx(10.430221)
    with pytest.raises(T.ToolError, match="no row pl=16"):
        T.measure({"tool": "batched", "batch": 16, "context": 16, "steps": 8}, ["x", "jsonl"])


def _rows(**tps):
    return {k: {"kind": "decode", "tokens_per_s": v} for k, v in tps.items()}


def test_calibration_flags_gap_over_10_percent():
    tool = _rows(decode=55.0, prefill_last_1024=500.0, batched_b4=100.0)
    capi = _rows(decode=35.0, prefill_last_1024=480.0, prefill_full_1024=300.0)
    capi["decode_f16"] = {"kind": "decode", "tokens_per_s": 1.0, "lower_precision": True}
    cal = peers.calibration(capi, tool, 0.10)
    assert set(cal) == {"decode", "prefill_last_1024"}  # both ran it, fp32 only
    assert cal["decode"]["flag"] and cal["decode"]["capi_over_tool"] == pytest.approx(35 / 55)
    assert cal["decode"]["gap"] == pytest.approx(55 / 35 - 1)
    assert not cal["prefill_last_1024"]["flag"]
    bad = peers.check_calibration(cal, strict=False)
    assert len(bad) == 1 and bad[0].startswith("decode:")
    with pytest.raises(peers.CalibrationError, match="decode"):
        peers.check_calibration(cal, strict=True)


def test_calibration_gap_is_symmetric_and_bounded():
    # 10% either way passes; just over flags, in both directions
    assert not peers.calibration(_rows(decode=110.0), _rows(decode=100.0), 0.10)["decode"]["flag"]
    assert peers.calibration(_rows(decode=111.0), _rows(decode=100.0), 0.10)["decode"]["flag"]
    assert peers.calibration(_rows(decode=100.0), _rows(decode=111.0), 0.10)["decode"]["flag"]
    assert peers.check_calibration(peers.calibration(_rows(decode=105.0), _rows(decode=100.0), 0.10), True) == []


def test_fig9_reads_the_v2_document(tmp_path, capsys):
    """figures/fig9_peers.py on a peers_schema 2 document: llama_cpp labelled as its tools, the C-API runner
    as its own series, the calibration (and its flag) in the caption's notes."""
    import importlib

    from synthetic_results import peers_doc, write_json

    doc = peers_doc()
    doc["records"].append({"peer": "llama_cpp_capi", "metric": "tokens_per_s", "value": 400.0, "unit": "tokens/s",
                           "task": "prefill_full_1024", "kind": "prefill", "variant": "gguf-f32", "length": 1024,
                           "logits": "full", "lower_precision": False, "model": "mamba2-130m",
                           "weights": "random-init", "matmul_precision": "highest"})
    doc["peers_schema"] = peers.PEERS_SCHEMA
    doc["calibration"] = peers.calibration(_rows(decode=35.0), _rows(decode=55.0), 0.10)
    write_json(tmp_path / "results" / "peers" / "cpu_bench-cpu.json", doc)
    fig9 = importlib.import_module("figures.fig9_peers")
    assert fig9.main(["--results", str(tmp_path / "results"), "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "fig9_peers.caption.md").read_text()
    assert "Calibration, llama.cpp C API ÷ its own tools" in text and "decode 0.64 (FLAGGED)" in text
    assert "Not run: llama.cpp C API, gguf-f32 L=1024 last" in text  # its own series, labelled
    assert "wrote" in capsys.readouterr().out
