"""Sharded inference (mamba2_jax/sharding.py) gives the single-device results.

The mesh checks run in subprocesses: JAX must see 8 simulated CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=8), and this pytest process already started JAX
with one.  The multi-process check starts 2 processes on localhost (gloo collectives) and compares
them with a one-process run done here.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mamba2_jax.config import get_preset
from mamba2_jax.sharding import MeshError, check_mesh, initialize_distributed, param_spec, parse_mesh

from jax.sharding import PartitionSpec as P

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORKER = HERE / "sharding_worker.py"


def _env(n_devices: int) -> dict[str, str]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={n_devices}").strip()
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["JAX_PLATFORMS"] = "cpu"
    for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(k, None)
    return env


def _result(stdout: str) -> dict:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, f"worker printed no RESULT line:\n{stdout[-3000:]}"
    return json.loads(lines[-1][len("RESULT "):])


# ------------------------------------------------------------------------------ in-process (fast)
@pytest.mark.parametrize("spec,want", [
    ("data=2,model=4", {"data": 2, "model": 4}),
    ("model=8", {"data": 1, "model": 8}),
    (" model = 2 , data = 4 ", {"data": 4, "model": 2}),
    ({"data": 2, "model": None}, {"data": 2, "model": 1}),
    ((4, 2), {"data": 4, "model": 2}),
    (None, None), ("", None), ({"data": None, "model": None}, None),
])
def test_parse_mesh(spec, want):
    assert parse_mesh(spec) == want


@pytest.mark.parametrize("spec,msg", [
    ("data=2;model=4", "expected 'data=D,model=M'"), ("tensor=2", "unknown axis"), ("data=0", "positive"),
    ("data=2,data=2", "twice"), ({"pipe": 2}, "unknown axes"), ("data=x", "expected"),
])
def test_parse_mesh_rejects(spec, msg):
    with pytest.raises(MeshError, match=msg):
        parse_mesh(spec)


def test_param_rules_by_name():
    c1, c2 = get_preset("tiny"), get_preset("tiny-g2")  # 8 heads; ngroups 1 and 2
    assert param_spec(c1, "in_proj.z", 4) == P(None, "model")
    assert param_spec(c1, "in_proj.x", 4) == P(None, "model")
    assert param_spec(c1, "in_proj.dt", 4) == P(None, "model")
    assert param_spec(c1, "in_proj.B", 4) == P(None, None)  # ngroups 1 % 4 != 0: replicated
    assert param_spec(c2, "in_proj.C", 2) == P(None, "model")  # ngroups 2 % 2 == 0: split by group
    assert param_spec(c2, "in_proj.C", 4) == P(None, None)
    assert param_spec(c1, "out_proj", 8) == P("model", None)
    for k in ("A_log", "D", "dt_bias", "mixer_norm"):
        assert param_spec(c1, k, 8) == P("model")
    assert param_spec(c1, "embedding", 8) == P("model", None)  # 256 padded vocab rows
    assert param_spec(c1, "conv_w", 8) == P() and param_spec(c1, "norm_f", 8) == P()
    assert param_spec(c1, "in_proj.z", 1) == P()


def test_heads_must_divide_model_axis():
    cfg = get_preset("tiny")  # nheads = 8
    check_mesh(cfg, "model=4")
    with pytest.raises(MeshError, match="nheads=8 is not divisible by the mesh's model axis \\(3\\)"):
        check_mesh(cfg, "data=2,model=3")


def test_no_distributed_without_coordinator(monkeypatch):
    for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(k, raising=False)
    assert initialize_distributed() is False
    with pytest.raises(MeshError, match="process id"):
        initialize_distributed("127.0.0.1:1", 2, None)


def test_cli_mesh_too_big_is_a_clear_error(capsys):
    from mamba2_jax.cli import main

    assert main(["generate", "--prompt-ids", "1,2", "--no-decode", "--mesh", "data=2,model=4"]) == 2
    err = capsys.readouterr().err
    assert "needs 8 devices" in err and "xla_force_host_platform_device_count" in err


# ------------------------------------------------------------------------------ 8 simulated devices
@pytest.fixture(scope="module")
def meshes():
    r = subprocess.run([sys.executable, str(WORKER), "meshes"], cwd=REPO, env=_env(8), capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-5000:]
    return _result(r.stdout)


@pytest.mark.integration
def test_meshes_match_single_device(meshes):
    runs = meshes["runs"]
    assert {(r["ngroups"], tuple(r["mesh"])) for r in runs} >= {(1, (8, 1)), (1, (1, 8)), (1, (2, 4)), (1, (4, 2)),
                                                                 (2, (1, 8)), (2, (2, 4)), (2, (4, 2))}
    for r in runs:
        tag = f"{r['preset']} mesh={r['mesh']}"
        assert r["logits_rel"] <= 1e-5, tag
        assert r["tokens_equal"], tag
        assert r["ppl_rel"] <= 1e-6, tag
        assert r["loglik_rel"] <= 1e-5, tag
        assert 10 < r["ppl_ref"] < 1e4, tag  # a sane perplexity (plain random weights), not a degenerate one
        assert min(r["distinct_tokens_per_row"]) >= 5, tag  # greedy output is not a degenerate repetition


@pytest.mark.integration
def test_parameters_and_cache_are_sharded(meshes):
    for r in meshes["runs"]:
        d, m = r["mesh"]
        sp, c = r["specs"], r["cache_specs"]
        if m > 1:
            assert sp["in_proj.z"] == [None, "model"] and sp["out_proj"] == ["model"], r
            assert sp["A_log"] == ["model"] and sp["embedding"] == ["model"], r
            assert sp["in_proj.B"] == ([None, "model"] if r["ngroups"] % m == 0 else []), r
        else:
            assert all(v == [] for v in sp.values()), r  # pure data parallel: parameters replicated
        dax = "data" if d > 1 else None
        assert c["ssm"] == ([dax, "model"] if m > 1 else ([dax] if d > 1 else [])), r
        assert c["conv"] == c["seqlen"] == ([dax] if d > 1 else []), r


@pytest.mark.integration
def test_mesh_extras(meshes):
    (r,) = [r for r in meshes["runs"] if r["ngroups"] == 1 and tuple(r["mesh"]) == (2, 4)]
    assert r["state_dict_roundtrip"]  # save_pretrained of a sharded model writes the fused checkpoint
    assert r["generator_mesh_tokens_equal"]  # Generator(model, mesh=...) shards a single-device model
    assert r["stream_equal"]


@pytest.mark.integration
def test_bad_meshes_give_clear_errors(meshes):
    e = meshes["errors"]
    assert e["heads"].startswith("MeshError") and "nheads=8 is not divisible" in e["heads"]
    assert e["too_big"].startswith("MeshError") and "needs 16 devices" in e["too_big"]
    assert e["batch"].startswith("MeshError") and "batch 3 does not divide" in e["batch"]


# ------------------------------------------------------------------------------ 2 processes
@pytest.mark.integration
def test_two_processes_match_one_process():
    sys.path.insert(0, str(HERE))
    import sharding_worker

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, str(WORKER), "multihost", "--num-processes", "2", "--coordinator", f"127.0.0.1:{port}",
           "--mesh", "data=2,model=2"]
    procs = [subprocess.Popen(cmd + ["--process-id", str(i)], cwd=REPO, env=_env(2), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=600)
            assert p.returncode == 0, err[-5000:]
            outs.append(_result(out))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    ref = sharding_worker.reference("tiny")
    assert sorted(o["process_index"] for o in outs) == [0, 1]
    assert min(len(set(t)) for t in ref["tokens"].tolist()) >= 5
    for o in outs:
        assert o["process_count"] == 2 and o["n_devices"] == 4 and o["n_local"] == 2
        assert o["tokens"] == ref["tokens"].tolist()
        assert abs(o["ppl"] - ref["ppl"]) <= 1e-6 * ref["ppl"]
        np.testing.assert_allclose(o["loglik"], ref["loglik"], rtol=1e-5)
