"""Mamba-Codestral-7B, the sixth scale (issue 29 section 4), read from configs/mamba-codestral-7b/config.json.

* the config parses to the published shape, its parameter table counts the published 7,285,403,648
  parameters (untied LM head included) and the byte counts the docs quote (docs/compile.md);
* ``mamba2-jax compile`` and experiments/tpu_compile.py accept the file (nothing is compiled here);
* a checkpoint at the real widths (d_model 4096, 128 heads, 8 groups, d_state 128, vocab 32768) with
  only ``n_layer`` reduced to 2 round-trips: ``mamba2-jax init-random`` → a distinct LM head written
  with ``write_checkpoint`` → ``mamba2-jax info`` → ``load_pretrained`` → prefill and a decode step
  whose logits match the float64 oracle (mamba2_jax/eval/oracle.py), and not the embedding as head.

The round trip is marked ``slow`` (run with ``-m slow``, as the other real-width tests): about 2 min
on 2 busy cores and ~5 GB (2 GB of float32 weights in JAX, then the oracle's float64 copy of the
layers and the head; of the embedding it gets only the rows the ids use).  The rest takes a second.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from mamba2_jax.cli import build_parser, main
from mamba2_jax.config import Mamba2Config

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "mamba-codestral-7b" / "config.json"
# "7.29B params" on the hub page of mistralai/Mamba-Codestral-7B-v0.1 (its safetensors metadata):
# 7,285,403,648 (configs/mamba-codestral-7b/README.md)
PUBLISHED_PARAMS = 7_285_403_648
N_LAYER = 2  # the only field reduced for the round trip
TOL = 1e-5  # as tests/test_oracle.py (float32 model, matmul precision "highest")


@pytest.fixture(scope="module")
def cfg():
    return Mamba2Config.from_json(CONFIG)


def test_config_is_the_published_shape(cfg):
    assert cfg.name == "mamba-codestral-7b"  # the directory's name
    assert (cfg.d_model, cfg.n_layer, cfg.expand, cfg.d_inner, cfg.ssm_dim, cfg.d_mlp) == (4096, 64, 2, 8192, 8192, 0)
    assert (cfg.nheads, cfg.headdim, cfg.d_state, cfg.ngroups) == (128, 64, 128, 8)
    assert (cfg.d_conv, cfg.chunk_size, cfg.conv_dim, cfg.d_in_proj) == (4, 256, 10240, 18560)
    assert cfg.vocab_size == cfg.padded_vocab_size == 32768  # not padded further
    assert not cfg.tie_embeddings
    assert cfg.rms_norm and cfg.residual_in_fp32 and not cfg.bias and cfg.conv_bias and cfg.rmsnorm
    assert not cfg.norm_before_gate  # mamba_ssm's default, what the weights were run with (README)
    assert cfg.dt_limit == (0.0, math.inf) and not cfg.dt_limit_active
    assert (cfg.dt_min, cfg.dt_max, cfg.dt_init_floor) == (0.001, 0.1, 1e-4)
    assert cfg.norm_epsilon == cfg.mixer_norm_epsilon == 1e-5
    assert not cfg.D_has_hdim and cfg.d_intermediate == 0
    # our writers round-trip it
    assert Mamba2Config.from_hf(cfg.to_hf()) == cfg
    assert Mamba2Config.from_state_spaces(cfg.to_state_spaces()) == cfg


def test_parameter_count_is_the_published_one(cfg):
    from mamba2_jax.params import expected_shapes

    assert cfg.num_params() == PUBLISHED_PARAMS
    shapes = expected_shapes(cfg)
    assert shapes["lm_head.weight"] == shapes["backbone.embedding.weight"] == (32768, 4096)
    assert sum(math.prod(s) for s in shapes.values()) == PUBLISHED_PARAMS  # every tensor, the head included
    assert cfg.replace(tie_embeddings=True).num_params() == PUBLISHED_PARAMS - 32768 * 4096


def test_bytes(cfg):
    """The numbers docs/compile.md quotes: parameters at bf16 and one sequence's state."""
    from mamba2_jax.eval import flops
    from mamba2_jax.serve.engine import Engine

    pb = flops.param_bytes(cfg, "bfloat16")
    assert pb["total"] == 14_570_856_448  # 13.57 GiB: 2 bytes each, A_log/dt_bias/D (98,304 B) in float32
    assert pb["ssm_fp32"] == 64 * 3 * 128 * 4 and pb["lm_head"] == pb["embedding"] == 32768 * 4096 * 2
    sb = flops.state_bytes(cfg, 1, "bfloat16")
    assert sb == {"ssm": 268_435_456, "conv": 3_932_160, "total": 272_367_616}  # 259.75 MiB per sequence
    assert Engine.state_bytes(cfg, "bfloat16") == sb["total"] + 4  # the server's slot (+ its length counter)
    assert flops.param_bytes(cfg, "float32")["total"] == 4 * PUBLISHED_PARAMS


def test_compile_cli_and_tpu_compile_accept_the_config(cfg):
    """What ``mamba2-jax compile --model configs/mamba-codestral-7b/config.json`` and
    ``experiments/tpu_compile.py --models configs/mamba-codestral-7b/config.json`` read (no compile)."""
    from mamba2_jax.compile import _config
    from mamba2_jax.sharding import parse_mesh

    for model in (str(CONFIG), str(CONFIG.parent)):
        got, name = _config(model)
        assert got == cfg and got.name == "mamba-codestral-7b" and name == model
    a = build_parser().parse_args(["compile", "--model", str(CONFIG), "--target", "tpu-v5e", "--dtype", "bfloat16",
                                   "--mesh", "data=1,model=2", "--program", "step"])
    assert (a.model, a.target, a.dtype, a.program) == (str(CONFIG), "tpu-v5e", "bfloat16", "step")
    assert parse_mesh(a.mesh) == {"data": 1, "model": 2}
    # the model= axis splits heads, groups and d_inner evenly up to 8 chips
    assert all(cfg.nheads % m == 0 and cfg.ngroups % m == 0 and cfg.d_inner % m == 0 for m in (2, 4, 8))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, cfg):
    """init-random (the CLI) at the real widths with n_layer 2, then non-trivial norms/D/dt_bias/conv
    bias and an LM head distinct from the embedding, rewritten in place with ``write_checkpoint``."""
    from mamba2_jax.checkpoint import read_state_dict, write_checkpoint
    from mamba2_jax.eval.oracle import perturb_state_dict

    root = tmp_path_factory.mktemp("codestral")
    src = root / "mamba-codestral-2l"
    src.mkdir()
    d = json.loads(CONFIG.read_text())
    d["num_hidden_layers"] = N_LAYER
    (src / "config.json").write_text(json.dumps(d))
    out = root / "ckpt"
    assert main(["init-random", "--config", str(src / "config.json"), "--out", str(out), "--seed", "3",
                 "--format", "hf", "--dtype", "float16"]) == 0
    small, sd, fmt = read_state_dict(out)
    assert fmt == "hf" and small == cfg.replace(n_layer=N_LAYER)
    sd = perturb_state_dict(sd, seed=3)
    rng = np.random.default_rng(4)
    sd["lm_head.weight"] = (0.02 * rng.standard_normal((32768, 4096), dtype=np.float32)).astype(np.float16)
    write_checkpoint(small, sd, out, fmt="hf")
    return small, out


@pytest.mark.slow
def test_written_checkpoint_holds_the_configs_parameters(ckpt, capsys):
    from mamba2_jax.checkpoint import safetensors_header

    small, out = ckpt
    header = safetensors_header(out / "model.safetensors")
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    assert tensors["lm_head.weight"]["shape"] == tensors["backbone.embeddings.weight"]["shape"] == [32768, 4096]
    n = sum(math.prod(t["shape"]) for t in tensors.values())  # the file's own tensors
    per_layer = (PUBLISHED_PARAMS - 2 * 32768 * 4096 - 4096) // 64  # embedding, head, norm_f; 64 equal layers
    assert n == small.num_params() == 2 * 32768 * 4096 + 4096 + N_LAYER * per_layer
    capsys.readouterr()
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_params"] == n and info["format"] == "hf" and info["stored_dtypes"] == ["float16"]
    c = info["config"]
    assert (c["d_model"], c["nheads"], c["ngroups"], c["d_state"], c["padded_vocab_size"]) == (4096, 128, 8, 128,
                                                                                              32768)
    assert c["tie_embeddings"] is False
    written = json.loads((out / "config.json").read_text())
    assert written["n_groups"] == 8 and written["tie_word_embeddings"] is False and written["vocab_size"] == 32768


@pytest.mark.slow
def test_forward_matches_the_float64_oracle_with_an_untied_head(ckpt):
    import gc

    import jax.numpy as jnp

    from mamba2_jax.checkpoint import read_state_dict
    from mamba2_jax.eval.oracle import OracleModel, _rms, rel_err
    from mamba2_jax.loading import load_pretrained

    small, out = ckpt
    ids = np.array([[1, 1404, 28705, 32767, 0, 777]])  # both ends of the vocabulary
    model = load_pretrained(out, dtype="float32")
    assert model.cfg == small
    logits, cache = model.prefill(jnp.asarray(ids[:, :-1]))
    step_logits, _ = model.step(jnp.asarray(ids[:, -1]), cache)
    logits, step_logits = np.asarray(logits), np.asarray(step_logits)
    del model, cache
    gc.collect()

    _, sd, _ = read_state_dict(out)
    emb = sd.pop("backbone.embedding.weight")
    assert not np.array_equal(sd["lm_head.weight"], emb)
    # the oracle looks up only the embedding rows of the ids (renumbered); its head is the whole lm_head
    rows, local = np.unique(ids, return_inverse=True)
    sd["backbone.embedding.weight"] = emb[rows]
    for k in list(sd):  # float64 in place: the oracle keeps these arrays instead of copying them
        sd[k] = np.asarray(sd[k], np.float64)
    ref, hidden, _ = OracleModel(small, sd).run(local.reshape(ids.shape))
    assert logits.shape == (1, ids.shape[1] - 1, 32768)
    e_pre, e_step = rel_err(logits, ref[:, :-1]), rel_err(step_logits, ref[:, -1])
    assert e_pre <= TOL and e_step <= TOL, (e_pre, e_step)
    # the untied head is the one used: the embedding as head gives other logits
    tied = _rms(hidden[-1], sd["backbone.norm_f.weight"], small.norm_epsilon) @ emb.astype(np.float32).T
    assert rel_err(tied, ref) > 0.5


def test_transformers_layout_norm_before_gate_is_mamba_ssms_false(tmp_path):
    """The hub's config.json for Mamba-Codestral-7B says ``norm_before_gate: true`` (README, source 1), but
    mamba_ssm runs the checkpoint with its ``Mamba2`` default, False: norm(y · silu(z)).  Our reader does
    the same for every transformers-layout config (Mamba2Config._from_hf_fields cites the sources), while
    the state-spaces layout's ``ssm_cfg.norm_before_gate`` (a real mamba_ssm argument) is still read.
    The model loaded from the "true" file matches the float64 oracle run with False, and not with True."""
    from mamba2_jax.checkpoint import init_state_dict, write_checkpoint
    from mamba2_jax.config import ConfigError, get_preset
    from mamba2_jax.eval.oracle import OracleModel
    from mamba2_jax.loading import model_from_state_dict

    published = {**json.loads(CONFIG.read_text()), "norm_before_gate": True}
    assert not Mamba2Config.from_hf(published).norm_before_gate
    tiny = get_preset("tiny").replace(ngroups=2)
    hf = {**tiny.to_hf(), "norm_before_gate": True}
    cfg = Mamba2Config.from_hf(hf)
    assert not cfg.norm_before_gate
    ss = tiny.to_state_spaces()
    ss["ssm_cfg"]["norm_before_gate"] = True
    assert Mamba2Config.from_state_spaces(ss).norm_before_gate  # mamba_ssm reads it there

    sd = init_state_dict(cfg, seed=3)
    ids = np.array([[5, 17, 3, 99, 41, 8]])
    got = np.asarray(model_from_state_dict(cfg, sd, "float32")(ids)[0])
    gate_first = OracleModel(cfg.replace(norm_before_gate=False), sd).run(ids)[0]
    norm_first = OracleModel(cfg.replace(norm_before_gate=True), sd).run(ids)[0]
    err = lambda ref: float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))
    assert err(gate_first) < TOL < err(norm_first)

    # a model that does norm first cannot be written in the transformers layout (it would reload as False)
    with pytest.raises(ConfigError, match="norm_before_gate"):
        write_checkpoint(cfg.replace(norm_before_gate=True), sd, tmp_path / "hf", fmt="hf")
