"""The inference cache: a registered PyTree with fixed shapes.

Per layer, Mamba-2 needs two pieces of state, both independent of the sequence length:

* ``conv``: the last ``d_conv - 1`` inputs of the causal depthwise convolution,
  shape (batch, d_conv - 1, conv_dim) per layer, in the activation dtype;
* ``ssm``: the SSM state, shape (batch, nheads, headdim, d_state) per layer, in the state dtype of
  the precision policy: float32 (the default and the parity setting), or bfloat16 / float16 for
  storage only (the decode step and prefill still compute in float32: read, convert, compute,
  round once when storing; see ``ssd.ssd_step``).

Each is a tuple with one array per layer, not one stacked (n_layer, ...) array: the decode step
then writes every layer's new state into its own (donated, aliased) buffer.  With a stacked
array, XLA:CPU copied the whole stacked state once per layer to update one slice of it
(24 × 19 MB per token for the 130m shape, measured in the compiled HLO), which nearly doubled
the bytes moved per decode step.  ``stacked()`` gives the (n_layer, ...) view when wanted.
``seqlen`` (batch,) counts the tokens consumed.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from .config import STATE_DTYPES, Mamba2Config

__all__ = ["Mamba2Cache", "STATE_DTYPES", "check_state_dtype"]


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class Mamba2Cache:
    conv: tuple  # n_layer × (b, d_conv-1, conv_dim)
    ssm: tuple  # n_layer × (b, h, p, n) in the state dtype (float32 by default)
    seqlen: jax.Array  # (b,) int32

    @staticmethod
    def shapes(cfg: Mamba2Config, batch: int) -> dict[str, tuple[int, ...]]:
        """The shape of one layer's conv and SSM state, and of the length counter: the one place the
        cache's shapes are written (``zeros``, ``nbytes``, ``sharding.abstract_cache`` and
        ``eval.flops.state_bytes`` derive theirs from it)."""
        return {"conv": (batch, cfg.d_conv - 1, cfg.conv_dim), "ssm": (batch, cfg.nheads, cfg.headdim, cfg.d_state),
                "seqlen": (batch,)}

    @staticmethod
    def dtypes(dtype=jnp.float32, state_dtype=jnp.float32) -> dict[str, jnp.dtype]:
        """The dtype of each field: conv in the activation dtype, SSM in the state dtype, seqlen int32."""
        return {"conv": jnp.dtype(dtype), "ssm": check_state_dtype(state_dtype), "seqlen": jnp.dtype(jnp.int32)}

    @classmethod
    def zeros(cls, cfg: Mamba2Config, batch: int, dtype=jnp.float32, state_dtype=jnp.float32) -> Mamba2Cache:
        """A zero cache: conv state in ``dtype`` (the activation dtype), SSM state in ``state_dtype``."""
        sh, dt = cls.shapes(cfg, batch), cls.dtypes(dtype, state_dtype)
        return cls(
            conv=tuple(jnp.zeros(sh["conv"], dt["conv"]) for _ in range(cfg.n_layer)),
            ssm=tuple(jnp.zeros(sh["ssm"], dt["ssm"]) for _ in range(cfg.n_layer)),
            seqlen=jnp.zeros(sh["seqlen"], dt["seqlen"]),
        )

    @classmethod
    def nbytes(cls, cfg: Mamba2Config, batch: int = 1, dtype=jnp.float32, state_dtype=jnp.float32) -> dict[str, int]:
        """Bytes of a cache of ``batch`` sequences, by field over all layers ("conv", "ssm", "seqlen"),
        and their "total"."""
        sh, dt = cls.shapes(cfg, batch), cls.dtypes(dtype, state_dtype)
        layers = {"conv": cfg.n_layer, "ssm": cfg.n_layer, "seqlen": 1}
        out = {k: layers[k] * int(np.prod(sh[k])) * dt[k].itemsize for k in sh}
        out["total"] = sum(out.values())
        return out

    @classmethod
    def row_bytes(cls, cfg: Mamba2Config, dtype=jnp.float32, state_dtype=jnp.float32) -> int:
        """Bytes of one sequence's cache (batch 1): every layer's conv and SSM state, and its length counter."""
        return cls.nbytes(cfg, 1, dtype, state_dtype)["total"]

    def stacked(self) -> tuple[jax.Array, jax.Array]:
        """(conv, ssm) as (n_layer, ...) arrays."""
        return jnp.stack(self.conv), jnp.stack(self.ssm)

    @property
    def state_dtype(self) -> jnp.dtype:
        return self.ssm[0].dtype

    @property
    def batch(self) -> int:
        return self.ssm[0].shape[0]

    def replace(self, **kw) -> Mamba2Cache:
        return Mamba2Cache(**{**{"conv": self.conv, "ssm": self.ssm, "seqlen": self.seqlen}, **kw})


def check_state_dtype(state_dtype) -> jnp.dtype:
    """``state_dtype`` as a dtype, if it is one the SSM state may be stored in (``STATE_DTYPES``)."""
    dt = jnp.dtype(state_dtype)
    if dt.name not in STATE_DTYPES:
        raise ValueError(f"unsupported state dtype {dt.name!r} ({' | '.join(STATE_DTYPES)})")
    return dt
