"""The inference cache: a registered PyTree with fixed shapes.

Per layer, Mamba-2 needs two pieces of state, both independent of the sequence length:

* ``conv``: the last ``d_conv - 1`` inputs of the causal depthwise convolution,
  shape (n_layer, batch, d_conv - 1, conv_dim), in the activation dtype;
* ``ssm``: the SSM state, shape (n_layer, batch, nheads, headdim, d_state), always float32.

Layers are stacked on the leading axis so that the model can ``lax.scan`` over them, and the
cache can be donated to a compiled decode loop.  ``seqlen`` (batch,) counts the tokens consumed.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from .config import Mamba2Config

__all__ = ["Mamba2Cache"]


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class Mamba2Cache:
    conv: jax.Array  # (n_layer, b, d_conv-1, conv_dim)
    ssm: jax.Array  # (n_layer, b, h, p, n) float32
    seqlen: jax.Array  # (b,) int32

    @classmethod
    def zeros(cls, cfg: Mamba2Config, batch: int, dtype=jnp.float32) -> "Mamba2Cache":
        return cls(
            conv=jnp.zeros((cfg.n_layer, batch, cfg.d_conv - 1, cfg.conv_dim), dtype),
            ssm=jnp.zeros((cfg.n_layer, batch, cfg.nheads, cfg.headdim, cfg.d_state), jnp.float32),
            seqlen=jnp.zeros((batch,), jnp.int32),
        )

    @property
    def batch(self) -> int:
        return self.ssm.shape[1]

    def nbytes(self) -> int:
        return sum(int(x.size) * x.dtype.itemsize for x in (self.conv, self.ssm, self.seqlen))

    def replace(self, **kw) -> "Mamba2Cache":
        return Mamba2Cache(**{**{"conv": self.conv, "ssm": self.ssm, "seqlen": self.seqlen}, **kw})
