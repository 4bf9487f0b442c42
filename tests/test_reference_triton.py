"""mamba_ssm_triton on CPU: mamba_ssm v2.2.2's Triton kernels through Triton's interpreter
(reference/triton_cpu.py), checked against the float64 oracle (mamba2_jax/eval/oracle.py); plus the pieces
around it (the torch causal conv, the autotune choice, the parity model options, the comparison
table's reason).

The interpreted runs are in .venv-ref (``make install-ref``; override with MAMBA2_JAX_REF_PYTHON),
each in its own subprocess, on a tiny model (about a minute together on a 2-core CPU).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import REPO, check_golden_prefill, load_parity_module, ref_python, tiny_mlp_state_dict

from mamba2_jax.checkpoint import read_state_dict, write_checkpoint
from mamba2_jax.eval import refproc
from mamba2_jax.eval.golden import read_golden
from mamba2_jax.eval.oracle import OracleModel

TOL = 1e-5
N_NEW = 6


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([ref_python(), *args], cwd=REPO, capture_output=True, text=True, env=env)
    if r.returncode:
        raise AssertionError(f"{' '.join(args)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return r


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """tiny-mlp (gated-MLP side branch, ngroups=2, chunk 16, fp16 stored) with non-trivial norms/D and
    large padded vocabulary rows (250 real of 256), so that greedy on the padded vocabulary would
    pick a padding id."""
    root = tmp_path_factory.mktemp("tritonckpt")
    rng = np.random.default_rng(11)
    cfg, sd = tiny_mlp_state_dict(5, rng, padded_rows_scale=30.0)
    write_checkpoint(cfg, sd, root / "m", dtype="float16")
    prompts = [{"id": f"r{n}", "input_ids": rng.integers(0, cfg.vocab_size, n).tolist()} for n in (3, 37)]
    (root / "prompts.json").write_text(json.dumps({"prompts": prompts}))
    return root


@pytest.mark.integration
def test_interpreted_golden_matches_oracle(ckpt):
    out = ckpt / "g.npz"
    _run("-m", "reference.golden", "--backend", "mamba_ssm_triton", "--model", str(ckpt / "m"),
         "--prompts", str(ckpt / "prompts.json"), "--out", str(out), "--n-new", str(N_NEW), "--threads", "1")
    meta, golden = read_golden(out)
    bm = meta["backend_meta"]
    assert meta["backend"] == "mamba_ssm_triton" and meta["device"] == "cpu (Triton interpreter)"
    assert meta["packages"]["mamba-ssm"] == "2.2.2" and meta["packages"]["triton"]
    assert bm["triton_interpret"] is True and bm["use_mem_eff_path"] is False and bm["cuda_graph_decode"] is False
    assert {"torch.cuda.device", "triton.autotune", "triton.runtime.interpreter._patch_lang_tensor",
            "torch.cuda.Event", "mamba_ssm.modules.mamba2.causal_conv1d_fn"} <= set(bm["shims"])
    assert "_chunk_scan_fwd_kernel" in bm["autotune_configs"]
    t = meta["timing"]
    assert t["prefill_seconds_per_token"] > 0 and t["decode_steps_timed"] == len(golden) * (N_NEW - 1)

    cfg, sd, _ = read_state_dict(ckpt / "m")
    oracle = OracleModel(cfg, sd)
    V = cfg.vocab_size
    padded_would_win = False
    for g in golden:
        last, state = check_golden_prefill(g, oracle, TOL)
        toks = g["greedy_tokens"]
        assert np.all(g["greedy_top_ids"] < V)  # generate(vocab_size=V): the padded rows are never candidates
        step_logits, _, _ = oracle.run(toks[None, :-1], state=state)
        rows = np.concatenate([last[None], step_logits[0]])
        for s, row in enumerate(rows):
            padded_would_win |= bool(row[V:].max() > row[:V].max())
            real = row[:V]
            tie = g["greedy_margin"][s] < 1e-5 * g["greedy_absmax"][s]
            assert toks[s] == np.argmax(real) or tie
            assert abs(real.max() - g["greedy_top_vals"][s][0]) / np.abs(real).max() < TOL
    assert padded_would_win  # the fixture makes the masking matter


@pytest.mark.integration
def test_interpreted_score_matches_oracle(ckpt, tmp_path):
    rng = np.random.default_rng(4)
    ids = rng.integers(0, 250, (3, 20)).astype(np.int32)
    lengths, score_from = np.array([20, 13, 20]), np.array([1, 4, 19])
    np.savez(tmp_path / "w.npz", input_ids=ids, lengths=lengths, score_from=score_from)
    _run("-m", "reference.score", "--backend", "mamba_ssm_triton", "--model", str(ckpt / "m"),
         "--windows", str(tmp_path / "w.npz"), "--out", str(tmp_path / "s.npz"), "--batch", "2")
    z = np.load(tmp_path / "s.npz")
    meta = json.loads(str(z["meta_json"]))
    assert meta["device"] == "cpu (Triton interpreter)" and meta["seconds_per_forward_token"] > 0
    cfg, sd, _ = read_state_dict(ckpt / "m")
    logits, _, _ = OracleModel(cfg, sd).run(ids)
    lp = logits - logits.max(-1, keepdims=True)
    lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
    want = [sum(lp[r, t - 1, ids[r, t]] for t in range(score_from[r], lengths[r])) for r in range(len(ids))]
    np.testing.assert_allclose(z["loglik"], want, rtol=1e-6, atol=1e-5)


# ------------------------------------------------------------------------------ pieces (no interpreter)
def test_causal_conv1d_fn_against_a_loop():
    import torch

    from reference.triton_cpu import causal_conv1d_fn

    g = torch.Generator().manual_seed(0)
    b, d, n, w = 2, 5, 7, 4
    x, wt, bias = torch.randn(b, d, n, generator=g), torch.randn(d, w, generator=g), torch.randn(d, generator=g)
    want = torch.zeros(b, d, n)
    for t in range(n):
        for k in range(w):
            if t - (w - 1) + k >= 0:
                want[..., t] += wt[:, k] * x[..., t - (w - 1) + k]
    want += bias[:, None]
    torch.testing.assert_close(causal_conv1d_fn(x, wt, bias, activation="silu"), torch.nn.functional.silu(want))
    torch.testing.assert_close(causal_conv1d_fn(x, wt, None), want - bias[:, None])
    with pytest.raises(NotImplementedError, match="seq_idx"):
        causal_conv1d_fn(x, wt, bias, seq_idx=torch.zeros(b, n, dtype=torch.int32))


def test_largest_block_config():
    from reference.triton_cpu import largest_block_config

    cfg = lambda **kw: SimpleNamespace(kwargs=kw)
    cs = [cfg(BLOCK_SIZE_M=64, BLOCK_SIZE_N=64), cfg(BLOCK_SIZE_M=128, BLOCK_SIZE_N=64, num=9),
          cfg(BLOCK_SIZE_M=64, BLOCK_SIZE_N=128)]
    assert largest_block_config(cs) is cs[1]  # first of the two largest
    assert largest_block_config([cfg(), cfg()]).kwargs == {}


def test_parity_model_prompts_and_triton_models(tmp_path):
    parity = load_parity_module()
    doc = {"version": "v1", "source": "x", "tokenizer": "t", "sha256": "abc",
           "prompts": [{"id": f"p{i}", "text": "", "input_ids": list(range(10 * (i + 1)))} for i in range(3)]}
    same, path = parity.model_prompts(doc, "some/dir", tmp_path / "prompts_tokens.json")
    assert same is doc and path.name == "prompts_tokens.json"
    sub, path = parity.model_prompts(doc, {"name": "m", "max_prompts": 2, "prompt_tokens": 15}, tmp_path / "x.json")
    assert [len(p["input_ids"]) for p in sub["prompts"]] == [10, 15] and sub["sha256"] != doc["sha256"]
    assert json.loads(path.read_text())["sha256"] == sub["sha256"] and path.name == "prompts_tokens__m.json"
    cfg = {"triton": {"cpu_models": ["m"]}}
    assert refproc.backend_runs(cfg, "mamba_ssm_triton", "m", "cpu")
    assert not refproc.backend_runs(cfg, "mamba_ssm_triton", "big", "cpu")
    assert refproc.backend_runs(cfg, "mamba_ssm_triton", "big", "cuda")
    assert refproc.backend_runs(cfg, "transformers", "big", "cpu")


def test_comparison_reason_for_the_interpreted_triton_reference():
    sys.path.insert(0, str(REPO / "paper"))
    import compare

    interp = {"device": "cpu (Triton interpreter)", "backend_meta": {"triton_interpret": True}}
    assert compare.reference_interpreted(interp) and not compare.reference_interpreted({"device": "cuda"})
    allowed = ["mamba_ssm_triton"]
    assert compare.reference_reason("mamba_ssm_triton", allowed, True) == \
        "the same Triton kernels, interpreted on CPU rather than compiled for a GPU"
    assert compare.reference_reason("mamba_ssm_triton", allowed, False) is None
    assert compare.reference_reason("mamba_ssm_ref_cpu", allowed, False).startswith("reference mamba_ssm_ref_cpu vs")
