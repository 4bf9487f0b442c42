"""`mamba2-jax compile`: the embedded model's programs compiled for TPU v6e by libtpu's compiler
(no TPU), checked against counts made here from the config alone.

libtpu is installed by `make install-tpu` (a dependency of `make test`) into .tpu/; when it is
missing the fixture runs that target, and skips (saying why) only if the install itself fails.

Independent counts (from config.json, not from the project's code):

* parameter bytes: the Mamba-2 parameter table (embedding, and per layer in_proj, conv weight and
  bias, dt_bias, A_log, D, the gated norm, out_proj, the block norm; norm_f), A_log/dt_bias/D in
  float32 and the rest in the param dtype; under a mesh, the arrays the sharding rules split over
  "model" (docs/sharding.md) count 1/M per device and the conv weights and norms count in full.
  XLA:TPU lays small arrays out in (8, 128) tiles, so the reported bytes may exceed the count by
  the padding of the small vectors: at most 0.5% here.
* matmul FLOPs: 2·(d·d_in_proj + d_inner·d) per token per layer + 2·d·V for the LM head, plus the
  SSD and conv terms; XLA:TPU counts a batch-1 vector-matrix product as 1.5× its 2·m·n·k
  (measured on a lone (1, 128)·(128, 50288) dot), so the checks use batch 8, where XLA's count of
  a dot is exactly 2·m·n·k.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "checkpoints" / "mamba2-tiny-wikitext"
pytestmark = pytest.mark.integration


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("MAMBA2_JAX_LIBTPU_DIR", str(REPO / ".tpu"))
    return env


@pytest.fixture(scope="module")
def libtpu() -> str:
    d = Path(_env()["MAMBA2_JAX_LIBTPU_DIR"])
    if not (d / "libtpu").is_dir():
        r = subprocess.run(["make", "-C", str(REPO), "install-tpu", f"TPU_DIR={d}"], capture_output=True, text=True,
                           timeout=900)
        if r.returncode != 0 or not (d / "libtpu").is_dir():
            pytest.skip(f"libtpu could not be installed (make install-tpu exited {r.returncode}): "
                        f"{(r.stdout + r.stderr)[-600:]}")
    return str(d)


def _cfg():
    return json.loads((MODEL / "config.json").read_text())


def shape(c=None) -> dict[str, int]:
    """The dimensions, from config.json with mamba_ssm's defaults (expand 2, d_conv 4)."""
    c = c or _cfg()
    s = c["ssm_cfg"]
    d = c["d_model"]
    di = 2 * d
    g, n, p = s.get("ngroups", 1), s.get("d_state", 128), s.get("headdim", 64)
    h = di // p
    m = c["pad_vocab_size_multiple"]
    V = -(-c["vocab_size"] // m) * m
    return {"d": d, "L": c["n_layer"], "di": di, "g": g, "n": n, "p": p, "h": h, "V": V, "k": 4,
            "conv": di + 2 * g * n, "E": 2 * di + 2 * g * n + h, "q": s.get("chunk_size", 256)}


def param_bytes_per_device(itemsize: int, M: int = 1) -> int:
    """Parameter bytes on one device of a ("data", "model"=M) mesh (see the module docstring)."""
    s = shape()
    d, di, h = s["d"], s["di"], s["h"]
    split = s["V"] * d * itemsize  # embedding (tied LM head), vocab-parallel
    split += s["L"] * (s["E"] * d * itemsize        # in_proj: z, x, B, C (ngroups % M == 0 here), dt
                       + 3 * h * 4                   # dt_bias, A_log, D (float32)
                       + di * itemsize               # gated norm weight
                       + d * di * itemsize)          # out_proj (input axis)
    whole = s["L"] * (s["k"] * s["conv"] + s["conv"] + d) * itemsize + d * itemsize  # conv w+b, norms, norm_f
    assert s["g"] % M == 0 and h % M == 0
    return split // M + whole


def matmul_flops_per_token(s=None) -> int:
    s = s or shape()
    return 2 * s["L"] * (s["d"] * s["E"] + s["di"] * s["d"])


def _run_cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mamba2_jax.cli", "compile", *args], capture_output=True, text=True,
                          env=_env(), cwd=REPO, timeout=timeout)


def _compile_many(specs: list[dict]) -> list[dict]:
    """Several compile_program calls in one fresh process (libtpu is loaded once)."""
    code = ("import json, sys\nfrom mamba2_jax.compile import compile_program\n"
            "for kw in json.loads(sys.argv[1]):\n"
            "    r = compile_program(sys.argv[2], 'tpu-v6e', **kw)\n"
            "    print('RESULT ' + json.dumps(r, default=str), flush=True)\n")
    r = subprocess.run([sys.executable, "-c", code, json.dumps(specs), str(MODEL)], capture_output=True, text=True,
                       env=_env(), cwd=REPO, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    out = [json.loads(line[7:]) for line in r.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(out) == len(specs)
    assert "TPU_ACCELERATOR_TYPE" not in r.stderr and "TPU_WORKER_HOSTNAMES" not in r.stderr, r.stderr[-2000:]
    return out


def test_unknown_target_is_a_clear_error():
    r = _run_cli("--model", str(MODEL), "--target", "tpu-v9", "--json", timeout=120)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "unknown target 'tpu-v9'" in r.stderr and "tpu-v6e" in r.stderr and "Traceback" not in r.stderr
    assert r.stdout == ""


def test_step_json_for_v6e_matches_the_config(libtpu):
    r = _run_cli("--model", str(MODEL), "--target", "tpu-v6e", "--program", "step", "--batch", "8",
                 "--dtype", "bfloat16", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1  # one object
    o = json.loads(lines[0])
    for k in ("device_kind", "topology", "num_devices", "compile_s", "flops", "bytes_accessed", "argument_bytes",
              "output_bytes", "temp_bytes", "hbm_bytes_per_device", "fits", "custom_calls", "bound_tokens_per_s",
              "policy"):
        assert k in o, k
    assert o["device_kind"].startswith("TPU v6") and o["topology"] == "v6e:2x2" and o["num_devices"] == 1
    assert o["status"] == "compiled for TPU v6e, not run"
    assert o["custom_calls"] == []
    # the target's structure policy, not this CPU host's: chunk = the config's, no prefill blocks
    assert o["policy"]["platform"] == "tpu" and o["policy"]["prefill_block"] is None
    assert o["policy"]["scan_chunk_size"] == shape()["q"]
    assert o["hbm_bytes_per_device"] == 32e9 and o["fits"] is True
    s = shape()
    b = 8
    indep = b * (matmul_flops_per_token(s) + 2 * s["d"] * s["V"]          # projections + LM head
                 + s["L"] * (5 * s["h"] * s["p"] * s["n"] + 2 * s["k"] * s["conv"]))  # SSD step + conv
    assert abs(o["flops"] - indep) / indep < 0.02, (o["flops"], indep)
    # roofline: the bound follows from the reported numbers and the v6e datasheet profile
    ro = o["roofline"]
    t = max(o["flops"] / 918e12, (o["argument_bytes"] + o["output_bytes"]) / 1638e9)
    assert ro["min_time_s"] == pytest.approx(t, rel=1e-9)
    assert o["bound_tokens_per_s"] == pytest.approx(b / t, rel=1e-9)


def test_prefill_generate_and_a_sharded_prefill_for_v6e(libtpu):
    b, L = 8, 128
    unsharded, gen, sharded, step2 = _compile_many([
        {"program": "prefill", "batch": b, "length": L, "dtype": "bfloat16"},
        {"program": "generate", "batch": b, "new_tokens": 4, "dtype": "bfloat16"},
        {"program": "prefill", "batch": b, "length": L, "dtype": "bfloat16", "mesh": "data=2,model=2"},
        {"program": "step", "batch": b, "dtype": "bfloat16", "mesh": "model=2"},
    ])
    s = shape()
    ids = b * L * 4
    for r, M, D in ((unsharded, 1, 1), (sharded, 2, 2)):
        assert r["custom_calls"] == [] and r["num_devices"] == D * M
        want = param_bytes_per_device(2, M) + ids // D
        assert 0 <= r["argument_bytes"] - want <= 0.005 * want, (M, r["argument_bytes"], want)
        # FLOPs: projections + SSD (chunked: C·B, the diagonal blocks, chunk states, state → output)
        q, c = s["q"], -(-L // s["q"])
        ssd = s["L"] * 2 * b * c * q * (s["g"] * q * s["n"] + s["h"] * q * s["p"] + 2 * s["h"] * s["p"] * s["n"])
        total = b * L * matmul_flops_per_token(s) + 2 * b * s["d"] * s["V"] + ssd
        assert abs(r["flops"] - total / (D * M)) / (total / (D * M)) < 0.10, (M, r["flops"], total / (D * M))
    assert sharded["mesh_shape"] == {"data": 2, "model": 2}
    # the compiled decode loop: its body is one step (XLA counts a while body once)
    assert gen["custom_calls"] == [] and gen["program"] == "generate"
    per_step = b * (matmul_flops_per_token(s) + 2 * s["d"] * s["V"])
    assert per_step <= gen["flops"] <= 1.1 * per_step
    # the sharded step: half of every split array per device, the LM head and projections halved
    assert abs(step2["flops"] - per_step / 2) / (per_step / 2) < 0.05


def test_state_dtype_is_accepted_and_halves_the_ssm_state_arguments(libtpu):
    """``--state-dtype`` (the precision policy's SSM-state storage) reaches the compiled step: the
    policy records it (float32 by default), and the step's arguments shrink by the SSM state's
    bytes saved, n_layer × b × nheads × headdim × d_state × (4 − 2), counted from config.json, with
    d_state laid out in whole 128-lane TPU tiles (d_state 64 here: one tile of 128; headdim 32 fills
    the 8- and 16-row sublane tiles of float32 and bfloat16 exactly)."""
    from mamba2_jax.cli import build_parser

    a = build_parser().parse_args(["compile", "--model", str(MODEL)])
    assert a.state_dtype == "float32"
    assert build_parser().parse_args(["compile", "--state-dtype", "bfloat16"]).state_dtype == "bfloat16"
    b = 8
    fp32, bf16 = _compile_many([
        {"program": "step", "batch": b, "dtype": "bfloat16"},
        {"program": "step", "batch": b, "dtype": "bfloat16", "state_dtype": "bfloat16"},
    ])
    assert fp32["policy"]["state_dtype"] == "float32" and fp32["policy"]["mode"] == "fast"
    assert bf16["policy"]["state_dtype"] == "bfloat16"
    s = shape()
    assert s["p"] % 16 == 0
    lanes = -(-s["n"] // 128) * 128
    saved = s["L"] * b * s["h"] * s["p"] * lanes * (4 - 2)
    assert fp32["argument_bytes"] - bf16["argument_bytes"] == saved
    assert fp32["alias_bytes"] - bf16["alias_bytes"] == saved  # the donated state, updated in place
