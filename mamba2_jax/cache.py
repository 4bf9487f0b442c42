"""The inference cache: a registered PyTree with fixed shapes.

Per layer, Mamba-2 needs two pieces of state, both independent of the sequence length:

* ``conv``: the last ``d_conv - 1`` inputs of the causal depthwise convolution,
  shape (batch, d_conv - 1, conv_dim) per layer, in the activation dtype;
* ``ssm``: the SSM state, shape (batch, nheads, headdim, d_state) per layer, always float32.

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

from .config import Mamba2Config

__all__ = ["Mamba2Cache"]


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class Mamba2Cache:
    conv: tuple  # n_layer × (b, d_conv-1, conv_dim)
    ssm: tuple  # n_layer × (b, h, p, n) float32
    seqlen: jax.Array  # (b,) int32

    @classmethod
    def zeros(cls, cfg: Mamba2Config, batch: int, dtype=jnp.float32) -> Mamba2Cache:
        return cls(
            conv=tuple(jnp.zeros((batch, cfg.d_conv - 1, cfg.conv_dim), dtype) for _ in range(cfg.n_layer)),
            ssm=tuple(jnp.zeros((batch, cfg.nheads, cfg.headdim, cfg.d_state), jnp.float32)
                      for _ in range(cfg.n_layer)),
            seqlen=jnp.zeros((batch,), jnp.int32),
        )

    def stacked(self) -> tuple[jax.Array, jax.Array]:
        """(conv, ssm) as (n_layer, ...) arrays."""
        return jnp.stack(self.conv), jnp.stack(self.ssm)

    @property
    def batch(self) -> int:
        return self.ssm[0].shape[0]

    def replace(self, **kw) -> Mamba2Cache:
        return Mamba2Cache(**{**{"conv": self.conv, "ssm": self.ssm, "seqlen": self.seqlen}, **kw})
