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
from jax.sharding import PartitionSpec as P

from mamba2_jax.config import get_preset
from mamba2_jax.sharding import MeshError, check_mesh, initialize_distributed, param_spec, parse_mesh

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORKER = HERE / "sharding_worker.py"


# The subprocesses compile ~40 small programs (every mesh × prefill logits, generate prefill and decode,
# scorer) and run each once or twice: LLVM's optimisation of the generated machine code is half of each
# compile, and no check is about it.  What the checks are about, the partitioned program (shardings,
# collectives), is HLO, and the optimised HLO is the same at every backend level (checked: the compiled
# HLO text of the tiny prefill, unsharded and on data=2,model=4 and model=8, is byte-identical at levels
# 0 and 2); level 0 only skips the LLVM passes.
BACKEND_OPT = "--xla_backend_optimization_level=0"


def _env(n_devices: int) -> dict[str, str]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "")
                        + f" --xla_force_host_platform_device_count={n_devices} {BACKEND_OPT}").strip()
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
    assert param_spec(c1, "in_proj.z", 4) == P("model", None)
    assert param_spec(c1, "in_proj.x", 4) == P("model", None)
    assert param_spec(c1, "in_proj.dt", 4) == P("model", None)
    assert param_spec(c1, "in_proj.B", 4) == P(None, None)  # ngroups 1 % 4 != 0: replicated
    assert param_spec(c2, "in_proj.C", 2) == P("model", None)  # ngroups 2 % 2 == 0: split by group
    assert param_spec(c2, "in_proj.C", 4) == P(None, None)
    assert param_spec(c1, "out_proj", 8) == P(None, "model")
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
            assert sp["in_proj.z"] == ["model"] and sp["out_proj"] == [None, "model"], r
            assert sp["A_log"] == ["model"] and sp["embedding"] == ["model"], r
            assert sp["in_proj.B"] == (["model"] if r["ngroups"] % m == 0 else []), r
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
    assert r["cli_tokens_equal"]  # mamba2-jax generate --mesh data=2,model=4


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
    ref = sharding_worker.reference("tiny", logits=False)  # what the processes computed: no prefill logits
    assert sorted(o["process_index"] for o in outs) == [0, 1]
    assert min(len(set(t)) for t in ref["tokens"].tolist()) >= 5
    for o in outs:
        assert o["process_count"] == 2 and o["n_devices"] == 4 and o["n_local"] == 2
        assert o["tokens"] == ref["tokens"].tolist()
        assert abs(o["ppl"] - ref["ppl"]) <= 1e-6 * ref["ppl"]
        np.testing.assert_allclose(o["loglik"], ref["loglik"], rtol=1e-5)


# ------------------------------------------------------------------------------ in-process, one device
def test_throughput_records_its_mesh(tmp_path):
    """The throughput experiment on a (1, 1) mesh: the sharded code path end to end on one device."""
    import importlib.util

    from hydra import compose, initialize_config_dir

    spec = importlib.util.spec_from_file_location("exp_throughput", REPO / "experiments" / "throughput.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    from mamba2_jax.paths import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="throughput", overrides=["profile=tiny", f"out_dir={tmp_path}", "mesh.data=1",
                                                           "mesh.model=1"])
    out = mod.run(cfg)
    doc = json.loads(Path(out["paths"][0]).read_text())
    assert doc["provenance"]["mesh"]["data"] == 1 and doc["provenance"]["mesh"]["n_devices"] == 1
    assert doc["hardware"]["mesh"]["model"] == 1 and "mesh data=1,model=1" in doc["label"]
    assert {r["mesh"] for r in doc["records"]} == {"data=1,model=1"}
    assert all(r["median_s"] > 0 for r in doc["records"])


def test_no_mesh_compiles_the_unsharded_program():
    """mesh=None: no sharding annotation anywhere in the lowered decode step and prefill; a (1, 1)
    mesh gives the same numbers through the sharded code path (split in_proj, constraints)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from mamba2_jax.checkpoint import init_state_dict
    from mamba2_jax.loading import model_from_state_dict
    from mamba2_jax.sharding import make_mesh, put_batch

    cfg = get_preset("tiny")
    sd = init_state_dict(cfg, 0)
    plain, meshed = model_from_state_dict(cfg, sd), model_from_state_dict(cfg, sd, mesh=make_mesh("data=1,model=1"))
    ids = np.arange(2, 2 + 2 * 20, dtype=np.int32).reshape(2, 20)

    def lowered(model, x):
        g, s = nnx.split(model)
        return jax.jit(lambda s, x: nnx.merge(g, s).prefill(x)).lower(s, x), s

    (lo_plain, s_plain), x_plain = lowered(plain, jnp.asarray(ids)), jnp.asarray(ids)
    (lo_meshed, s_meshed), x_meshed = lowered(meshed, put_batch(ids, meshed.mesh)), put_batch(ids, meshed.mesh)
    text = lo_plain.as_text()
    assert "sharding" not in text and "in_proj_parts" not in str(nnx.graphdef(plain))
    assert "sharding" in lo_meshed.as_text()
    # the numbers of these very programs
    a, _ = lo_plain.compile()(s_plain, x_plain)
    b, _ = lo_meshed.compile()(s_meshed, x_meshed)
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(a))))


def test_memory_experiment_counts_match_the_config():
    """experiments/sharding_memory.py on one device: parameter and cache bytes of the compiled decode
    step equal the counts from the config (parameters: num_params × 4 bytes; cache: the state shapes)."""
    import importlib.util

    from omegaconf import OmegaConf

    spec = importlib.util.spec_from_file_location("exp_sharding_memory", REPO / "experiments" / "sharding_memory.py")
    mod = importlib.util.module_from_spec(spec)
    flags = os.environ.get("XLA_FLAGS")
    spec.loader.exec_module(mod)
    # importing it leaves the environment alone (it once added an 8-device count there, which every
    # later subprocess of this process inherited)
    assert os.environ.get("XLA_FLAGS") == flags
    cfg = OmegaConf.create({"models": ["tiny"], "meshes": ["data=1,model=1"], "batches": [3], "dtype": "float32",
                            "matmul_precision": None, "paths": {"data_dir": None}})
    (r,) = mod.run(cfg)
    c = get_preset("tiny")
    assert r["params_bytes_per_device"] == r["params_bytes_total"] == c.num_params() * 4
    state = c.n_layer * 3 * ((c.d_conv - 1) * c.conv_dim + c.nheads * c.headdim * c.d_state) * 4 + 3 * 4
    assert r["cache_bytes_per_device"] == state
    assert r["arguments_match_shard_shapes"] is True
    assert r["compiled_memory"]["argument_size_in_bytes"] == state + c.num_params() * 4 + 3 * 4
