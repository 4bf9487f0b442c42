"""Pure element-wise and matmul pieces of the Mamba-2 layer (no parameters, no modules).

``silu``, the RMS norms (mamba_ssm ``rms_norm_fn`` / ``RMSNormGated`` semantics, float32), and
``dot``, the product with a weight stored "out × in" (the torch layout) that every projection and
the LM head use.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["silu", "rms_norm", "gated_rms_norm", "dot", "F32"]

F32 = jnp.float32


def silu(x: jax.Array) -> jax.Array:
    """SiLU as ``x / (1 + exp(-x))``, the form ending in a division.

    The value is SiLU to a rounding (``jax.nn.silu`` is ``x * sigmoid(x)``), but the fusion
    boundary differs on XLA:CPU: with ``x * sigmoid(x)`` the compiler materialises only the
    sigmoid and re-derives ``x`` (the whole depthwise conv, in prefill) inside every consumer
    fusion: 7 copies of the conv per layer on the 130m shape.  A division at the root is "expensive"
    to XLA, so the activation is computed once and read by its consumers.
    """
    return x / (1.0 + jnp.exp(-x))


def rms_norm(x: jax.Array, w: jax.Array, eps: float) -> jax.Array:
    """RMSNorm in float32 (mamba_ssm ``rms_norm_fn`` / ``rms_norm_ref`` semantics)."""
    xf = x.astype(F32)
    rstd = jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return xf * rstd * w.astype(F32)


def gated_rms_norm(y: jax.Array, z: jax.Array, w: jax.Array, ngroups: int, eps: float,
                   norm_before_gate: bool = False) -> jax.Array:
    """Gated RMSNorm computed per group of size d_ssm / ngroups (``RMSNormGated``), float32."""
    yf, zf = y.astype(F32), z.astype(F32)
    if not norm_before_gate:
        # y·silu(z) written to end in the division (see ``silu``): XLA:CPU then materialises the
        # gated value once, instead of re-deriving y (a transposed sum of two SSD einsums) inside
        # both the reduction and the scaling fusion
        yf = (yf * zf) / (1.0 + jnp.exp(-zf))
    shp = yf.shape
    yg = yf.reshape(shp[:-1] + (ngroups, shp[-1] // ngroups))
    rstd = jax.lax.rsqrt(jnp.mean(yg * yg, axis=-1, keepdims=True) + eps)
    out = (yg * rstd).reshape(shp) * w.astype(F32)
    if norm_before_gate:
        out = out * silu(zf)
    return out


def dot(x: jax.Array, w: jax.Array, precision, out_dtype=None) -> jax.Array:
    """x (..., k) @ w.T for a weight w (m, k) stored "out × in" (torch layout), accumulating in float32."""
    return jax.lax.dot_general(
        x, w, (((x.ndim - 1,), (1,)), ((), ())), precision=precision,
        preferred_element_type=out_dtype or F32,
    )
