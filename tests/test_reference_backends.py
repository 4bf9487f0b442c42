"""The reference runners (reference/): golden files and scoring for both CPU backends, checked
against the independent float64 oracle (tests/oracle.py); argument handling of mamba_ssm_triton.

mamba_ssm_ref_cpu runs in .venv-ref (``make install-ref``; override with MAMBA2_JAX_REF_PYTHON),
transformers in this interpreter.  Each backend runs in its own subprocess, as in the experiment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO, check_golden_prefill, ref_python, tiny_mlp_state_dict, tiny_parity_run

from mamba2_jax.checkpoint import read_state_dict, write_checkpoint
from mamba2_jax.eval.golden import read_golden
from mamba2_jax.eval.oracle import OracleModel
from mamba2_jax.eval.oracle import rel_err as rel

TOL = 1e-5


def _python(backend: str) -> str:
    return ref_python() if backend == "mamba_ssm_ref_cpu" else sys.executable


def _run(python: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([python, *args], cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    if check and r.returncode:
        raise AssertionError(f"{' '.join(args)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return r


@pytest.fixture(scope="module")
def mlp_ckpt(tmp_path_factory):
    """tiny-mlp: d_ssm < d_inner (gated-MLP side branch), ngroups=2, small vocabulary, fp16 stored."""
    root = tmp_path_factory.mktemp("refckpt")
    rng = np.random.default_rng(7)
    cfg, sd = tiny_mlp_state_dict(2, rng)
    write_checkpoint(cfg, sd, root / "tiny-mlp", dtype="float16")
    prompts = [{"id": f"r{n}", "input_ids": rng.integers(0, 250, n).tolist()} for n in (3, 16, 45)]
    (root / "prompts.json").write_text(json.dumps({"prompts": prompts}))
    return root


def _oracle_check(model_dir, golden):
    """Golden hidden states / logits / greedy steps vs the float64 sequential oracle."""
    cfg, sd, _ = read_state_dict(model_dir)
    oracle = OracleModel(cfg, sd)
    for g in golden:
        last, state = check_golden_prefill(g, oracle, TOL)
        toks = g["greedy_tokens"]
        def tie(s, g=g):
            return g["greedy_margin"][s] < 1e-5 * g["greedy_absmax"][s]
        assert toks[0] == np.argmax(last) or tie(0)
        # the oracle continues from its own state with the golden's tokens (teacher forcing)
        step_logits, _, _ = oracle.run(toks[None, :-1], state=state)
        for s in range(1, len(toks)):
            row = step_logits[0, s - 1]
            assert abs(row.max() - g["greedy_top_vals"][s][0]) / np.abs(row).max() < TOL
            assert toks[s] == np.argmax(row) or tie(s)


@pytest.mark.integration
def test_ref_cpu_golden_matches_oracle_mlp_branch(mlp_ckpt):
    out = mlp_ckpt / "g.npz"
    _run(ref_python(), "-m", "reference.golden", "--backend", "mamba_ssm_ref_cpu",
         "--model", str(mlp_ckpt / "tiny-mlp"),
         "--prompts", str(mlp_ckpt / "prompts.json"), "--out", str(out), "--n-new", "6")
    meta, golden = read_golden(out)
    assert meta["backend"] == "mamba_ssm_ref_cpu" and meta["packages"]["mamba-ssm"] == "2.2.2"
    assert meta["device"] == "cpu" and meta["dtype"] == "float32" and meta["tf32"]["applicable"] is False
    assert meta["backend_meta"]["stored_dtype"] == "float16"
    assert "chunk_scan_ref" in meta["backend_meta"]["functions"]["ssd_prefill"]
    assert golden[2]["hidden"].shape == (2, 45, 64) and golden[2]["greedy_top_ids"].shape == (6, 8)
    assert json.loads(out.with_suffix(".json").read_text())["prompt_ids"] == ["r3", "r16", "r45"]
    _oracle_check(mlp_ckpt / "tiny-mlp", golden)


@pytest.mark.integration
@pytest.mark.parametrize("backend", ["mamba_ssm_ref_cpu", "transformers"])
def test_golden_matches_oracle_ngroups2(backend):
    """Both CPU references on the tiny ngroups=2 model (GPT-NeoX vocabulary, real prompts).
    For transformers this is the check that its per-group gated norm makes it a valid reference."""
    run = tiny_parity_run()
    meta, golden = read_golden(run["golden"][backend])
    assert meta["backend"] == backend
    if backend == "transformers":
        bm = meta["backend_meta"]
        assert bm["mamba_ssm_blocked_in_process"] and bm["gated_norm_group_size"] == 128 // 2
    _oracle_check(run["model_dir"], golden)


@pytest.mark.integration
def test_cpu_backends_agree():
    run = tiny_parity_run()
    _, a = read_golden(run["golden"]["mamba_ssm_ref_cpu"])
    _, b = read_golden(run["golden"]["transformers"])
    for x, y in zip(a, b):
        assert rel(x["hidden"], y["hidden"]) < TOL and rel(x["logits"], y["logits"]) < TOL
        np.testing.assert_array_equal(x["greedy_tokens"], y["greedy_tokens"])


@pytest.mark.integration
def test_transformers_rejects_mlp_branch(mlp_ckpt, tmp_path):
    r = _run(sys.executable, "-m", "reference.golden", "--backend", "transformers", "--model",
             str(mlp_ckpt / "tiny-mlp"), "--prompts", str(mlp_ckpt / "prompts.json"), "--out", str(tmp_path / "x.npz"),
             check=False)
    assert r.returncode == 2 and "d_ssm" in r.stderr


# ------------------------------------------------------------------------------ scoring
@pytest.fixture(scope="module")
def windows(tmp_path_factory):
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 50277, (4, 40)).astype(np.int32)
    lengths = np.array([40, 33, 2, 25])
    score_from = np.array([1, 5, 1, 25])  # the last window scores nothing
    ids[1, 33:] = 1  # padding
    p = tmp_path_factory.mktemp("win") / "windows.npz"
    np.savez(p, input_ids=ids, lengths=lengths, score_from=score_from)
    return p, ids, lengths, score_from


@pytest.mark.integration
@pytest.mark.parametrize("backend", ["mamba_ssm_ref_cpu", "transformers"])
def test_score_matches_oracle(windows, backend, tmp_path):
    p, ids, lengths, score_from = windows
    out = tmp_path / "s.npz"
    model_dir = tiny_parity_run()["model_dir"]
    _run(_python(backend), "-m", "reference.score", "--backend", backend, "--model", str(model_dir),
         "--windows", str(p), "--out", str(out), "--batch", "3")
    z = np.load(out)
    meta = json.loads(str(z["meta_json"]))
    assert meta["backend"] == backend and meta["logsoftmax_dtype"] == "float64"
    np.testing.assert_array_equal(z["n_scored"], np.maximum(lengths - score_from, 0))
    cfg, sd, _ = read_state_dict(model_dir)
    logits, _, _ = OracleModel(cfg, sd).run(ids)
    lp = logits - logits.max(-1, keepdims=True)
    lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
    want = [sum(lp[r, t - 1, ids[r, t]] for t in range(score_from[r], lengths[r])) for r in range(len(ids))]
    np.testing.assert_allclose(z["loglik"], want, rtol=1e-6, atol=1e-5)


def test_score_rejects_bad_windows(tmp_path, capsys):
    from reference.score import main

    p = tmp_path / "bad.npz"
    np.savez(p, input_ids=np.zeros((2, 8), np.int32), lengths=np.array([8, 8]), score_from=np.array([0, 1]))
    assert main(["--backend", "transformers", "--model", str(tmp_path), "--windows", str(p),
                 "--out", str(tmp_path / "o.npz")]) == 2
    assert "score_from" in capsys.readouterr().err
    assert main(["--backend", "transformers", "--model", str(tmp_path), "--windows", str(tmp_path / "none.npz"),
                 "--out", str(tmp_path / "o.npz")]) == 2


# ------------------------------------------------------------------------------ mamba_ssm_triton arguments
def _args(*extra):
    from reference.golden import add_golden_args, build_parser

    return add_golden_args(build_parser()).parse_args(["--prompts", "p.json", "--out", "o.npz", *extra])


def test_triton_argument_handling(tmp_path):
    import torch

    from reference.common import ReferenceError_
    from reference.golden import validate

    m = str(tmp_path)
    a = validate(_args("--backend", "mamba_ssm_triton", "--model", m))
    # default device: CUDA when there is one, else the Triton interpreter on CPU
    assert a.device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert a.tf32 == "off" and a.cuda_graph == "auto" and a.triton_f32 == "default"
    assert validate(_args("--backend", "mamba_ssm_triton", "--model", m, "--device", "cpu")).device == "cpu"
    a = validate(_args("--backend", "mamba_ssm_triton", "--model", m, "--tf32", "on", "--cuda-graph", "off",
                       "--triton-f32", "ieee", "--device", "cuda:1"))
    assert (a.tf32, a.cuda_graph, a.triton_f32, a.device) == ("on", "off", "ieee", "cuda:1")
    assert validate(_args("--backend", "mamba_ssm_ref_cpu", "--model", m)).device == "cpu"
    for bad, msg in (
        (("--backend", "mamba_ssm_triton", "--model", m, "--device", "cpu", "--tf32", "on"), "need --device cuda"),
        (("--backend", "mamba_ssm_triton", "--model", m, "--device", "cpu", "--cuda-graph", "on"),
         "need --device cuda"),
        (("--backend", "mamba_ssm_ref_cpu", "--model", m, "--device", "cuda"), "must be cpu"),
        (("--backend", "transformers", "--model", m, "--tf32", "on"), "only apply"),
        (("--backend", "mamba_ssm_triton", "--model", m, "--device", "tpu"), "expected cpu or cuda"),
        (("--backend", "mamba_ssm_triton", "--model", m, "--n-new", "0"), "--n-new"),
        (("--backend", "mamba_ssm_triton", "--model", str(tmp_path / "nope")), "not a directory"),
    ):
        with pytest.raises(ReferenceError_, match=msg):
            validate(_args(*bad))
    with pytest.raises(SystemExit):
        _args("--backend", "mamba_ssm_triton", "--model", m, "--tf32", "maybe")


def test_triton_fails_clearly_without_cuda(mlp_ckpt, tmp_path, capsys):
    """Asked for CUDA on a machine without it, both entry points stop before importing mamba_ssm,
    exit 3, no traceback (without --device they run the Triton interpreter on CPU instead)."""
    import torch

    from reference import golden, score

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    m = str(mlp_ckpt / "tiny-mlp")
    assert golden.main(["--backend", "mamba_ssm_triton", "--model", m, "--prompts", str(mlp_ckpt / "prompts.json"),
                        "--out", str(tmp_path / "t.npz"), "--device", "cuda"]) == 3
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err and "requirements-gpu.txt" in err
    np.savez(tmp_path / "w.npz", input_ids=np.zeros((1, 4), np.int32), lengths=np.array([4]), score_from=np.array([1]))
    assert score.main(["--backend", "mamba_ssm_triton", "--model", m, "--windows", str(tmp_path / "w.npz"),
                       "--out", str(tmp_path / "s.npz"), "--device", "cuda"]) == 3
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "t.npz").exists()


def test_block_mamba_ssm(monkeypatch):
    import importlib
    import types

    from reference._compat import _BLOCKED, block_mamba_ssm, mamba_ssm_blocked

    monkeypatch.setitem(sys.modules, "mamba_ssm", types.ModuleType("mamba_ssm"))
    with pytest.raises(RuntimeError, match="must run in a process"):
        block_mamba_ssm()
    for m in _BLOCKED:
        monkeypatch.setitem(sys.modules, m, None)
        monkeypatch.delitem(sys.modules, m)
    block_mamba_ssm()
    assert mamba_ssm_blocked()
    with pytest.raises(ImportError):
        importlib.import_module("mamba_ssm")


def test_prepare_mamba_ssm_import_shims(monkeypatch):
    from reference._compat import prepare_mamba_ssm_import

    monkeypatch.delitem(sys.modules, "selective_scan_cuda", raising=False)
    shims = prepare_mamba_ssm_import()
    import transformers.generation as tg

    assert tg.GreedySearchDecoderOnlyOutput is tg.GenerateDecoderOnlyOutput
    if "selective_scan_cuda" in shims:
        with pytest.raises(RuntimeError, match="stub"):
            sys.modules["selective_scan_cuda"].fwd()
        monkeypatch.delitem(sys.modules, "selective_scan_cuda")


_MAMBA_SSM_CONFIG_DEFAULTS = """
import importlib.util as u, json, pathlib
spec = u.find_spec("mamba_ssm")  # the package is located, not imported (no CUDA extension needed)
path = pathlib.Path(spec.submodule_search_locations[0]) / "models" / "config_mamba.py"
s = u.spec_from_file_location("config_mamba", path)
m = u.module_from_spec(s)
s.loader.exec_module(m)
print(json.dumps({"pad_vocab_size_multiple": m.MambaConfig().pad_vocab_size_multiple}))
"""


@pytest.mark.integration
def test_missing_pad_multiple_is_mamba_ssm_default(tmp_path):
    """A state-spaces config.json without ``pad_vocab_size_multiple`` is read with mamba_ssm's own
    ``MambaConfig`` default (taken from the installed mamba_ssm in .venv-ref)."""
    from mamba2_jax.config import Mamba2Config, get_preset

    want = json.loads(_run(ref_python(), "-c", _MAMBA_SSM_CONFIG_DEFAULTS).stdout)["pad_vocab_size_multiple"]
    d = get_preset("tiny").replace(vocab_size=50277).to_state_spaces()
    del d["pad_vocab_size_multiple"]
    cfg = Mamba2Config.from_dict(d)
    assert cfg.pad_vocab_size_multiple == want
    assert cfg.padded_vocab_size == 50277 + (-50277 % want)
