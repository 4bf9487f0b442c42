"""Model configuration for Mamba-2 language models.

``Mamba2Config`` holds every field of mamba_ssm v2.2.2's ``MambaConfig`` and ``Mamba2``
mixer that the inference math depends on.  It parses both the state-spaces ``config.json``
layout (``d_model``/``n_layer``/``ssm_cfg``) and the HF transformers ``Mamba2Config`` layout
(``hidden_size``/``num_hidden_layers``/``state_size``...), including HF's JSON encoding of
infinity as ``{"__float__": "Infinity"}``.

Unsupported architectures (attention layers, MLP blocks) are rejected when the config is
built, so that a bad checkpoint fails before any weight is read.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .params import num_params as count_params

__all__ = ["Mamba2Config", "ConfigError", "PRESETS", "get_preset", "STATE_DTYPES"]

# The dtypes the SSM state may be stored in (the precision policy's ``state_dtype``; the state math
# is float32 whatever it is).  float32, the first, is the default and the parity setting.
STATE_DTYPES = ("float32", "bfloat16", "float16")


class ConfigError(ValueError):
    """Raised for unknown, inconsistent or unsupported configuration values."""


# mamba_ssm v2.2.2 ``Mamba2.__init__`` defaults for the ssm_cfg block.
_SSM_DEFAULTS: dict[str, Any] = dict(
    d_state=128,
    d_conv=4,
    expand=2,
    headdim=64,
    d_ssm=None,
    ngroups=1,
    chunk_size=256,
    dt_min=0.001,
    dt_max=0.1,
    dt_init_floor=1e-4,
    dt_limit=(0.0, math.inf),
    A_init_range=(1.0, 16.0),
    D_has_hdim=False,
    rmsnorm=True,
    norm_before_gate=False,
    bias=False,
    conv_bias=True,
)
# ssm_cfg keys that affect only CUDA kernels / training and are accepted but ignored.
_SSM_IGNORED = {"layer", "use_mem_eff_path", "conv_init", "process_group", "sequence_parallel"}
# top-level state-spaces keys that are accepted but have no effect on the math.
_TOP_IGNORED = {"fused_add_norm", "attn_cfg", "initializer_cfg"}


# A config.json that omits ``pad_vocab_size_multiple`` means what its own library's default says:
# mamba_ssm 2.2.2 ``MambaConfig.pad_vocab_size_multiple = 8`` (state-spaces layout);
# transformers ``Mamba2Config(pad_vocab_size_multiple=16)`` (HF layout, transformers 4.x).
MAMBA_SSM_PAD_VOCAB_SIZE_MULTIPLE = 8
HF_PAD_VOCAB_SIZE_MULTIPLE = 16


def _hf_pad_multiple(m: Any, hf_vocab: Any) -> Any:
    """HF's Mamba2 never pads: its embedding and LM head have exactly ``vocab_size`` rows
    (transformers ``modeling_mamba2.py``: ``nn.Embedding(config.vocab_size, ...)``), and the config's
    ``pad_vocab_size_multiple`` is stored but unused.  So the rows are ``vocab_size`` whatever the
    multiple: kept when ``vocab_size`` is already a multiple of it, else 1 (no padding).  Values of the
    wrong type pass through to the config's own checks."""
    if _is_int(m) and _is_int(hf_vocab) and m > 0 and hf_vocab > 0 and hf_vocab % m:
        return 1
    return m


_FLOAT_WORDS = {"inf", "+inf", "infinity", "+infinity", "-inf", "-infinity", "nan", "+nan", "-nan"}


def _decode_float(v: Any, key: str = "value") -> Any:
    """Decode HF's ``{"__float__": "Infinity"}`` encoding (and plain 'inf'/'nan' strings).

    A malformed encoding is a ConfigError naming ``key``."""
    if isinstance(v, dict) and "__float__" in v:
        x = v["__float__"]
        if len(v) != 1 or not isinstance(x, (str, int, float)) or isinstance(x, bool):
            raise ConfigError(f"{key}: malformed float encoding {v!r} (expected {{\"__float__\": \"Infinity\"}})")
        try:
            return float(x)
        except ValueError:
            raise ConfigError(f"{key}: malformed float encoding {v!r}") from None
    if isinstance(v, str) and v.strip().lower() in _FLOAT_WORDS:
        return float(v)
    if isinstance(v, (list, tuple)):
        return type(v)(_decode_float(x, key) for x in v)
    return v


# Field kinds checked before any arithmetic (bounds keep a hostile config from asking for
# absurd allocations: every size fits an int32 index and the model is at most 2**40 parameters).
_INT_FIELDS: dict[str, int] = {
    "d_model": 1 << 20, "n_layer": 1 << 16, "vocab_size": (1 << 31) - 1, "pad_vocab_size_multiple": 1 << 20,
    "d_state": 1 << 16, "d_conv": 1 << 10, "expand": 1 << 10, "headdim": 1 << 16, "ngroups": 1 << 16,
    "chunk_size": 1 << 20,
}
_BOOL_FIELDS = ("tie_embeddings", "residual_in_fp32", "rms_norm", "D_has_hdim", "rmsnorm", "norm_before_gate",
                "bias", "conv_bias")
_POS_FLOAT_FIELDS = ("norm_epsilon", "dt_min", "dt_max", "dt_init_floor", "mixer_norm_epsilon")
MAX_PARAMS = 1 << 40
# our field name -> the transformers Mamba2Config key it is read from
_HF_NAMES = {"d_model": "hidden_size", "n_layer": "num_hidden_layers", "tie_embeddings": "tie_word_embeddings",
             "norm_epsilon": "layer_norm_epsilon", "d_state": "state_size", "d_conv": "conv_kernel",
             "headdim": "head_dim", "ngroups": "n_groups", "dt_min": "time_step_min", "dt_max": "time_step_max",
             "dt_init_floor": "time_step_floor", "dt_limit": "time_step_limit", "bias": "use_bias",
             "conv_bias": "use_conv_bias", "nheads": "num_heads"}


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _check_types(c: Mamba2Config) -> None:
    """Coerce numeric types and reject wrong ones: one ConfigError naming every bad field."""
    problems = []
    set_ = lambda k, v: object.__setattr__(c, k, v)
    for k, hi in _INT_FIELDS.items():
        v = getattr(c, k)
        if not _is_int(v) or not 0 < v <= hi:
            problems.append(f"{k} must be a positive integer <= {hi}, got {v!r}")
        else:
            set_(k, int(v))
    if not _is_int(c.d_intermediate) or c.d_intermediate < 0:
        problems.append(f"d_intermediate must be a non-negative integer, got {c.d_intermediate!r}")
    if c.d_ssm is not None:
        if not _is_int(c.d_ssm) or not 0 < c.d_ssm <= (1 << 31) - 1:
            problems.append(f"d_ssm must be null or a positive integer, got {c.d_ssm!r}")
        else:
            set_("d_ssm", int(c.d_ssm))
    for k in _BOOL_FIELDS:
        v = getattr(c, k)
        if not isinstance(v, bool):
            problems.append(f"{k} must be true or false, got {v!r}")
    for k in _POS_FLOAT_FIELDS:
        v = getattr(c, k)
        if not _is_real(v) or not (math.isfinite(v) and v > 0):
            problems.append(f"{k} must be a finite number > 0, got {v!r}")
        else:
            set_(k, float(v))
    for k, inf_ok in (("dt_limit", True), ("A_init_range", False)):
        try:
            v = _decode_float(getattr(c, k), k)
        except ConfigError as e:
            problems.append(str(e))
            continue
        if (not isinstance(v, (list, tuple)) or len(v) != 2 or not all(_is_real(x) for x in v)
                or any(math.isnan(x) for x in v) or not (math.isfinite(v[0]) and (inf_ok or math.isfinite(v[1])))):
            hint = ", hi may be Infinity" if inf_ok else ""
            problems.append(f"{k} must be a pair of numbers [lo, hi] (finite{hint}),"
                            f" got {getattr(c, k)!r}")
        else:
            set_(k, tuple(float(x) for x in v))
    if not isinstance(c.name, str):
        problems.append(f"name must be a string, got {c.name!r}")
    if problems:
        raise ConfigError("invalid Mamba2 config: " + "; ".join(problems))


@dataclass(frozen=True)
class Mamba2Config:
    # --- model (MambaConfig) ---
    d_model: int = 768
    n_layer: int = 24
    vocab_size: int = 50277
    pad_vocab_size_multiple: int = 16
    tie_embeddings: bool = True
    residual_in_fp32: bool = True
    rms_norm: bool = True
    norm_epsilon: float = 1e-5
    d_intermediate: int = 0
    # --- ssm_cfg (Mamba2 mixer) ---
    d_state: int = 128
    d_conv: int = 4
    expand: int = 2
    headdim: int = 64
    d_ssm: int | None = None
    ngroups: int = 1
    chunk_size: int = 256
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    dt_limit: tuple[float, float] = (0.0, math.inf)
    A_init_range: tuple[float, float] = (1.0, 16.0)
    D_has_hdim: bool = False
    rmsnorm: bool = True
    norm_before_gate: bool = False
    bias: bool = False
    conv_bias: bool = True
    # gated-norm epsilon is hard-coded to 1e-5 in mamba_ssm's Mamba2 (RMSNormGated(eps=1e-5)).
    mixer_norm_epsilon: float = 1e-5
    name: str = field(default="custom", compare=False)

    # ------------------------------------------------------------------ derived
    def __post_init__(self) -> None:
        self.validate()

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def ssm_dim(self) -> int:
        """``d_ssm`` (defaults to ``d_inner``)."""
        return self.d_inner if self.d_ssm is None else self.d_ssm

    @property
    def nheads(self) -> int:
        return self.ssm_dim // self.headdim

    @property
    def d_mlp(self) -> int:
        """Width of the gated-MLP side branch inside the mixer (``d_inner - d_ssm``)."""
        return self.d_inner - self.ssm_dim

    @property
    def conv_dim(self) -> int:
        return self.ssm_dim + 2 * self.ngroups * self.d_state

    @property
    def d_in_proj(self) -> int:
        return 2 * self.d_inner + 2 * self.ngroups * self.d_state + self.nheads

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_size_multiple
        v = self.vocab_size
        return v if m <= 1 else v + (m - v % m) % m

    @property
    def dt_limit_active(self) -> bool:
        return self.dt_limit != (0.0, math.inf)

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        _check_types(self)
        if self.d_intermediate != 0:
            raise ConfigError(
                f"d_intermediate={self.d_intermediate}: MLP blocks after the mixer are not supported "
                "(only pure Mamba-2 stacks with d_intermediate=0 are)"
            )
        if not self.rms_norm:
            raise ConfigError("rms_norm=False (LayerNorm blocks) is not supported; Mamba-2 checkpoints use RMSNorm")
        if self.ssm_dim % self.headdim:
            raise ConfigError(f"d_ssm={self.ssm_dim} is not a multiple of headdim={self.headdim}")
        if self.ssm_dim > self.d_inner:
            raise ConfigError(f"d_ssm={self.ssm_dim} exceeds d_inner=expand*d_model={self.d_inner}")
        if self.nheads % self.ngroups:
            raise ConfigError(f"nheads={self.nheads} is not a multiple of ngroups={self.ngroups}")
        if self.ssm_dim % self.ngroups:
            raise ConfigError(f"d_ssm={self.ssm_dim} is not a multiple of ngroups={self.ngroups}")
        lo, hi = self.dt_limit
        if not (0.0 <= lo < hi):
            raise ConfigError(f"dt_limit must satisfy 0 <= lo < hi, got {self.dt_limit}")
        if not self.rmsnorm:
            raise ConfigError("rmsnorm=False (ungated z path inside the scan) is not supported")
        lo, hi = self.A_init_range
        if not 0 < lo <= hi:
            raise ConfigError(f"A_init_range must satisfy 0 < lo <= hi, got {self.A_init_range}")
        if not self.dt_min <= self.dt_max:
            raise ConfigError(f"dt_min={self.dt_min} exceeds dt_max={self.dt_max}")
        if self.num_params() > MAX_PARAMS:
            raise ConfigError(f"num_params={self.num_params():.3e} (from d_model={self.d_model}, "
                              f"n_layer={self.n_layer}, "
                              f"vocab_size={self.vocab_size}, expand, d_state, ...) exceeds the supported 2**40")

    # ------------------------------------------------------------------ parsing
    @classmethod
    def from_state_spaces(cls, d: dict[str, Any], name: str = "custom") -> Mamba2Config:
        if not isinstance(d, dict):
            raise ConfigError(f"config must be a JSON object, got {type(d).__name__}")
        d = dict(d)
        missing = [k for k in ("d_model", "n_layer", "vocab_size") if k not in d]
        if missing:
            raise ConfigError(f"missing required field(s) {missing} (mamba_ssm's MambaConfig defaults differ from "
                              f"every published checkpoint, so they are not guessed)")
        unknown_top = set(d) - {f.name for f in dataclasses.fields(cls)} - _TOP_IGNORED - {"ssm_cfg", "attn_layer_idx"}
        if unknown_top:
            raise ConfigError(f"unknown config field(s): {sorted(unknown_top)}")
        attn = d.pop("attn_layer_idx", None)
        if attn is not None and not isinstance(attn, list):
            raise ConfigError(f"attn_layer_idx must be a list, got {attn!r}")
        if attn:
            raise ConfigError(f"attn_layer_idx={attn}: hybrid attention layers are not supported")
        ssm_cfg = d.pop("ssm_cfg", None)
        if ssm_cfg is not None and not isinstance(ssm_cfg, dict):
            raise ConfigError(f"ssm_cfg must be an object, got {ssm_cfg!r}")
        ssm_cfg = dict(ssm_cfg or {})
        layer = ssm_cfg.get("layer", "Mamba2")
        if layer != "Mamba2":
            raise ConfigError(f"ssm_cfg.layer={layer!r}: only 'Mamba2' is supported")
        unknown_ssm = set(ssm_cfg) - set(_SSM_DEFAULTS) - _SSM_IGNORED
        if unknown_ssm:
            raise ConfigError(f"unknown ssm_cfg field(s): {sorted(unknown_ssm)}")
        for k in _TOP_IGNORED:
            d.pop(k, None)
        kw: dict[str, Any] = dict(d)
        # mamba_ssm's MambaConfig reads a missing field as 8 (mamba_ssm 2.2.2 models/config_mamba.py), not
        # as this dataclass's 16 (the published checkpoints all give 16 explicitly)
        kw.setdefault("pad_vocab_size_multiple", MAMBA_SSM_PAD_VOCAB_SIZE_MULTIPLE)
        for k, default in _SSM_DEFAULTS.items():
            kw[k] = _decode_float(ssm_cfg.get(k, default), f"ssm_cfg.{k}")
        if kw.get("d_ssm") is None:
            kw["d_ssm"] = None
        return cls(name=name, **kw)

    @classmethod
    def from_hf(cls, d: dict[str, Any], name: str = "custom") -> Mamba2Config:
        """Parse a transformers ``Mamba2Config`` dict (every field type-checked before use)."""
        if not isinstance(d, dict):
            raise ConfigError(f"config must be a JSON object, got {type(d).__name__}")
        d = {k: _decode_float(v, k) for k, v in d.items()}
        if d.get("model_type", "mamba2") != "mamba2":
            raise ConfigError(f"model_type={d.get('model_type')!r}: expected 'mamba2'")
        missing = [k for k in ("hidden_size", "num_hidden_layers", "vocab_size") if k not in d]
        if missing:
            raise ConfigError(f"missing required field(s) {missing} (transformers' defaults are not guessed)")

        def pos_int(key, default=None):
            v = d.get(key, default)
            if not _is_int(v) or not 0 < v <= (1 << 31) - 1:
                raise ConfigError(f"invalid Mamba2 config: {key} must be a positive integer, got {v!r}")
            return int(v)

        hidden = pos_int("hidden_size")
        expand = pos_int("expand", 2)
        nheads = None if d.get("num_heads") is None else pos_int("num_heads")
        headdim = pos_int("head_dim", 64)
        d_inner = expand * hidden
        d_ssm = None
        if nheads is not None and nheads * headdim != d_inner:
            d_ssm = nheads * headdim
        hf_vocab = d["vocab_size"]
        # HF configs store the already-padded vocabulary size.
        tie = d.get("tie_word_embeddings", True)
        limit = d.get("time_step_limit", (0.0, math.inf))
        try:
            return cls._from_hf_fields(d, name, hidden, expand, headdim, d_ssm, hf_vocab, tie, limit)
        except ConfigError as e:  # name the fields as the HF config spells them
            msg = str(e)
            for ours, theirs in _HF_NAMES.items():
                msg = re.sub(rf"\b{ours}\b(?= must| exceeds|=)", theirs, msg)
            raise ConfigError(msg) from None

    @classmethod
    def _from_hf_fields(cls, d, name, hidden, expand, headdim, d_ssm, hf_vocab, tie, limit) -> Mamba2Config:
        return cls(
            name=name,
            d_model=hidden,
            n_layer=d["num_hidden_layers"],
            vocab_size=hf_vocab,
            pad_vocab_size_multiple=_hf_pad_multiple(d.get("pad_vocab_size_multiple", HF_PAD_VOCAB_SIZE_MULTIPLE),
                                                     hf_vocab),
            tie_embeddings=tie,
            residual_in_fp32=d.get("residual_in_fp32", True),
            norm_epsilon=d.get("layer_norm_epsilon", 1e-5),
            d_state=d.get("state_size", 128),
            d_conv=d.get("conv_kernel", 4),
            expand=expand,
            headdim=headdim,
            d_ssm=d_ssm,
            ngroups=d.get("n_groups", 1),
            chunk_size=d.get("chunk_size", 256),
            dt_min=d.get("time_step_min", 0.001),
            dt_max=d.get("time_step_max", 0.1),
            dt_init_floor=d.get("time_step_floor", 1e-4),
            dt_limit=tuple(limit) if isinstance(limit, (list, tuple)) else limit,
            rmsnorm=True,
            # The transformers layout's ``norm_before_gate`` is not read: every implementation that runs
            # these checkpoints gates before the norm, norm(y · silu(z)), whatever the field says
            # (Mamba-Codestral-7B's published config.json says true).  mamba_ssm 2.2.2: the field is no
            # part of ``MambaConfig`` (models/config_mamba.py: only ``ssm_cfg`` reaches the mixer) and
            # ``Mamba2.__init__(norm_before_gate=False)`` (modules/mamba2.py:49) passes it to
            # ``RMSNormGated`` (mamba2.py:142); mistral-inference builds Codestral with
            # ``ssm_cfg={"ngroups": n_groups, "layer": "Mamba2"}``, so the default.  transformers 5.x
            # modeling_mamba2.py: ``MambaRMSNormGated.forward`` multiplies by silu(gate) before the
            # norm, and the fused path passes ``norm_before_gate=False`` (line 497).  llama.cpp
            # src/models/mamba-base.cpp: ``ggml_swiglu_split(z, y)`` then the grouped RMS norm.
            # (The state-spaces layout's ``ssm_cfg.norm_before_gate`` is a real mamba_ssm argument and is read.)
            norm_before_gate=False,
            bias=d.get("use_bias", False),
            conv_bias=d.get("use_conv_bias", True),
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any], name: str = "custom") -> Mamba2Config:
        if not isinstance(d, dict):
            raise ConfigError(f"config must be a JSON object, got {type(d).__name__}")
        if "hidden_size" in d or d.get("model_type") == "mamba2":
            return cls.from_hf(d, name=name)
        if "d_model" in d:
            return cls.from_state_spaces(d, name=name)
        raise ConfigError("unrecognised config: expected a mamba_ssm config.json (d_model, n_layer, ssm_cfg) "
                          "or a transformers Mamba2Config (hidden_size, num_hidden_layers, ...)")

    @classmethod
    def from_json(cls, path: str | Path) -> Mamba2Config:
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, huge ints, deep nesting
            raise ConfigError(f"config file {path} is not valid JSON: {type(e).__name__}: {str(e)[:200]}") from None
        except OSError as e:
            raise ConfigError(f"config file {path} cannot be read: {e}") from None
        if not isinstance(d, dict):
            raise ConfigError(f"config file {path} does not hold a JSON object")
        return cls.from_dict(d, name=path.parent.name or path.stem)

    # ------------------------------------------------------------------ writing
    def to_state_spaces(self) -> dict[str, Any]:
        """The mamba_ssm ``config.json`` dict (what ``MambaLMHeadModel`` reads)."""
        ssm = {"layer": "Mamba2"}
        for k, default in _SSM_DEFAULTS.items():
            v = getattr(self, k)
            if isinstance(default, tuple):
                v = list(v)
                if k == "dt_limit" and v == [0.0, math.inf]:
                    continue
                default = list(default)
            if v != default:
                ssm[k] = v
        return {
            "d_model": self.d_model,
            "d_intermediate": self.d_intermediate,
            "n_layer": self.n_layer,
            "vocab_size": self.vocab_size,
            "ssm_cfg": ssm,
            "attn_layer_idx": [],
            "attn_cfg": {},
            "rms_norm": self.rms_norm,
            "residual_in_fp32": self.residual_in_fp32,
            "fused_add_norm": True,
            "pad_vocab_size_multiple": self.pad_vocab_size_multiple,
            "tie_embeddings": self.tie_embeddings,
        }

    def to_hf(self) -> dict[str, Any]:
        """A transformers ``Mamba2Config`` dict (vocab already padded, infinity HF-encoded)."""
        lo, hi = self.dt_limit
        enc = lambda x: {"__float__": "Infinity"} if math.isinf(x) else x
        return {
            "architectures": ["Mamba2ForCausalLM"],
            "model_type": "mamba2",
            "hidden_size": self.d_model,
            "num_hidden_layers": self.n_layer,
            "vocab_size": self.padded_vocab_size,
            "pad_vocab_size_multiple": self.pad_vocab_size_multiple,
            "tie_word_embeddings": self.tie_embeddings,
            "residual_in_fp32": self.residual_in_fp32,
            "layer_norm_epsilon": self.norm_epsilon,
            "state_size": self.d_state,
            "conv_kernel": self.d_conv,
            "expand": self.expand,
            "head_dim": self.headdim,
            "num_heads": self.nheads,
            "n_groups": self.ngroups,
            "chunk_size": self.chunk_size,
            "time_step_min": self.dt_min,
            "time_step_max": self.dt_max,
            "time_step_floor": self.dt_init_floor,
            "time_step_limit": [enc(lo), enc(hi)],
            "norm_before_gate": self.norm_before_gate,
            "use_bias": self.bias,
            "use_conv_bias": self.conv_bias,
            "rms_norm": True,
            "hidden_act": "silu",
            "bos_token_id": 0,
            "eos_token_id": 0,
            "pad_token_id": 1,
        }

    def replace(self, **kw: Any) -> Mamba2Config:
        return dataclasses.replace(self, **kw)

    def num_params(self) -> int:
        """Unique parameter count (tied LM head counted once), from the parameter table."""
        return count_params(self)


def _ss(name: str, d_model: int, n_layer: int, **kw: Any) -> Mamba2Config:
    return Mamba2Config(name=name, d_model=d_model, n_layer=n_layer, **kw)


# The five state-spaces checkpoints (shapes match ../shared/data/mamba2-configs), plus tiny
# presets for tests.  ``tiny-*`` presets use a small vocabulary so tests stay fast.
PRESETS: dict[str, Mamba2Config] = {
    "mamba2-130m": _ss("mamba2-130m", 768, 24),
    "mamba2-370m": _ss("mamba2-370m", 1024, 48),
    "mamba2-780m": _ss("mamba2-780m", 1536, 48),
    "mamba2-1.3b": _ss("mamba2-1.3b", 2048, 48),
    "mamba2-2.7b": _ss("mamba2-2.7b", 2560, 64),
    "tiny": _ss("tiny", 64, 2, vocab_size=250, d_state=16, headdim=16, chunk_size=16),
    "tiny-g2": _ss("tiny-g2", 64, 2, vocab_size=250, d_state=16, headdim=16, chunk_size=16, ngroups=2),
    "tiny-mlp": _ss("tiny-mlp", 64, 2, vocab_size=250, d_state=16, headdim=16, chunk_size=16, d_ssm=96, ngroups=2),
}


def get_preset(name: str) -> Mamba2Config:
    key = name.removeprefix("state-spaces/")
    if key not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[key]
