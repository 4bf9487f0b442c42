"""The paper's package compiled from shapes only in its own process (experiments/tpu_compile_anchor.py and
experiments/peers_runners/anchor_compile.py), on a tiny config: the runner's protocol, the record it makes
(same shape as results/tpu_compile's, fit and bound by mamba2_jax.compile.fit_and_bound), and the anchor's
decode padding its one token to a chunk.  Skipped, naming `make anchor-install`, when mamba2-jax 1.1.2 is not
installed in the anchor dir (.anchor/ of the checkout, or $MAMBA2_JAX_ANCHOR_DIR)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mamba2_jax.config import Mamba2Config

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "experiments"))

import tpu_compile_anchor as A  # noqa: E402

TINY = Mamba2Config(d_model=64, n_layer=2, vocab_size=512, d_state=16, headdim=16, chunk_size=32, name="tiny")


@pytest.fixture(scope="module")
def anchor() -> Path:
    d = A.anchor_dir()
    if not A.anchor_installed(d):
        pytest.skip(f"mamba2-jax 1.1.2 is not installed in {d}: run `make anchor-install`")
    return d


def test_runner_never_imports_this_project():
    """The runner runs with the anchor's mamba2_jax first on the path: it must not import ours (nor _protocol)."""
    import ast

    for f in (A.RUNNER, A.RUNNER.parent / "_protocol.py"):
        mods = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                mods.add(node.module or "")
            elif isinstance(node, ast.Import):
                mods.update(a.name for a in node.names)
        # `import mamba2_jax as m2` is the anchor's package (first on PYTHONPATH); nothing below it is ours
        assert not {m for m in mods if m.startswith("mamba2_jax.")}, (f, mods)


def test_programs_follow_our_suite():
    suite = A.ours.paper_suite("paper")
    claims = [A.key(p) for p in A.anchor_programs(suite, "claims")]
    assert claims == ["decode", f"prefill-L{suite['headline_length']}"]
    every = [A.key(p) for p in A.anchor_programs(suite, "all")]
    assert every[0] == "decode" and sorted(int(k.split("L")[1]) for k in every[1:]) == suite["prefill_lengths"]


def test_runner_protocol_on_a_tiny_config(anchor):
    r = A.Runner(anchor)
    try:
        setup = r.call("setup", platform="cpu", model_cfg=A.model_cfg(TINY))
        assert setup["module"].startswith(str(anchor)) and setup["versions"]["mamba2-jax"] == "1.1.2"
        assert setup["param_dtypes"] == ["float32"]
        dec = r.call("compile", program="decode", batch=1)
        pre = r.call("compile", program="prefill", batch=1, length=48)
    finally:
        r.close()
    assert r.proc.returncode == 0
    # its decode: one token, padded to a whole chunk (chunk_size - 1 zeros after it) for the chunked SSD
    assert dec["seq_pads"] == [[0, TINY.chunk_size - 1]] and dec["logits_shape"] == [1, 1, TINY.padded_vocab_size]
    # its prefill: full logits; 48 tokens padded to 64 (two chunks of 32), beside the conv's left padding
    assert pre["logits_shape"] == [1, 48, TINY.padded_vocab_size] and [0, 16] in pre["seq_pads"]
    for raw in (dec, pre):
        assert raw["compile_s"] > 0 and raw["cost"]["flops"] > 0 and raw["memory"]["argument_bytes"] > 0
        assert len(raw["load_avg_1m"]) == 2
    # completed on our side, in the shape of results/tpu_compile's records; v6e's profile for the bound
    suite = {"dtype": "float32", "matmul_precision": "default"}
    rec = A.complete(dec, setup, target="cpu", model="tiny", cfg=TINY, suite=suite, anchor=anchor)
    assert rec["anchor"]["pads_to_chunk"] and rec["program"] == "decode" and rec["roofline"] is None
    from mamba2_jax.compile import fit_and_bound

    fb = fit_and_bound(pre["memory"], pre["cost"]["flops"], pre["cost"]["bytes accessed"], 48, "tpu_v6e",
                       "float32", "default")
    assert fb["fits"] and fb["roofline"]["bound_tokens_per_s"] > 0
    assert fb["min_bytes"] == pre["memory"]["argument_bytes"] + pre["memory"]["output_bytes"]


def test_entry_writes_a_compiled_document(anchor, tmp_path):
    cfgdir = tmp_path / "tiny"
    cfgdir.mkdir()
    (cfgdir / "config.json").write_text(json.dumps(TINY.to_state_spaces()))
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, str(REPO / "experiments" / "tpu_compile_anchor.py"), "--models",
                        str(cfgdir / "config.json"), "--target", "cpu", "--phase", "claims", "--programs", "decode",
                        "--out", str(out), "--anchor-dir", str(anchor)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    d = json.loads((out / "tiny.json").read_text())
    assert d["experiment"] == "tpu_compile_anchor" and [x["key"] for x in d["records"]] == ["decode"]
    assert d["config"]["anchor"]["version"] == "1.1.2" and d["provenance"]["compile"]["anchor"] == "mamba2-jax 1.1.2"
    assert d["records"][0]["anchor"]["pads_to_chunk"] is True


def test_missing_anchor_dir_is_a_clear_error(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "experiments" / "tpu_compile_anchor.py"), "--anchor-dir",
                        str(tmp_path / "none")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "make anchor-install" in r.stderr


@pytest.mark.parametrize("target", ["tpu-v6e", "cuda-l40s"])
def test_runner_compiles_for_a_target_without_the_device(anchor, target):
    """The anchor's process gets the target's devices (libtpu's topology / the CUDA plugin's target description)
    from the directories our side passes, without importing this project; the tiny decode pads to a chunk."""
    from mamba2_jax.compile import CompileError

    try:
        targs = A.target_args(target)
    except CompileError as e:
        pytest.skip(f"{e}")
    r = A.Runner(anchor)
    try:
        setup = r.call("setup", **targs, model_cfg=A.model_cfg(TINY))
        raw = r.call("compile", program="decode", batch=1)
    finally:
        r.close()
    rec = A.complete(raw, setup, target=target, model="tiny", cfg=TINY,
                     suite={"dtype": "float32", "matmul_precision": "default"}, anchor=anchor)
    assert rec["device_kind"].startswith("TPU v6" if target == "tpu-v6e" else "NVIDIA L40S")
    assert rec["topology"] == ("v6e:2x2" if target == "tpu-v6e" else "l40s:1x1x1")
    assert rec["fits"] is True and rec["roofline"]["bound_tokens_per_s"] > 0 and rec["flops"] > 0
    assert rec["anchor"]["pads_to_chunk"] and rec["status"].startswith("compiled for ")
