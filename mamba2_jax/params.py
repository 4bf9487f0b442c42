"""The one table of checkpoint keys ↔ JAX parameters.

Every parameter of a Mamba-2 LM is one :class:`ParamSpec` row: its state-spaces checkpoint key
(torch layout), its shape for a config, when it exists, how it is initialised (mamba_ssm v2.2.2's
``Mamba2.__init__`` + ``_init_weights``), where it lives in the JAX model and how its layout is
converted.  :func:`expected_shapes`, :func:`init_state_dict`, :func:`jax_params_from_state_dict`
and :func:`state_dict_from_model` are all driven by this table, so a parameter is described once.

Row order is the order mamba_ssm creates (and randomly initialises) parameters; the random init
draws from one generator in that order, so reordering rows changes ``init_state_dict``'s output.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import Mamba2Config

__all__ = ["ParamSpec", "LAYER_PARAMS", "GLOBAL_PARAMS", "expected_shapes", "init_state_dict",
           "jax_params_from_state_dict", "state_dict_from_model"]

Shape = tuple[int, ...]


def _same(a: np.ndarray) -> np.ndarray:
    return a


def _conv_to_jax(a: np.ndarray) -> np.ndarray:  # (conv_dim, 1, d_conv) → (d_conv, conv_dim)
    return a[:, 0, :].T


def _conv_from_jax(a: np.ndarray) -> np.ndarray:
    return a.T[:, None, :]


def _uniform(bound: Callable[[Mamba2Config], float], scale: Callable[[Mamba2Config], float] = lambda c: 1.0):
    def init(cfg: Mamba2Config, shape: Shape, rng: np.random.Generator) -> np.ndarray:
        b = bound(cfg)
        return rng.uniform(-b, b, shape) * scale(cfg)
    return init


def _ones(cfg: Mamba2Config, shape: Shape, rng: np.random.Generator) -> np.ndarray:
    return np.ones(shape)


def _zeros(cfg: Mamba2Config, shape: Shape, rng: np.random.Generator) -> np.ndarray:
    return np.zeros(shape)


def _dt_bias(cfg: Mamba2Config, shape: Shape, rng: np.random.Generator) -> np.ndarray:
    """inverse-softplus(dt), dt = exp(U[log dt_min, log dt_max]) floored at dt_init_floor."""
    dt = np.exp(rng.uniform(0, 1, shape) * (math.log(cfg.dt_max) - math.log(cfg.dt_min)) + math.log(cfg.dt_min))
    dt = np.maximum(dt, cfg.dt_init_floor)
    return dt + np.log(-np.expm1(-dt))


def _a_log(cfg: Mamba2Config, shape: Shape, rng: np.random.Generator) -> np.ndarray:
    return np.log(rng.uniform(*cfg.A_init_range, shape))


def _embedding(cfg: Mamba2Config, shape: Shape, rng: np.random.Generator) -> np.ndarray:
    return rng.normal(0.0, 0.02, shape)


def _always(cfg: Mamba2Config) -> bool:
    return True


@dataclass(frozen=True)
class ParamSpec:
    """One parameter.

    key: checkpoint key (per-layer rows: the suffix after ``backbone.layers.{i}.``);
    name: key in the JAX parameter dict (``jax_params_from_state_dict``);
    owner/attr: where the ``nnx.Param`` lives (``"block"``, ``"mixer"``, ``"backbone"``, ``"model"``);
    shape: torch-layout shape for a config;  present: whether the config has it;
    init: mamba_ssm's initialiser;  fp32: kept float32 whatever the model dtype (SSM math);
    to_jax / from_jax: layout conversion torch ↔ JAX (identity for the projections: in_proj,
    out_proj and the LM head keep the torch (out, in) layout, see ``model._dot``)."""

    key: str
    name: str
    owner: str
    attr: str
    shape: Callable[[Mamba2Config], Shape]
    init: Callable[[Mamba2Config, Shape, np.random.Generator], np.ndarray]
    present: Callable[[Mamba2Config], bool] = _always
    fp32: bool = False
    to_jax: Callable[[np.ndarray], np.ndarray] = _same
    from_jax: Callable[[np.ndarray], np.ndarray] = _same


LAYER_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("norm.weight", "norm", "block", "norm", lambda c: (c.d_model,), _ones),
    ParamSpec("mixer.in_proj.weight", "in_proj", "mixer", "in_proj", lambda c: (c.d_in_proj, c.d_model),
              _uniform(lambda c: 1.0 / math.sqrt(c.d_model))),
    ParamSpec("mixer.in_proj.bias", "in_proj_bias", "mixer", "in_proj_bias", lambda c: (c.d_in_proj,), _zeros,
              present=lambda c: bool(c.bias)),
    ParamSpec("mixer.conv1d.weight", "conv_w", "mixer", "conv_w", lambda c: (c.conv_dim, 1, c.d_conv),
              _uniform(lambda c: 1.0 / math.sqrt(c.d_conv)), to_jax=_conv_to_jax, from_jax=_conv_from_jax),
    ParamSpec("mixer.conv1d.bias", "conv_b", "mixer", "conv_b", lambda c: (c.conv_dim,),
              _uniform(lambda c: 1.0 / math.sqrt(c.d_conv)), present=lambda c: bool(c.conv_bias)),
    ParamSpec("mixer.dt_bias", "dt_bias", "mixer", "dt_bias", lambda c: (c.nheads,), _dt_bias, fp32=True),
    ParamSpec("mixer.A_log", "A_log", "mixer", "A_log", lambda c: (c.nheads,), _a_log, fp32=True),
    ParamSpec("mixer.D", "D", "mixer", "D", lambda c: (c.ssm_dim,) if c.D_has_hdim else (c.nheads,), _ones,
              fp32=True),
    ParamSpec("mixer.norm.weight", "mixer_norm", "mixer", "norm", lambda c: (c.ssm_dim,), _ones),
    ParamSpec("mixer.out_proj.weight", "out_proj", "mixer", "out_proj", lambda c: (c.d_model, c.d_inner),
              _uniform(lambda c: 1.0 / math.sqrt(c.d_inner), lambda c: 1.0 / math.sqrt(c.n_layer))),
    ParamSpec("mixer.out_proj.bias", "out_proj_bias", "mixer", "out_proj_bias", lambda c: (c.d_model,), _zeros,
              present=lambda c: bool(c.bias)),
)

# Global rows: the embedding is created before the layers and norm_f after them; lm_head is tied to
# the embedding (the same storage) unless the config unties it.
EMBEDDING = ParamSpec("backbone.embedding.weight", "embedding", "backbone", "embedding",
                      lambda c: (c.padded_vocab_size, c.d_model), _embedding)
NORM_F = ParamSpec("backbone.norm_f.weight", "norm_f", "backbone", "norm_f", lambda c: (c.d_model,), _ones)
LM_HEAD = ParamSpec("lm_head.weight", "lm_head", "model", "lm_head", lambda c: (c.padded_vocab_size, c.d_model),
                    _embedding)
GLOBAL_PARAMS: tuple[ParamSpec, ...] = (EMBEDDING, NORM_F, LM_HEAD)


def layer_key(i: int, spec: ParamSpec) -> str:
    return f"backbone.layers.{i}.{spec.key}"


def _rows(cfg: Mamba2Config):
    """(checkpoint key, spec, layer index or None) in creation order."""
    yield EMBEDDING.key, EMBEDDING, None
    for i in range(cfg.n_layer):
        for spec in LAYER_PARAMS:
            if spec.present(cfg):
                yield layer_key(i, spec), spec, i
    yield NORM_F.key, NORM_F, None


def expected_shapes(cfg: Mamba2Config) -> dict[str, Shape]:
    """Tensor names and shapes of a state-spaces checkpoint for ``cfg`` (torch layout)."""
    out = {key: spec.shape(cfg) for key, spec, _ in _rows(cfg)}
    out[LM_HEAD.key] = LM_HEAD.shape(cfg)
    return out


def init_state_dict(cfg: Mamba2Config, seed: int = 0, dtype: str = "float32") -> dict[str, np.ndarray]:
    """Random weights initialised as mamba_ssm v2.2.2 does (``Mamba2.__init__`` + ``_init_weights``).

    * in_proj / out_proj: nn.Linear's kaiming-uniform, U(±1/sqrt(fan_in)); out_proj additionally
      rescaled by 1/sqrt(n_layer) (``rescale_prenorm_residual``); linear biases zero.
    * conv1d: U(±1/sqrt(d_conv)) for weight and bias (depthwise: fan_in = d_conv).
    * dt_bias = inverse-softplus(dt), dt = exp(U[log dt_min, log dt_max]) floored at dt_init_floor.
    * A_log = log(U[A_init_range]),  D = 1,  norms = 1,  embedding ~ N(0, 0.02), tied LM head.
    """
    rng = np.random.default_rng(seed)
    sd = {key: spec.init(cfg, spec.shape(cfg), rng).astype(dtype) for key, spec, _ in _rows(cfg)}
    sd[LM_HEAD.key] = sd[EMBEDDING.key]  # tied (an untied head starts as a copy of the embedding)
    return sd


def jax_params_from_state_dict(cfg: Mamba2Config, sd: dict[str, np.ndarray], dtype=None) -> dict[str, Any]:
    """state-spaces tensors (torch layout, numpy) → JAX-layout parameter dict (one dict per layer).

    Matrices and norms take ``dtype`` (default float32); A_log, dt_bias and D stay float32 (the
    SSM math is fp32)."""
    import jax.numpy as jnp

    npd = np.dtype(jnp.dtype(dtype or jnp.float32))

    def cast(spec: ParamSpec, a) -> Any:
        return jnp.asarray(spec.to_jax(np.asarray(a)).astype(np.float32 if spec.fp32 else npd))

    layers: list[dict[str, Any]] = [{} for _ in range(cfg.n_layer)]
    params: dict[str, Any] = {"layers": layers}
    for key, spec, i in _rows(cfg):
        (params if i is None else layers[i])[spec.name] = cast(spec, sd[key])
    if not cfg.tie_embeddings:
        params[LM_HEAD.name] = cast(LM_HEAD, sd[LM_HEAD.key])
    return params


def _param_of(model, spec: ParamSpec, i: int | None):
    if spec.owner == "model":
        return getattr(model, spec.attr)
    if spec.owner == "backbone":
        return getattr(model.backbone, spec.attr)
    blk = model.backbone.layers[i]
    return getattr(blk if spec.owner == "block" else blk.mixer, spec.attr)


def state_dict_from_model(model) -> dict[str, np.ndarray]:
    """The inverse of :func:`jax_params_from_state_dict` (torch layout, numpy, model dtype).  Works for
    sharded models too: arrays are gathered to the host, and an in_proj split into its output parts
    for a mesh (:mod:`mamba2_jax.sharding`) is fused back."""
    from .sharding import fused_in_proj, to_host

    cfg = model.cfg
    sd: dict[str, np.ndarray] = {}
    for key, spec, i in _rows(cfg):
        if spec.name in ("in_proj", "in_proj_bias") and model.backbone.layers[i].mixer.in_proj is None:
            w, b = fused_in_proj(model.backbone.layers[i].mixer)
            sd[key] = spec.from_jax(w if spec.name == "in_proj" else b)
        else:
            sd[key] = spec.from_jax(to_host(_param_of(model, spec, i)[...]))
    head = model.lm_head
    sd[LM_HEAD.key] = sd[EMBEDDING.key] if head is None else LM_HEAD.from_jax(to_host(head[...]))
    return sd
