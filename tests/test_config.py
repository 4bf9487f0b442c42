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
