"""llama.cpp as a fifth implementation (issue 20): conversion → GGUF → llama.cpp logits and greedy
tokens on the embedded tiny model, checked against the float64 oracle and this project's fp32 path;
the build record; clear errors and skips when llama.cpp is unavailable.

llama.cpp is built by ``make llama-cpp`` (``make test`` builds it first, once, into ``.llama/``);
where it cannot be built the integration tests skip with the recorded reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO

from mamba2_jax.eval.llama_cpp import build_info, unavailable

TINY = REPO / "checkpoints" / "mamba2-tiny-wikitext"
sys.path.insert(0, str(REPO))

# Tolerance for llama.cpp's fp32 logits against the float64 oracle, max|Δ| / max|oracle| per prompt.
# llama.cpp computes in fp32 throughout (f32 GGUF: ggml's f32 matmuls, its sequential ssm_scan, fp32
# norms), so its error is fp32 rounding accumulated over 4 layers and a 50k-wide LM head: the same
# order as our fp32 path and the torch references (parity tolerance 1e-5).  A wrong weight layout,
# a missed A = -exp(A_log), a group-norm or conv mistake gives errors of order 1e-1..1.
LLAMA_TOL = 1e-5


def _need_llama():
    why = unavailable()
    if why:
        pytest.skip(why)


def _run(*args: str) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    if r.returncode:
        raise AssertionError(f"{' '.join(args)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return r


@pytest.mark.integration
def test_build_is_recorded():
    _need_llama()
    info = build_info()
    assert info["llama_cpp_commit"] and len(info["llama_cpp_commit"]) >= 7
    assert "-DGGML_NATIVE=ON" in info["cmake_flags"] and "-DCMAKE_BUILD_TYPE=Release" in info["cmake_flags"]
    assert info["sdist"] == "llama_cpp_python-0.3.36.tar.gz" and len(info["sdist_sha256"]) == 64
    # the features ggml compiled in, from llama_print_system_info of the built library
    assert "CPU :" in info["system_info"] and info["cpu_features"]


@pytest.fixture(scope="module")
def tiny_golden(tmp_path_factory):
    _need_llama()
    root = tmp_path_factory.mktemp("llama")
    rng = np.random.default_rng(3)
    prompts = [{"id": f"r{n}", "input_ids": rng.integers(0, 50277, n).tolist()} for n in (1, 17, 64)]
    (root / "prompts.json").write_text(json.dumps({"prompts": prompts}))
    out = root / "llama.npz"
    _run("-m", "reference.golden", "--backend", "llama_cpp", "--model", str(TINY),
         "--prompts", str(root / "prompts.json"), "--out", str(out), "--n-new", "12")
    from mamba2_jax.eval.golden import read_golden

    return read_golden(out)


@pytest.mark.integration
def test_llama_cpp_logits_match_oracle(tiny_golden):
    """Every prompt position's logits from llama.cpp (GGUF f32 from our `convert --format hf` +
    convert_hf_to_gguf.py) against the float64 oracle on the same checkpoint."""
    from mamba2_jax.checkpoint import read_state_dict
    from mamba2_jax.eval.oracle import OracleModel, rel_err

    meta, golden = tiny_golden
    assert meta["backend"] == "llama_cpp" and meta["backend_meta"]["gguf_type"] == "f32"
    assert meta["backend_meta"]["greedy_vocab"] == "real"
    cfg, sd, _ = read_state_dict(TINY)
    oracle = OracleModel(cfg, sd)
    for g in golden:
        T = len(g["input_ids"])
        assert g["hidden"].shape[0] == 0  # no hidden states from llama.cpp
        assert np.array_equal(g["logits_pos"], np.arange(T))  # every position (T <= 64)
        assert g["logits"].shape[-1] == cfg.padded_vocab_size  # GGUF vocabulary padded with [PAD] tokens
        logits, _, state = oracle.run(g["input_ids"][None])
        assert rel_err(g["logits"], logits[0]) < LLAMA_TOL
        # greedy steps: llama.cpp's recurrent decode continues; the oracle continues with its tokens
        toks = g["greedy_tokens"]
        V = cfg.vocab_size
        assert toks[0] == np.argmax(logits[0, -1, :V])
        step_logits, _, _ = oracle.run(toks[None, :-1], state=state)
        for s in range(1, len(toks)):
            row = step_logits[0, s - 1, :V]
            top = np.sort(row)[::-1]
            assert abs(row.max() - g["greedy_top_vals"][s][0]) / np.abs(row).max() < LLAMA_TOL
            assert toks[s] == np.argmax(row) or top[0] - top[1] < 1e-5 * np.abs(row).max()


@pytest.mark.integration
def test_llama_cpp_matches_our_fp32_and_greedy(tiny_golden):
    """Our fp32 logits at every position, and our greedy tokens (over the real vocabulary), are
    llama.cpp's."""
    from mamba2_jax.eval.oracle import rel_err
    from mamba2_jax.generate import stepwise_greedy
    from mamba2_jax.loading import load_pretrained

    _, golden = tiny_golden
    model = load_pretrained(TINY, dtype="float32")
    for g in golden:
        r = stepwise_greedy(model, g["input_ids"].tolist(), len(g["greedy_tokens"]), mask_padded_vocab=True)
        assert rel_err(g["logits"], r["logits"][g["logits_pos"]]) < 2 * LLAMA_TOL
        assert r["tokens"].tolist() == g["greedy_tokens"].tolist()


def test_conversion_rejects_bad_input(tmp_path, monkeypatch):
    from reference.llama_gguf import ConversionError, convert

    (tmp_path / "empty").mkdir()
    with pytest.raises(ConversionError, match="no config.json"):
        convert(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(ConversionError, match="unknown GGUF outtype"):
        convert(TINY, tmp_path / "out", ["f8"])
    # llama.cpp not built: the reason, not a traceback from inside the converter
    monkeypatch.setenv("MAMBA2_JAX_LLAMA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(ConversionError, match="not built"):
        convert(TINY, tmp_path / "out")
    assert not (tmp_path / "out" / "model-f32.gguf").exists()


def test_unavailable_reasons(tmp_path, monkeypatch):
    monkeypatch.setenv("MAMBA2_JAX_LLAMA_DIR", str(tmp_path))
    assert "not built" in unavailable()
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "build-failed.txt").write_text("no `c++` on PATH: llama.cpp cannot be built here\n")
    assert "no `c++` on PATH" in unavailable()


def test_peers_skip_llama_with_reason(tmp_path, monkeypatch):
    """bench-peers: a llama.cpp that is not built is skipped with the reason; nothing is converted."""
    sys.path.insert(0, str(REPO / "experiments"))
    import peers

    monkeypatch.setenv("MAMBA2_JAX_LLAMA_DIR", str(tmp_path / "nowhere"))
    args, why = peers.prepare_llama({"llama_cpp": {"outtypes": ["f32"]}}, {"state-spaces": TINY}, tmp_path)
    assert args is None and "not built" in why
    assert not (tmp_path / "gguf").exists()
