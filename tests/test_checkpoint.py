import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from mamba2_jax.checkpoint import CheckpointError, init_state_dict, read_state_dict, resolve_model_dir, write_checkpoint
from mamba2_jax.config import get_preset
from mamba2_jax.loading import load_pretrained, save_pretrained, state_dict_from_model


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    cfg = get_preset("tiny-g2")
    sd = init_state_dict(cfg, seed=3)
    d = tmp_path_factory.mktemp("ck") / "tiny"
    write_checkpoint(cfg, sd, d, dtype="float16")
    return cfg, sd, d


def test_state_spaces_layout_is_exact(tiny_ckpt):
    cfg, sd, d = tiny_ckpt
    raw = torch.load(d / "pytorch_model.bin", weights_only=True)
    assert set(raw) == set(sd)
    assert all(v.dtype == torch.float16 for v in raw.values())
    # tied head shares storage with the embedding, as torch.save of a tied model does
    assert raw["lm_head.weight"].data_ptr() == raw["backbone.embedding.weight"].data_ptr()
    assert raw["backbone.layers.1.mixer.conv1d.weight"].shape == (cfg.conv_dim, 1, cfg.d_conv)


def test_init_matches_mamba_ssm_recipe():
    cfg = get_preset("mamba2-130m").replace(n_layer=2)
    sd = init_state_dict(cfg, seed=0)
    A = np.exp(sd["backbone.layers.0.mixer.A_log"])
    assert A.min() >= 1 and A.max() <= 16
    dt = np.log1p(np.exp(sd["backbone.layers.0.mixer.dt_bias"].astype(np.float64)))  # softplus inverts it
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001
    assert np.all(sd["backbone.layers.0.mixer.D"] == 1)
    assert abs(sd["backbone.embedding.weight"].std() - 0.02) < 1e-3
    w = sd["backbone.layers.0.mixer.out_proj.weight"]
    assert np.abs(w).max() <= 1 / np.sqrt(cfg.d_inner) / np.sqrt(cfg.n_layer)


@pytest.mark.parametrize("fmt,weights", [("state-spaces", "bin"), ("state-spaces", "safetensors"), ("hf", None)])
def test_round_trip_identical(tiny_ckpt, tmp_path, fmt, weights):
    cfg, _, d = tiny_ckpt
    m = load_pretrained(d, dtype="float32")
    out = save_pretrained(m, tmp_path / fmt, format=fmt, weights=weights)
    m2 = load_pretrained(out, dtype="float32")
    a, b = state_dict_from_model(m), state_dict_from_model(m2)
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    _, _, detected = read_state_dict(out)
    assert detected == ("hf" if fmt == "hf" else "state-spaces")


def test_fp16_to_fp32_and_bf16(tiny_ckpt):
    cfg, sd, d = tiny_ckpt
    m32 = load_pretrained(d, dtype="float32")
    mbf = load_pretrained(d, dtype="bfloat16")
    e16 = sd["backbone.embedding.weight"].astype(np.float16)
    np.testing.assert_array_equal(np.asarray(m32.backbone.embedding[...]), e16.astype(np.float32))
    assert mbf.backbone.embedding.dtype == jnp.bfloat16
    assert mbf.backbone.layers[0].mixer.A_log.dtype == jnp.float32  # SSM parameters stay fp32
    assert m32.policy["matmul_precision"] == "highest" and mbf.policy["mode"] == "fast"
    ids = jnp.arange(20)[None] % cfg.vocab_size
    l32, _ = m32(ids)
    lbf, _ = mbf(ids)
    assert float(jnp.max(jnp.abs(l32 - lbf))) < 0.05 * float(jnp.max(jnp.abs(l32))) + 1e-3


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/mamba2_jax_pwned_marker",))


def test_malicious_pickle_refused(tiny_ckpt, tmp_path):
    cfg, _, d = tiny_ckpt
    marker = "/tmp/mamba2_jax_pwned_marker"
    if os.path.exists(marker):
        os.remove(marker)
    bad = tmp_path / "evil"
    bad.mkdir()
    (bad / "config.json").write_text((d / "config.json").read_text())
    torch.save({"backbone.embedding.weight": _Evil()}, bad / "pytorch_model.bin", pickle_protocol=2)
    with pytest.raises(CheckpointError, match="refused to unpickle"):
        load_pretrained(bad)
    assert not os.path.exists(marker)


def test_truncated_file(tiny_ckpt, tmp_path):
    cfg, _, d = tiny_ckpt
    for name in ("pytorch_model.bin", "model.safetensors"):
        bad = tmp_path / name
        bad.mkdir()
        (bad / "config.json").write_text((d / "config.json").read_text())
        src = d / "pytorch_model.bin"
        if name == "model.safetensors":
            write_checkpoint(cfg, init_state_dict(cfg, 0), tmp_path / "st", weights="safetensors")
            src = tmp_path / "st" / "model.safetensors"
        data = src.read_bytes()
        (bad / name).write_bytes(data[: len(data) // 2])
        with pytest.raises(CheckpointError, match="truncated or corrupt"):
            load_pretrained(bad)


def test_wrong_shape_missing_and_unexpected(tiny_ckpt, tmp_path):
    cfg, sd, d = tiny_ckpt
    bad = dict(sd)
    bad["backbone.layers.0.mixer.in_proj.weight"] = np.zeros((3, 3), np.float32)
    del bad["backbone.layers.1.mixer.D"]
    bad["backbone.layers.9.mixer.D"] = np.zeros(8, np.float32)
    torch_sd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in bad.items()}
    out = tmp_path / "bad"
    out.mkdir()
    (out / "config.json").write_text((d / "config.json").read_text())
    torch.save(torch_sd, out / "pytorch_model.bin")
    with pytest.raises(CheckpointError) as e:
        load_pretrained(out)
    msg = str(e.value)
    assert "1 missing: backbone.layers.1.mixer.D" in msg
    assert "1 unexpected: backbone.layers.9.mixer.D" in msg
    assert f"mixer.in_proj.weight: expected ({cfg.d_in_proj}, {cfg.d_model}), got (3, 3)" in msg


def test_offline_hub_id_gives_clear_error():
    with pytest.raises(CheckpointError, match="pass the local directory"):
        resolve_model_dir("state-spaces/mamba2-130m")


def test_missing_dir_is_not_hub_id(tmp_path):
    with pytest.raises(CheckpointError, match="no such local checkpoint"):
        resolve_model_dir(str(tmp_path / "nope" / "deeper"))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_has_nonfinite_agrees_with_isfinite(dtype):
    """The bit test (exponent all ones) against numpy's isfinite, for every float width: NaN, ±Inf
    anywhere (chunk edges included), and the finite extremes (largest, subnormals, -0) that must
    not be flagged."""
    import ml_dtypes

    from mamba2_jax.checkpoint import _CHUNK, check_finite, has_nonfinite

    dt = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
    info = ml_dtypes.finfo(dt)
    n = 2 * _CHUNK + 17
    base = np.random.default_rng(0).standard_normal(n).astype(dt)
    base[:4] = [info.max, -info.max, info.smallest_subnormal, -0.0]
    assert not has_nonfinite(base) and np.isfinite(base.astype(np.float64)).all()
    assert not has_nonfinite(base[:0]) and not has_nonfinite(base.reshape(-1, 1)[::3])
    for pos in (0, _CHUNK - 1, _CHUNK, n - 1):
        for val in (np.nan, np.inf, -np.inf):
            a = base.copy()
            a[pos] = val
            assert has_nonfinite(a) and has_nonfinite(a.reshape(1, -1)), (pos, val)
            assert has_nonfinite(a) == (not np.isfinite(a.astype(np.float64)).all())
    a = base.copy()
    a[[5, _CHUNK + 1, n - 2]] = [np.nan, np.inf, -np.inf]
    assert check_finite({"w": a, "ok": base}) == {"w": 3}


def test_nonfinite_weights_refused_by_default(tiny_ckpt, tmp_path, capsys):
    """NaN weights: load_pretrained and the CLI refuse them with a CheckpointError naming the tensor
    and count; ``allow_nonfinite=True`` / ``--allow-nonfinite`` loads them, and generation then stops
    with a GenerationError instead of emitting tokens from NaN logits (exit 2 in the CLI)."""
    from mamba2_jax.cli import main as cli_main
    from mamba2_jax.generate import GenerationError, Generator

    cfg, sd, _ = tiny_ckpt
    bad = {**sd, "backbone.layers.1.mixer.out_proj.weight": sd["backbone.layers.1.mixer.out_proj.weight"].copy()}
    bad["backbone.layers.1.mixer.out_proj.weight"][2, [3, 5]] = [np.nan, np.inf]
    d = write_checkpoint(cfg, bad, tmp_path / "nan", dtype="float32")
    with pytest.raises(CheckpointError, match=r"backbone\.layers\.1\.mixer\.out_proj\.weight \(2\)") as e:
        load_pretrained(d)
    assert e.value.cause == "NonFiniteWeights" and "allow_nonfinite=True" in str(e.value)
    model = load_pretrained(d, allow_nonfinite=True)
    with pytest.raises(GenerationError, match="new token 0 of row 0"):
        Generator(model, eos_id=0).generate([[1, 2, 3]], 4)  # the CLI's EOS id: the CLI reuses these programs
    args = ["generate", "--model", str(d), "--prompt-ids", "1,2,3", "--max-new-tokens", "4", "--no-decode", "--json"]
    capsys.readouterr()
    assert cli_main(args) == 2 and "out_proj.weight (2)" in capsys.readouterr().err
    assert cli_main([*args, "--allow-nonfinite"]) == 2 and "non-finite logits" in capsys.readouterr().err
