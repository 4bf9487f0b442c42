"""Fuzzed config.json files, both layouts (issue 15, part 1): every input is either a valid
config or a ConfigError that names the field; never another exception, never a hang."""

from __future__ import annotations

import json
import math
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from robustness import check, examples

from mamba2_jax.config import ConfigError, Mamba2Config, get_preset

PRESETS = ("tiny", "tiny-g2", "tiny-mlp", "mamba2-130m")
# a mutated field may be reported through a quantity derived from it
DERIVED = {
    "d_model": {"d_inner", "d_ssm", "nheads", "num_params"},
    "hidden_size": {"d_inner", "d_ssm", "num_heads", "num_params"},
    "expand": {"d_inner", "d_ssm", "nheads", "num_heads", "num_params"}, "headdim": {"nheads", "d_ssm"},
    "head_dim": {"num_heads", "d_ssm"}, "num_heads": {"d_ssm"}, "d_ssm": {"nheads"},
    "vocab_size": {"num_params"}, "n_layer": {"num_params"}, "num_hidden_layers": {"num_params"},
    "d_state": {"num_params"}, "state_size": {"num_params"}, "ngroups": {"nheads"}, "n_groups": {"num_heads"},
    "pad_vocab_size_multiple": {"num_params"}, "dt_min": {"dt_max"}, "dt_max": {"dt_min"},
    "time_step_min": {"time_step_max"}, "time_step_max": {"time_step_min"},
}
NAN_INF_SPELLINGS = ["NaN", "Infinity", "-Infinity", "1e999", "-1e999", '"nan"', '"NaN"', '"inf"', '"-inf"',
                     '"Infinity"', '"-Infinity"', '"+inf"', '{"__float__": "NaN"}', '{"__float__": "Infinity"}',
                     '{"__float__": "-Infinity"}', '{"__float__": "nan"}', '{"__float__": "bogus"}']

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                         st.text(max_size=12), st.sampled_from([0, -1, 1, 2**31, 2**63, 10**30, 0.5, 1e-300]))
json_values = st.recursive(json_scalars, lambda c: st.one_of(st.lists(c, max_size=3),
                                                             st.dictionaries(st.text(max_size=8), c, max_size=3)),
                           max_leaves=8)


def _base(preset: str, fmt: str) -> dict:
    cfg = get_preset(preset)
    return cfg.to_hf() if fmt == "hf" else cfg.to_state_spaces()


def _fields(d: dict) -> list[tuple[str, ...]]:
    out = [(k,) for k in d if k != "ssm_cfg"]
    out += [("ssm_cfg", k) for k in (d.get("ssm_cfg") or {})]
    out += [("ssm_cfg", k) for k in ("d_state", "headdim", "ngroups", "chunk_size", "d_conv", "expand", "d_ssm",
                                      "dt_limit", "A_init_range", "dt_min", "dt_max") if "ssm_cfg" in d]
    return sorted(set(out))


def _parse_text(text: str, tmp_path) -> Mamba2Config:
    p = tmp_path / "config.json"
    p.write_text(text)
    t0 = time.perf_counter()
    try:
        return Mamba2Config.from_json(p)
    finally:
        assert time.perf_counter() - t0 < 5.0, "config parsing took more than 5 s (a hang?)"


def _accepted_is_consistent(cfg: Mamba2Config) -> None:
    """A config that was accepted is internally consistent and round-trips through both layouts."""
    assert cfg.ssm_dim % cfg.headdim == 0 and cfg.nheads % cfg.ngroups == 0 and cfg.num_params() > 0
    for d in (cfg.to_state_spaces(), cfg.to_hf()):
        back = Mamba2Config.from_dict(json.loads(json.dumps(d)))
        assert back.padded_vocab_size == cfg.padded_vocab_size and back.nheads == cfg.nheads


@examples(ci=60, fuzz=3000)
@given(preset=st.sampled_from(PRESETS), fmt=st.sampled_from(["state-spaces", "hf"]), data=st.data())
def test_mutated_field(tmp_path_factory, preset, fmt, data):
    """One field replaced by a random JSON value, deleted, or set to a NaN/Infinity spelling."""
    d = _base(preset, fmt)
    path = data.draw(st.sampled_from(_fields(d)), label="field")
    action = data.draw(st.sampled_from(["value", "delete", "nan_inf", "size_edge"]), label="action")
    holder = d if len(path) == 1 else d.setdefault("ssm_cfg", {})
    key = path[-1]
    if action == "delete":
        holder.pop(key, None)
        text = json.dumps(d)
    elif action == "value":
        holder[key] = data.draw(json_values, label="value")
        text = json.dumps(d, allow_nan=True)
    elif action == "size_edge":
        holder[key] = data.draw(st.sampled_from([0, -1, -(2**31), 2**31, 2**40, 10**18, 3, 7, 1.5, True]))
        text = json.dumps(d)
    else:
        holder[key] = "@@X@@"
        text = json.dumps(d).replace('"@@X@@"', data.draw(st.sampled_from(NAN_INF_SPELLINGS), label="spelling"))
    tmp = tmp_path_factory.mktemp("cfg")
    names = (key, *DERIVED.get(key, ()))
    status, v = check(f"config/{fmt}/field", lambda: _parse_text(text, tmp), (ConfigError,), names, text)
    if status == "ok":
        _accepted_is_consistent(v)


@examples(ci=40, fuzz=2000)
@given(doc=json_values)
def test_random_json_document(tmp_path_factory, doc):
    tmp = tmp_path_factory.mktemp("cfg")
    text = json.dumps(doc, allow_nan=True)
    status, v = check("config/random-json", lambda: _parse_text(text, tmp), (ConfigError,), None, text)
    if status == "ok":
        _accepted_is_consistent(v)


@examples(ci=40, fuzz=2000)
@given(preset=st.sampled_from(PRESETS), fmt=st.sampled_from(["state-spaces", "hf"]), data=st.data())
def test_mutated_bytes(tmp_path_factory, preset, fmt, data):
    """Random byte edits of the JSON text (truncation, insertion, deletion, replacement)."""
    text = json.dumps(_base(preset, fmt)).encode()
    op = data.draw(st.sampled_from(["truncate", "replace", "insert", "delete"]))
    i = data.draw(st.integers(0, len(text) - 1))
    b = data.draw(st.binary(min_size=1, max_size=4))
    raw = {"truncate": text[:i], "replace": text[:i] + b + text[i + len(b):], "insert": text[:i] + b + text[i:],
           "delete": text[:i] + text[i + len(b):]}[op]
    tmp = tmp_path_factory.mktemp("cfg")
    p = tmp / "config.json"
    p.write_bytes(raw)
    status, v = check(f"config/{fmt}/bytes", lambda: Mamba2Config.from_json(p), (ConfigError,), None, repr(raw[:200]))
    if status == "ok":
        _accepted_is_consistent(v)


@pytest.mark.parametrize("fmt", ["state-spaces", "hf"])
@pytest.mark.parametrize("spelling", NAN_INF_SPELLINGS)
def test_every_nan_inf_spelling_in_every_numeric_field(tmp_path, fmt, spelling):
    """Each spelling of NaN/Infinity in each numeric field: a ConfigError naming that field, except
    the one place where Infinity is meaningful (the upper dt limit)."""
    d0 = _base("tiny-g2", fmt)
    for path in _fields(d0):
        d = json.loads(json.dumps(d0))
        holder = d if len(path) == 1 else d["ssm_cfg"]
        v = holder.get(path[-1])
        if isinstance(v, bool) or not isinstance(v, (int, float, list, type(None))) or path[-1] in (
                "bos_token_id", "eos_token_id", "pad_token_id", "attn_layer_idx", "d_ssm", "architectures"):
            continue
        if isinstance(v, list):  # dt_limit / A_init_range / time_step_limit: spell the lower bound
            holder[path[-1]] = ["@@X@@", 1.0]
        else:
            holder[path[-1]] = "@@X@@"
        text = json.dumps(d).replace('"@@X@@"', spelling)
        status, cfg = check(f"config/{fmt}/nan-inf", lambda text=text: _parse_text(text, tmp_path), (ConfigError,),
                            (path[-1], *DERIVED.get(path[-1], ())), text)
        if status == "ok":
            pytest.fail(f"{path} = {spelling} was accepted: {cfg}")


def test_field_type_errors_found_by_hand():
    """The two wrong-type fields of the issue's mutation run: ConfigError naming the field (was TypeError)."""
    d = _base("tiny", "state-spaces")
    d["ssm_cfg"]["dt_limit"] = 5
    with pytest.raises(ConfigError, match="dt_limit"):
        Mamba2Config.from_dict(d)
    d = _base("tiny", "state-spaces")
    d["ssm_cfg"] = {"layer": "Mamba2", "expand": "2"}
    with pytest.raises(ConfigError, match="expand"):
        Mamba2Config.from_dict(d)
    h = _base("tiny", "hf")
    h["time_step_limit"] = None
    with pytest.raises(ConfigError, match="time_step_limit"):
        Mamba2Config.from_dict(h)
    assert math.isinf(Mamba2Config.from_dict(_base("tiny", "hf")).dt_limit[1])
