"""Every benchmark experiment runs at tiny scale on CPU and writes schema-valid results; the
paper (TPU) configuration refuses to run on CPU unless forced."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _compile_cache import compilation_cache
from hydra import compose, initialize_config_dir

from mamba2_jax.config import get_preset
from mamba2_jax.eval import bench
from mamba2_jax.eval.results import REQUIRED_COLUMNS, validate_result
from mamba2_jax.paths import CONF_DIR

REPO = Path(__file__).resolve().parents[1]
CONF = CONF_DIR


@pytest.fixture(scope="module", autouse=True)
def _module_compilation_cache(tmp_path_factory):
    """The experiments of this module compile many identical programs (the tiny model's prefill at
    lengths 16 and 40, its 4-token decode loop, ...), each in its own ``jax.jit`` (an experiment
    clears JAX's caches after each model): compiled once, then loaded (the peers runner subprocess
    reads the cache too)."""
    with compilation_cache(tmp_path_factory.mktemp("jax-cache")):
        yield


def load_experiment(name):
    spec = importlib.util.spec_from_file_location(f"exp_{name}", REPO / "experiments" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def cfg_for(name, *overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=name, overrides=["profile=tiny", *overrides])


def check_files(paths, experiment):
    jp, cp = paths
    doc = json.loads(Path(jp).read_text())
    validate_result(doc)
    assert doc["experiment"] == experiment
    assert doc["provenance"]["git"]["sha"]
    assert doc["hardware"]["profile"]["name"] == "cpu" and doc["hardware"]["matches_device"]
    assert "synthetic" in doc["label"] or "random" in doc["label"]
    df = pd.read_csv(cp)
    assert len(df) == len(doc["records"]) and {"run", "device"} <= set(df.columns)
    for col in REQUIRED_COLUMNS[experiment]:
        assert col in df.columns
    return doc, df


def test_throughput_tiny(tmp_path):
    out = load_experiment("throughput").run(cfg_for("throughput", f"out_dir={tmp_path}"))
    doc, df = check_files(out["paths"], "throughput")
    assert out["run"] == "tiny-cpu"
    pre = df[df.kind == "prefill"]
    assert sorted(pre.length) == [40]
    assert (pre.tokens_per_s > 0).all() and (pre.mfu > 0).all() and (pre.compile_s > 0).all()
    dec = df[df.kind == "decode"].iloc[0]
    assert dec.ms_per_token > 0 and 0 < dec.hbu and dec.bytes_per_step == 331_456


def test_sweep_tiny(tmp_path):
    out = load_experiment("sweep").run(cfg_for("sweep", f"out_dir={tmp_path}"))
    doc, df = check_files(out["paths"], "sweep")
    assert sorted(df[df.kind == "decode"].context) == [16, 40]
    assert sorted(df[df.kind == "prefill"].context) == [16, 40]
    assert all(len(r["times_s"]) == 2 for r in doc["records"])


def test_cache_speedup_tiny(tmp_path):
    out = load_experiment("cache_speedup").run(cfg_for("cache_speedup", f"out_dir={tmp_path}"))
    doc, df = check_files(out["paths"], "cache_speedup")
    assert df.headline.sum() == 1 and (df.speedup > 0).all()


def test_bench_tiny(tmp_path):
    out = load_experiment("bench").run(cfg_for("bench", f"out_dir={tmp_path}", "bench.rounds=2"))
    doc, df = check_files(out["paths"], "bench")
    metrics = set(df.metric)
    for m in ("prefill_tokens_per_s", "decode_ms_per_token", "bandwidth_fraction", "context_ratio",
              "cached_over_recompute", "bfloat16_over_float32_decode_speed", "stream_bandwidth"):
        assert m in metrics, m
    assert set(doc["targets"]) == {"decode_tokens_per_s", "bandwidth_fraction", "context_ratio", "bf16_over_fp32",
                                   "cached_over_recompute", "prefill_matmul_fraction", "prefill_length_ratio",
                                   "bf16_weights_and_state_over_fp32_batched"}
    recs = doc["records"]
    from mamba2_jax.config import get_preset
    from mamba2_jax.eval.flops import decode_bytes

    for dt in ("float32", "bfloat16"):  # both dtypes, alternated in the same rounds
        curve = {r["batch"]: r for r in recs if r["metric"] == "decode_batch_tokens_per_s" and r["dtype"] == dt}
        assert sorted(curve) == [1, 3], dt
        for b, r in curve.items():  # the bound counts the weights once and every row's state
            assert r["bytes_per_step"] == decode_bytes(get_preset("tiny"), b, dt)["total"]
            assert abs(r["bandwidth_fraction"] - r["value"] / r["bound_tokens_per_s"]) < 1e-9 * r["bandwidth_fraction"]
    # bf16 weights with the SSM state stored in bf16: a model of its own in the same rounds, its bound
    # counting 2-byte state elements
    both = {r["batch"]: r for r in recs
            if r["metric"] == "decode_batch_tokens_per_s" and r["dtype"] == "bfloat16/bfloat16"}
    assert sorted(both) == [1, 3] and all(r["state_dtype"] == "bfloat16" for r in both.values())
    for b, r in both.items():
        assert r["bytes_per_step"] == decode_bytes(get_preset("tiny"), b, "bfloat16", "bfloat16")["total"]
        assert r["bytes_per_step"] < decode_bytes(get_preset("tiny"), b, "bfloat16")["total"]
    assert doc["targets"]["bf16_weights_and_state_over_fp32_batched"]["target"] == ">= 1.6 at batch 3"
    ratios = {r["batch"]: r for r in recs if r["metric"] == "decode_batch_speed_ratio" and r["dtype"] == "bfloat16"}
    assert sorted(ratios) == [1, 3] and all(r["state_dtype"] == "float32" for r in ratios.values())
    fp, bf = ({r["batch"]: r for r in recs if r["metric"] == "decode_batch_tokens_per_s" and r["dtype"] == d}
              for d in ("float32", "bfloat16"))
    for b, r in ratios.items():  # ratio of the medians of the same rounds = ratio of the tokens/s
        assert abs(r["value"] - bf[b]["value"] / fp[b]["value"]) < 1e-9 * r["value"]
    lengths = {r["length"]: r for r in recs if r["metric"] == "prefill_us_per_token"}
    assert sorted(lengths) == [32, 64, 128] and lengths[32]["ratio_to_shortest"] == 1.0
    assert lengths[128]["prefill_block"] == 64 and lengths[64]["prefill_block"] is None
    assert {r["length"] for r in recs if r["metric"] == "prefill_matmul_fraction"} == {40}


@pytest.mark.parametrize("name", ["decode_formulations", "decode_split"])
def test_decode_probes_tiny(tmp_path, name):
    """The two batch-1 decode probes (argparse entry points, not Hydra) run end to end on the tiny model
    against today's model code (their patched formulations must follow the step's signature) and
    write a valid result."""
    out = load_experiment(name).main(["--model", "tiny", "--rounds", "1", "--tokens", "2",
                                      "--stream-bytes", str(1 << 22), "--out-dir", str(tmp_path),
                                      "--gemv-reps", "1"])
    jp, cp = out["paths"]
    doc = json.loads(Path(jp).read_text())
    validate_result(doc)
    assert doc["experiment"] == name and doc["provenance"]["git"]["sha"]
    assert len(pd.read_csv(cp)) == len(doc["records"]) >= 3
    assert all(r["model"] == "tiny" for r in doc["records"] if "model" in r)
    if name == "decode_split":   # the projections over b rows: FLOPs from the checkpoint's own tensors
        from mamba2_jax.checkpoint import init_state_dict

        sd = init_state_dict(get_preset("tiny"), 0)
        per_row = 2 * sum(int(np.prod(sd[k].shape)) for k in ("backbone.layers.0.mixer.in_proj.weight",
                                                                "backbone.layers.0.mixer.out_proj.weight",
                                                                "backbone.embedding.weight"))
        proj = {r["batch"]: r for r in doc["records"] if r["metric"] == "projection_flops_per_s"}
        (rate,) = [r["value"] for r in doc["records"] if r["metric"] == "matmul_flops_per_s"]
        assert sorted(proj) == [1, 4, 16, 64]
        for b, r in proj.items():
            assert r["flops"] == b * per_row
            assert r["value"] == pytest.approx(r["flops"] / r["median_s"])
            assert r["fraction_of_dense_matmul"] == pytest.approx(r["value"] / rate)


def test_peers_tiny_ours(tmp_path):
    """The peers experiment with this project alone (no anchor needed): it runs and writes its results."""
    out = load_experiment("peers").run(cfg_for(
        "peers", f"out_dir={tmp_path}", f"peers.work_dir={tmp_path / 'work'}", "peers.list=[ours]", "peers.rounds=1"))
    doc, df = check_files(out["paths"], "peers")
    assert set(df.peer) >= {"ours"} and not out["skipped"]


def test_peers_tiny(tmp_path):
    """This project against mamba2-jax 1.1.2 (the anchor) on the same weights and ids."""
    anchor = REPO / ".anchor" / "mamba2_jax" / "__init__.py"
    if not anchor.exists():
        pytest.skip(f"mamba2-jax 1.1.2 (the anchor) is not installed at {anchor.parent.parent}: `make anchor-install`")
    peers = ["ours", "mamba2_jax_1_1_2"]
    out = load_experiment("peers").run(cfg_for(
        "peers", f"out_dir={tmp_path}", f"peers.work_dir={tmp_path / 'work'}", f"peers.list=[{','.join(peers)}]",
        "peers.rounds=1"))
    doc, df = check_files(out["paths"], "peers")
    assert set(df.peer) >= set(peers)
    assert not out["skipped"]
    for name in peers:  # same weights, same ids: the same logits and greedy tokens
        f = out["fidelity"][name]
        assert f["max_abs_logit_diff_vs_ours"] < 1e-4 and f["check_tokens_equal"]
    assert "decode_vs_mamba2_jax_1_1_2" in out["targets"]
    # every task timed once per round: prefill in both modes, decode through the Generator loop
    ours = out["tasks"]["ours"]
    assert {"prefill_full_40", "prefill_last_40", "decode", "decode_stepwise", "recompute"} <= set(ours)
    assert ours["prefill_full_40"]["logits"] == "full" and ours["prefill_last_40"]["logits"] == "last"
    assert all(len(r["times_s"]) == 1 for r in ours.values())
    # the invocation is recorded (issue 22 item 3)
    assert doc["provenance"]["command_line"]["argv"]


@pytest.mark.integration
def test_paper_profile_refuses_on_cpu(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    r = subprocess.run([sys.executable, str(REPO / "experiments" / "throughput.py"), "profile=paper",
                        "hardware=tpu_v6e", f"out_dir={tmp_path}"], capture_output=True, text=True, env=env,
                       cwd=REPO, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "REFUSING" in r.stderr and "force=true" in r.stderr and "make reproduce-tpu" in r.stderr
    assert not list(tmp_path.iterdir())


def test_forced_run_is_labelled_with_the_actual_device(tmp_path):
    cfg = cfg_for("cache_speedup", f"out_dir={tmp_path}", "hardware=tpu_v6e", "require_platform=tpu", "force=true")
    ctx = bench.setup_run(cfg, "cache_speedup")
    assert ctx["run"] == "tiny-tpu_v6e-on-cpu"
    assert "NOT the device" in ctx["label"] and ctx["hardware"]["forced"]
    cfg = cfg_for("cache_speedup", "hardware=tpu_v6e", "require_platform=tpu")
    with pytest.raises(SystemExit):
        bench.setup_run(cfg, "cache_speedup")


@pytest.mark.integration
def test_make_reproduce_tpu_measures_on_tpu_and_compiles_elsewhere():
    """No FORCE flag: on a TPU the paper's three experiments run (then the compiled suite); elsewhere
    only the compiled suite (experiments/tpu_compile.py), after installing libtpu."""
    dry = subprocess.run(["make", "-n", "reproduce-tpu"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    out = dry.stdout
    assert "force=true" not in out and "FORCE" not in out
    for exp in ("throughput", "sweep", "cache_speedup"):
        assert f"experiments/{exp}.py profile=paper hardware=tpu_v6e" in out
    assert out.count("experiments/tpu_compile.py") == 2 and "not run" in out


def test_compiled_suite_is_the_paper_profile():
    """experiments/tpu_compile.py compiles what profile=paper measures (paper.yaml: five scales, float32
    with matmul precision default, batch 1, prefills of 4096 (throughput), the sweep's 128..16384 and
    cache_speedup's 512..16384 contexts, decode loops of 128 tokens), the claims' programs first."""
    sys.path.insert(0, str(REPO / "experiments"))
    try:
        import tpu_compile
    finally:
        sys.path.pop(0)
    s = tpu_compile.paper_suite("paper")
    assert s["models"] == ["mamba2-130m", "mamba2-370m", "mamba2-780m", "mamba2-1.3b", "mamba2-2.7b"]
    assert (s["dtype"], s["matmul_precision"], s["batch"]) == ("float32", "default", 1)
    assert s["prefill_lengths"] == [128, 256, 512, 1024, 2048, 4096, 8192, 16384]
    assert s["decode_tokens"] == [128]
    keys = [tpu_compile.key(p) for p in tpu_compile.programs(s, "all")]
    assert keys[:3] == ["step", "generate-n128", "prefill-L4096"] and len(keys) == 10 == len(set(keys))
    assert [tpu_compile.key(p) for p in tpu_compile.programs(s, "claims")] == keys[:3]
