import json
import math

import pytest

from mamba2_jax.config import PRESETS, ConfigError, Mamba2Config, get_preset


@pytest.mark.parametrize("name,d_model,n_layer", [("mamba2-130m", 768, 24), ("mamba2-370m", 1024, 48),
                                                  ("mamba2-780m", 1536, 48), ("mamba2-1.3b", 2048, 48),
                                                  ("mamba2-2.7b", 2560, 64)])
def test_shared_state_spaces_configs(data_dir, name, d_model, n_layer):
    cfg = Mamba2Config.from_json(data_dir / "mamba2-configs" / f"{name}.json")
    assert (cfg.d_model, cfg.n_layer) == (d_model, n_layer)
    # absent ssm_cfg fields take the mamba_ssm v2.2.2 Mamba2 defaults
    assert (cfg.d_state, cfg.headdim, cfg.expand, cfg.ngroups, cfg.d_conv, cfg.chunk_size) == (128, 64, 2, 1, 4, 256)
    assert cfg.padded_vocab_size == 50288 and cfg.vocab_size == 50277
    assert cfg.nheads == 2 * d_model // 64
    assert cfg.d_in_proj == 2 * 2 * d_model + 2 * 128 + cfg.nheads
    p = PRESETS[name]
    assert (p.d_model, p.n_layer, p.padded_vocab_size) == (cfg.d_model, cfg.n_layer, cfg.padded_vocab_size)


def test_130m_param_count():
    # mamba2-130m: 24 layers of d_model 768 plus the tied 50288-row embedding
    cfg = get_preset("mamba2-130m")
    per_layer = 768 + 3352 * 768 + 1792 * 4 + 1792 + 3 * 24 + 1536 + 1536 * 768
    assert cfg.num_params() == 50288 * 768 + 24 * per_layer + 768


def test_hf_config_with_infinity_roundtrip():
    cfg = get_preset("tiny-g2").replace(dt_limit=(0.0, math.inf))
    hf = cfg.to_hf()
    assert hf["time_step_limit"][1] == {"__float__": "Infinity"}
    back = Mamba2Config.from_dict(json.loads(json.dumps(hf)))
    assert back.dt_limit == (0.0, math.inf)
    assert (back.d_model, back.n_layer, back.ngroups, back.d_state, back.headdim, back.padded_vocab_size) == \
        (cfg.d_model, cfg.n_layer, cfg.ngroups, cfg.d_state, cfg.headdim, cfg.padded_vocab_size)


def test_state_spaces_roundtrip_keeps_ssm_cfg():
    cfg = get_preset("tiny-mlp").replace(dt_limit=(0.001, 0.5))
    back = Mamba2Config.from_dict(cfg.to_state_spaces())
    assert back == cfg
    assert back.d_mlp == cfg.d_inner - 96


@pytest.mark.parametrize("bad,msg", [
    ({"attn_layer_idx": [3]}, "attention"),
    ({"d_intermediate": 256}, "MLP"),
    ({"frobnicate": 1}, "unknown"),
    ({"ssm_cfg": {"layer": "Mamba1"}}, "Mamba2"),
    ({"ssm_cfg": {"layer": "Mamba2", "d_stat": 64}}, "unknown ssm_cfg"),
    ({"ssm_cfg": {"layer": "Mamba2", "headdim": 100}}, "headdim"),
    ({"d_model": 0}, "positive"),
])
def test_bad_configs_rejected(bad, msg):
    d = get_preset("tiny").to_state_spaces()
    d.update(bad)
    with pytest.raises(ConfigError, match=msg):
        Mamba2Config.from_dict(d)


def test_missing_and_malformed_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        Mamba2Config.from_json(tmp_path / "config.json")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        Mamba2Config.from_json(tmp_path / "config.json")


def test_missing_pad_vocab_size_multiple_follows_each_format(tmp_path):
    """A config.json without ``pad_vocab_size_multiple`` means its own library's default.
    state-spaces: mamba_ssm 2.2.2 ``MambaConfig`` reads it as 8, and so does the reference runners'
    independent reader (reference/common.py): vocab 50277 → 50280 rows, not 50288.  HF: transformers'
    Mamba2 has exactly ``vocab_size`` rows (it never pads; its config default is 16)."""
    from reference.common import read_config

    d = get_preset("tiny").replace(vocab_size=50277).to_state_spaces()
    del d["pad_vocab_size_multiple"]
    (tmp_path / "config.json").write_text(json.dumps(d))
    cfg = Mamba2Config.from_json(tmp_path)
    assert cfg.pad_vocab_size_multiple == 8
    assert cfg.padded_vocab_size == read_config(tmp_path)["padded_vocab_size"] == 50280
    d["pad_vocab_size_multiple"] = 16  # given explicitly (every published checkpoint): used as given
    assert Mamba2Config.from_dict(d).padded_vocab_size == 50288

    hf = get_preset("tiny").replace(vocab_size=50277).to_hf()
    assert hf["vocab_size"] == 50288  # HF stores the padded size
    del hf["pad_vocab_size_multiple"]
    assert Mamba2Config.from_dict(hf).padded_vocab_size == 50288
    for v in (50277, 50280):  # not a multiple of HF's default 16: still exactly vocab_size rows
        back = Mamba2Config.from_dict({**hf, "vocab_size": v})
        assert back.padded_vocab_size == back.vocab_size == v
        assert Mamba2Config.from_dict(back.to_state_spaces()).padded_vocab_size == v


def test_hf_rows_match_transformers_mamba2():
    """The embedding rows of transformers' own Mamba2ForCausalLM built from an HF config (with and
    without the pad field, vocab a multiple of 16 or not) equal ``padded_vocab_size``."""
    torch = pytest.importorskip("torch", reason="torch is not installed: transformers' Mamba2 needs it")
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    base = get_preset("tiny").to_hf()
    for extra in ({}, {"vocab_size": 250}, {"vocab_size": 250, "pad_vocab_size_multiple": None}):
        hf = {**base, **extra}
        if "pad_vocab_size_multiple" in extra:
            del hf["pad_vocab_size_multiple"]
        torch.manual_seed(0)
        kw = {k: v for k, v in hf.items() if k != "architectures"}
        kw["time_step_limit"] = (0.0, math.inf)  # transformers' own spelling of the HF-encoded pair
        hf_model = transformers.Mamba2ForCausalLM(transformers.Mamba2Config(**kw))
        rows = hf_model.get_input_embeddings().weight.shape[0]
        assert Mamba2Config.from_dict(hf).padded_vocab_size == rows, extra
