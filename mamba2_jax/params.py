"""The one table of checkpoint keys ↔ JAX parameters.

Every parameter of a Mamba-2 LM is one :class:`ParamSpec` row: its state-spaces checkpoint key
(torch layout), its shape for a config, when it exists, how it is initialised (mamba_ssm v2.2.2's
``Mamba2.__init__`` + ``_init_weights``), where it lives in the JAX model and how its layout is
converted.  Everything that needs a parameter's name, shape or dtype class reads this table:
:func:`expected_shapes`, :func:`init_state_dict`, :func:`num_params` (``Mamba2Config.num_params``),
:func:`jax_shapes` (the sharding rules' abstract params, the FLOP and byte counts), and
``loading.jax_params_from_state_dict`` / ``loading.state_dict_from_model``.

Pure numpy, and duck-typed on the config (``Mamba2Config`` is imported for type checking only), so
that ``config`` can count its parameters from this table without an import cycle.  The in_proj
output layout (:func:`in_proj_slices`) and fusing its split parts back (:func:`fuse_in_proj`) live
here too.

Row order is the order mamba_ssm creates (and randomly initialises) parameters; the random init
draws from one generator in that order, so reordering rows changes ``init_state_dict``'s output.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .config import Mamba2Config

__all__ = ["ParamSpec", "LAYER_PARAMS", "GLOBAL_PARAMS", "rows", "expected_shapes", "init_state_dict", "num_params",
           "fp32_params", "jax_shapes", "in_proj_slices", "fuse_in_proj"]

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
    decay: trained with weight decay (the matrices; norms, conv, A_log, dt_bias, D and biases are not,
    following mamba_ssm's ``_no_weight_decay``);
    to_jax / from_jax: layout conversion torch ↔ JAX (identity for the projections: in_proj,
    out_proj and the LM head keep the torch (out, in) layout, see ``ops.dot``)."""

    key: str
    name: str
    owner: str
    attr: str
    shape: Callable[[Mamba2Config], Shape]
    init: Callable[[Mamba2Config, Shape, np.random.Generator], np.ndarray]
    present: Callable[[Mamba2Config], bool] = _always
    fp32: bool = False
    decay: bool = False
    to_jax: Callable[[np.ndarray], np.ndarray] = _same
    from_jax: Callable[[np.ndarray], np.ndarray] = _same

    def jax_shape(self, cfg: Mamba2Config) -> Shape:
        """The shape in the JAX layout (``to_jax`` applied to a zero-strided stand-in: no memory)."""
        return tuple(self.to_jax(np.broadcast_to(np.zeros((), np.int8), self.shape(cfg))).shape)


LAYER_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("norm.weight", "norm", "block", "norm", lambda c: (c.d_model,), _ones),
    ParamSpec("mixer.in_proj.weight", "in_proj", "mixer", "in_proj", lambda c: (c.d_in_proj, c.d_model),
              _uniform(lambda c: 1.0 / math.sqrt(c.d_model)), decay=True),
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
              _uniform(lambda c: 1.0 / math.sqrt(c.d_inner), lambda c: 1.0 / math.sqrt(c.n_layer)), decay=True),
    ParamSpec("mixer.out_proj.bias", "out_proj_bias", "mixer", "out_proj_bias", lambda c: (c.d_model,), _zeros,
              present=lambda c: bool(c.bias)),
)

# Global rows: the embedding is created before the layers and norm_f after them; lm_head is tied to
# the embedding (the same storage) unless the config unties it.
EMBEDDING = ParamSpec("backbone.embedding.weight", "embedding", "backbone", "embedding",
                      lambda c: (c.padded_vocab_size, c.d_model), _embedding, decay=True)
NORM_F = ParamSpec("backbone.norm_f.weight", "norm_f", "backbone", "norm_f", lambda c: (c.d_model,), _ones)
LM_HEAD = ParamSpec("lm_head.weight", "lm_head", "model", "lm_head", lambda c: (c.padded_vocab_size, c.d_model),
                    _embedding, decay=True)
GLOBAL_PARAMS: tuple[ParamSpec, ...] = (EMBEDDING, NORM_F, LM_HEAD)


def layer_key(i: int, spec: ParamSpec) -> str:
    return f"backbone.layers.{i}.{spec.key}"


def rows(cfg: Mamba2Config):
    """(checkpoint key, spec, layer index or None) in creation order (the LM head excluded: it is
    the embedding unless ``cfg.tie_embeddings`` is False)."""
    yield EMBEDDING.key, EMBEDDING, None
    for i in range(cfg.n_layer):
        for spec in LAYER_PARAMS:
            if spec.present(cfg):
                yield layer_key(i, spec), spec, i
    yield NORM_F.key, NORM_F, None


def expected_shapes(cfg: Mamba2Config) -> dict[str, Shape]:
    """Tensor names and shapes of a state-spaces checkpoint for ``cfg`` (torch layout)."""
    out = {key: spec.shape(cfg) for key, spec, _ in rows(cfg)}
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
    sd = {key: spec.init(cfg, spec.shape(cfg), rng).astype(dtype) for key, spec, _ in rows(cfg)}
    sd[LM_HEAD.key] = sd[EMBEDDING.key]  # tied (an untied head starts as a copy of the embedding)
    return sd


def num_params(cfg: Mamba2Config) -> int:
    """Unique parameter count (a tied LM head counted once)."""
    per_layer = sum(math.prod(s.shape(cfg)) for s in LAYER_PARAMS if s.present(cfg))
    glob = [EMBEDDING, NORM_F] + ([] if cfg.tie_embeddings else [LM_HEAD])
    return cfg.n_layer * per_layer + sum(math.prod(s.shape(cfg)) for s in glob)


def fp32_params(cfg: Mamba2Config) -> int:
    """How many parameters the table keeps in float32 whatever the model dtype (A_log, dt_bias, D)."""
    return cfg.n_layer * sum(math.prod(s.shape(cfg)) for s in LAYER_PARAMS if s.fp32 and s.present(cfg))


def jax_shapes(cfg: Mamba2Config) -> dict[str, Any]:
    """The JAX-layout parameter tree (the structure of ``loading.jax_params_from_state_dict``) with
    ``(shape, fp32)`` leaves: ``fp32`` marks the parameters kept in float32 whatever the model dtype."""
    layers: list[dict[str, Any]] = [{} for _ in range(cfg.n_layer)]
    out: dict[str, Any] = {"layers": layers}
    for _, spec, i in rows(cfg):
        (out if i is None else layers[i])[spec.name] = (spec.jax_shape(cfg), spec.fp32)
    if not cfg.tie_embeddings:
        out[LM_HEAD.name] = (LM_HEAD.jax_shape(cfg), LM_HEAD.fp32)
    return out


# ------------------------------------------------------------------------------ in_proj layout
def in_proj_slices(cfg: Mamba2Config) -> list[tuple[str, int, int]]:
    """The fused in_proj output parts, in order, as (name, start, stop) rows of its output axis:
    [z0, x0 (the gated MLP, when d_mlp > 0), z, x, B, C, dt], as mamba_ssm splits ``zxbcdt``."""
    m, s, gn = cfg.d_mlp, cfg.ssm_dim, cfg.ngroups * cfg.d_state
    out, o = [], 0
    for k, w in (("z0", m), ("x0", m), ("z", s), ("x", s), ("B", gn), ("C", gn), ("dt", cfg.nheads)):
        if w > 0:
            out.append((k, o, o + w))
            o += w
    return out


def fuse_in_proj(cfg: Mamba2Config, parts: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
    """The fused (d_in_proj, d) in_proj weight (and bias, None without one) from its split parts
    (keys as :func:`in_proj_slices`; biases as ``"bias_" + key``)."""
    keys = [k for k, _, _ in in_proj_slices(cfg)]
    w = np.concatenate([np.asarray(parts[k]) for k in keys], axis=0)
    b = np.concatenate([np.asarray(parts["bias_" + k]) for k in keys]) if "bias_" + keys[0] in parts else None
    return w, b
