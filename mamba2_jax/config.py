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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Mamba2Config", "ConfigError", "PRESETS", "get_preset"]


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


def _decode_float(v: Any) -> Any:
    """Decode HF's ``{"__float__": "Infinity"}`` encoding (and plain 'inf' strings)."""
    if isinstance(v, dict) and "__float__" in v:
        return float(v["__float__"])
    if isinstance(v, str) and v.lower() in {"inf", "infinity", "-inf", "-infinity", "nan"}:
        return float(v)
    if isinstance(v, (list, tuple)):
        return type(v)(_decode_float(x) for x in v)
    return v


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
        object.__setattr__(self, "dt_limit", tuple(float(x) for x in _decode_float(self.dt_limit)))
        object.__setattr__(self, "A_init_range", tuple(float(x) for x in self.A_init_range))
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
        problems = []
        for k in ("d_model", "n_layer", "vocab_size", "d_state", "d_conv", "expand", "headdim", "ngroups", "chunk_size"):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                problems.append(f"{k} must be a positive integer, got {v!r}")
        if problems:
            raise ConfigError("invalid Mamba2 config: " + "; ".join(problems))
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

    # ------------------------------------------------------------------ parsing
    @classmethod
    def from_state_spaces(cls, d: dict[str, Any], name: str = "custom") -> "Mamba2Config":
        d = dict(d)
        unknown_top = set(d) - {f.name for f in dataclasses.fields(cls)} - _TOP_IGNORED - {"ssm_cfg", "attn_layer_idx"}
        if unknown_top:
            raise ConfigError(f"unknown config field(s): {sorted(unknown_top)}")
        attn = d.pop("attn_layer_idx", None) or []
        if attn:
            raise ConfigError(f"attn_layer_idx={attn}: hybrid attention layers are not supported")
        ssm_cfg = dict(d.pop("ssm_cfg", None) or {})
        layer = ssm_cfg.get("layer", "Mamba2")
        if layer != "Mamba2":
            raise ConfigError(f"ssm_cfg.layer={layer!r}: only 'Mamba2' is supported")
        unknown_ssm = set(ssm_cfg) - set(_SSM_DEFAULTS) - _SSM_IGNORED
        if unknown_ssm:
            raise ConfigError(f"unknown ssm_cfg field(s): {sorted(unknown_ssm)}")
        for k in _TOP_IGNORED:
            d.pop(k, None)
        kw: dict[str, Any] = {k: v for k, v in d.items()}
        for k, default in _SSM_DEFAULTS.items():
            kw[k] = _decode_float(ssm_cfg.get(k, default))
        if kw.get("d_ssm") is None:
            kw["d_ssm"] = None
        return cls(name=name, **kw)

    @classmethod
    def from_hf(cls, d: dict[str, Any], name: str = "custom") -> "Mamba2Config":
        """Parse a transformers ``Mamba2Config`` dict."""
        d = {k: _decode_float(v) for k, v in d.items()}
        if d.get("model_type", "mamba2") != "mamba2":
            raise ConfigError(f"model_type={d.get('model_type')!r}: expected 'mamba2'")
        hidden = d["hidden_size"]
        expand = d.get("expand", 2)
        nheads = d.get("num_heads")
        headdim = d.get("head_dim", 64)
        d_inner = int(expand * hidden)
        d_ssm = None
        if nheads is not None and nheads * headdim != d_inner:
            d_ssm = nheads * headdim
        hf_vocab = d.get("vocab_size", 50288)
        # HF configs store the already-padded vocabulary size.
        tie = d.get("tie_word_embeddings", True)
        return cls(
            name=name,
            d_model=hidden,
            n_layer=d["num_hidden_layers"],
            vocab_size=hf_vocab,
            pad_vocab_size_multiple=d.get("pad_vocab_size_multiple", 16),
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
            dt_limit=tuple(d.get("time_step_limit", (0.0, math.inf))),
            rmsnorm=True,
            norm_before_gate=bool(d.get("norm_before_gate", False)),
            bias=d.get("use_bias", False),
            conv_bias=d.get("use_conv_bias", True),
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any], name: str = "custom") -> "Mamba2Config":
        if "hidden_size" in d or d.get("model_type") == "mamba2":
            return cls.from_hf(d, name=name)
        if "d_model" in d:
            return cls.from_state_spaces(d, name=name)
        raise ConfigError("unrecognised config: expected a mamba_ssm config.json (d_model, n_layer, ssm_cfg) "
                          "or a transformers Mamba2Config (hidden_size, num_hidden_layers, ...)")

    @classmethod
    def from_json(cls, path: str | Path) -> "Mamba2Config":
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"config file {path} is not valid JSON: {e}") from None
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
        enc = lambda x: {"__float__": "Infinity"} if math.isinf(x) else x  # noqa: E731
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

    def replace(self, **kw: Any) -> "Mamba2Config":
        return dataclasses.replace(self, **kw)

    def num_params(self) -> int:
        """Unique parameter count (tied LM head counted once)."""
        per_layer = (
            self.d_model  # block norm
            + self.d_in_proj * self.d_model + (self.d_in_proj if self.bias else 0)
            + self.conv_dim * self.d_conv + (self.conv_dim if self.conv_bias else 0)
            + 3 * self.nheads - (0 if not self.D_has_hdim else self.nheads - self.ssm_dim)
            + self.ssm_dim  # gated norm
            + self.d_inner * self.d_model + (self.d_model if self.bias else 0)
        )
        emb = self.padded_vocab_size * self.d_model
        head = 0 if self.tie_embeddings else emb
        return emb + head + self.n_layer * per_layer + self.d_model


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
