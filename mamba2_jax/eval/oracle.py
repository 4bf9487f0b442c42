"""An independent float64 NumPy oracle for Mamba-2: a plain per-token sequential recurrence.

Written from the mamba_ssm v2.2.2 semantics directly on the state-spaces tensors (torch layout),
sharing no code with ``mamba2_jax``: no chunking, no einsum, no stacked layers.
"""

from __future__ import annotations

import numpy as np

__all__ = ["OracleModel", "VARIANTS", "CHUNKS", "rel_err", "perturb_state_dict", "perturbed_sd", "oracle_run",
           "jax_cache_from_oracle"]


def _silu(v):
    return v / (1.0 + np.exp(-v))


def _softplus(v):
    return np.where(v > 20.0, v, np.log1p(np.exp(np.minimum(v, 20.0))))


def _rms(v, w, eps):
    return v / np.sqrt(np.mean(v * v, axis=-1, keepdims=True) + eps) * w


class OracleModel:
    def __init__(self, cfg, sd):
        self.cfg = cfg
        self.sd = {k: np.asarray(v, dtype=np.float64) for k, v in sd.items()}

    def init_state(self, batch):
        c = self.cfg
        conv = [np.zeros((batch, c.conv_dim, c.d_conv)) for _ in range(c.n_layer)]
        ssm = [np.zeros((batch, c.nheads, c.headdim, c.d_state)) for _ in range(c.n_layer)]
        return conv, ssm

    def _mixer_token(self, i, u, conv, ssm):
        """u: (batch, d_model) one token; conv (batch, conv_dim, d_conv) rolling window; ssm state."""
        c, sd = self.cfg, self.sd
        p = f"backbone.layers.{i}.mixer."
        W = sd[p + "in_proj.weight"]
        zxbcdt = u @ W.T
        if c.bias:
            zxbcdt = zxbcdt + sd[p + "in_proj.bias"]
        m, s = c.d_mlp, c.ssm_dim
        gn = c.ngroups * c.d_state
        z0 = zxbcdt[:, :m]
        x0 = zxbcdt[:, m:2 * m]
        z = zxbcdt[:, 2 * m:2 * m + s]
        xBC = zxbcdt[:, 2 * m + s:2 * m + 2 * s + 2 * gn]
        dt = zxbcdt[:, 2 * m + 2 * s + 2 * gn:]
        # conv: shift the window left, append the new input
        conv = np.concatenate([conv[:, :, 1:], xBC[:, :, None]], axis=2)
        w = sd[p + "conv1d.weight"][:, 0, :]  # (conv_dim, d_conv)
        xBC = (conv * w).sum(-1)
        if c.conv_bias:
            xBC = xBC + sd[p + "conv1d.bias"]
        xBC = _silu(xBC)
        x = xBC[:, :s]
        Bm = xBC[:, s:s + gn].reshape(-1, c.ngroups, c.d_state)
        Cm = xBC[:, s + gn:].reshape(-1, c.ngroups, c.d_state)
        dt = _softplus(dt + sd[p + "dt_bias"])
        lo, hi = c.dt_limit
        dt = np.clip(dt, lo, hi)
        A = -np.exp(sd[p + "A_log"])
        D = sd[p + "D"]
        hpg = c.nheads // c.ngroups
        y = np.zeros((u.shape[0], c.nheads, c.headdim))
        new_ssm = np.empty_like(ssm)
        for hh in range(c.nheads):
            gi = hh // hpg
            xh = x[:, hh * c.headdim:(hh + 1) * c.headdim]  # (b, p)
            decay = np.exp(dt[:, hh] * A[hh])[:, None, None]
            st = ssm[:, hh] * decay + dt[:, hh][:, None, None] * xh[:, :, None] * Bm[:, gi][:, None, :]
            new_ssm[:, hh] = st
            dh = D[hh * c.headdim:(hh + 1) * c.headdim] if c.D_has_hdim else D[hh]
            y[:, hh] = (st * Cm[:, gi][:, None, :]).sum(-1) + dh * xh
        y = y.reshape(u.shape[0], s)
        # gated RMSNorm per group
        gs = s // c.ngroups
        nw = sd[p + "norm.weight"]
        if not c.norm_before_gate:
            y = y * _silu(z)
        out = np.empty_like(y)
        for gi in range(c.ngroups):
            sl = slice(gi * gs, (gi + 1) * gs)
            out[:, sl] = _rms(y[:, sl], nw[sl], c.mixer_norm_epsilon)
        if c.norm_before_gate:
            out = out * _silu(z)
        if m > 0:
            out = np.concatenate([_silu(z0) * x0, out], axis=-1)
        o = out @ sd[p + "out_proj.weight"].T
        if c.bias:
            o = o + sd[p + "out_proj.bias"]
        return o, conv, new_ssm

    def run(self, ids, state=None):
        """ids (b, l) → logits (b, l, V), per-layer residual stream (n_layer, b, l, d), final state."""
        c, sd = self.cfg, self.sd
        ids = np.asarray(ids)
        b, l = ids.shape
        conv, ssm = state if state is not None else self.init_state(b)
        conv, ssm = list(conv), list(ssm)
        hidden = np.zeros((c.n_layer, b, l, c.d_model))
        logits = np.zeros((b, l, c.padded_vocab_size))
        E = sd["backbone.embedding.weight"]
        head = sd["lm_head.weight"] if "lm_head.weight" in sd else E
        for t in range(l):
            resid = E[ids[:, t]]
            for i in range(c.n_layer):
                hnorm = _rms(resid, sd[f"backbone.layers.{i}.norm.weight"], c.norm_epsilon)
                o, conv[i], ssm[i] = self._mixer_token(i, hnorm, conv[i], ssm[i])
                resid = resid + o
                hidden[i, :, t] = resid
            hf = _rms(resid, sd["backbone.norm_f.weight"], c.norm_epsilon)
            logits[:, t] = hf @ head.T
        return logits, hidden, (conv, ssm)


# ------------------------------------------------------------------------------ the oracle's test set
# Shared by tests/test_oracle.py and experiments/oracle_errors.py: tiny configs (ngroups 1/2, with
# and without d_mlp), perturbed weights, chunk sizes, lengths and initial states.
VARIANTS = {"g1": dict(ngroups=1), "g2": dict(ngroups=2), "g2-mlp": dict(ngroups=2, d_ssm=96)}
CHUNKS = (8, 16, 64)


def rel_err(a, ref):
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(a - ref)) / np.max(np.abs(ref)))


def perturb_state_dict(sd: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """Move norms, D, dt_bias and conv bias away from their init values (1, 1, ...) so that bugs
    that only show with non-trivial values (e.g. a flipped D, a wrong norm group) are visible."""
    rng = np.random.default_rng(seed + 100)
    out = dict(sd)
    for k, v in sd.items():
        if k.endswith("norm.weight") or k.endswith("norm_f.weight"):
            out[k] = (1.0 + 0.5 * rng.standard_normal(v.shape)).astype(v.dtype)
        elif k.endswith("mixer.D"):
            out[k] = (1.0 + rng.standard_normal(v.shape)).astype(v.dtype)
        elif k.endswith("dt_bias"):
            out[k] = (v + rng.uniform(-1, 2, v.shape)).astype(v.dtype)
        elif k.endswith("conv1d.bias"):
            out[k] = (v + 0.3 * rng.standard_normal(v.shape)).astype(v.dtype)
    out["lm_head.weight"] = out["backbone.embedding.weight"]
    return out


def perturbed_sd(cfg, seed):
    """Random init (:func:`mamba2_jax.params.init_state_dict`), then :func:`perturb_state_dict`."""
    from ..params import init_state_dict

    return perturb_state_dict(init_state_dict(cfg, seed), seed)


_ORACLE_CACHE = {}


def oracle_run(variant, with_init):
    """The oracle's run of one test-set variant, computed once: (cfg, state dict, oracle, ids (2, 3 ·
    max(CHUNKS) + 5), the initial state (random with ``with_init``, else None), logits, hidden)."""
    key = (variant, with_init)
    if key not in _ORACLE_CACHE:
        from ..config import get_preset

        cfg = get_preset("tiny").replace(**VARIANTS[variant], chunk_size=8)
        sd = perturbed_sd(cfg, seed=1)
        orc = OracleModel(cfg, sd)
        rng = np.random.default_rng(7)
        ids = rng.integers(0, cfg.vocab_size, (2, 3 * max(CHUNKS) + 5))
        state = None
        if with_init:
            conv, ssm = orc.init_state(2)
            conv = [rng.standard_normal(c.shape) for c in conv]
            ssm = [0.5 * rng.standard_normal(s.shape) for s in ssm]
            state = (conv, ssm)
        logits, hidden, _ = orc.run(ids, state)
        _ORACLE_CACHE[key] = (cfg, sd, orc, ids, state, logits, hidden)
    return _ORACLE_CACHE[key]


def jax_cache_from_oracle(cfg, state):
    """The oracle's (conv, ssm) state as a JAX :class:`~mamba2_jax.cache.Mamba2Cache`."""
    import jax.numpy as jnp

    from ..cache import Mamba2Cache

    conv, ssm = state
    return Mamba2Cache(
        conv=tuple(jnp.asarray(c[:, :, 1:].transpose(0, 2, 1), jnp.float32) for c in conv),
        ssm=tuple(jnp.asarray(s, jnp.float32) for s in ssm),
        seqlen=jnp.zeros((conv[0].shape[0],), jnp.int32),
    )
