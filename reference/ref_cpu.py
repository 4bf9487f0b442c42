"""``mamba_ssm_ref_cpu``: a Mamba-2 LM assembled from mamba_ssm v2.2.2's own pure-PyTorch reference
functions, run on CPU in float32.

Which function computes what (all from ``mamba_ssm`` 2.2.2, unmodified, imported at run time):

====================================  ======================================================================
piece of the model                    computed by
====================================  ======================================================================
block pre-norm + residual add         ``ops.triton.layer_norm.rms_norm_ref(x, w, None, residual=r,
                                      prenorm=True, upcast=True, eps)``  (the reference of the fused
                                      add+RMSNorm that ``Block`` uses with ``fused_add_norm=True``)
final norm ``norm_f``                 same function, ``prenorm=False``
chunked SSD scan (prefill)            composed from ``ssd_chunk_state.chunk_state_ref`` (per-chunk states),
                                      ``ssd_state_passing.state_passing_ref`` (inter-chunk recurrence, also
                                      gives the final state) and ``ssd_chunk_scan.chunk_scan_ref`` (outputs,
                                      incl. the D skip) -- the same three calls as
                                      ``ssd_combined.ssd_chunk_scan_combined_ref``, which we cannot call
                                      directly: it returns no final state, and ``chunk_scan_ref`` asserts
                                      seqlen % chunk_size == 0, which it does not pad for
recurrent decode step                 ``selective_state_update.selective_state_update_ref``
gated RMSNorm (per group)             ``layernorm_gated.rms_norm_ref(y, w, None, z=z, eps=1e-5,
                                      group_size=d_ssm // ngroups, norm_before_gate=...)``
====================================  ======================================================================

Written here because mamba_ssm 2.2.2 has no pure-PyTorch version of them, with the semantics of
``modules/mamba2.py``:

* in_proj / out_proj / LM head: ``torch.nn.functional.linear``; embedding: ``F.embedding``;
* causal depthwise conv + SiLU: ``F.conv1d(groups=conv_dim, padding=d_conv-1)`` (mamba_ssm calls
  ``causal_conv1d_fn`` from the separate causal-conv1d package; its own fallback line for Mamba2
  in 2.2.2 is broken: it reads ``self.dconv``, which does not exist); decode keeps the (b, conv_dim,
  d_conv) rolling window of ``Mamba2.step``;
* dt = softplus(dt_raw + dt_bias) with torch's threshold 20 (as the Triton kernels), then
  clamp(dt_limit) when dt_limit != (0, inf).  The combined ref has no dt_limit argument, so the
  clamp is applied before the scan.  Note: mamba_ssm 2.2.2's *step* path ignores dt_limit; we
  clamp in both paths (no published checkpoint sets dt_limit);
* the tail of the prompt is padded to a multiple of chunk_size with dt = 0, x = B = C = 0, which
  leaves outputs at real positions and the final state unchanged.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

from ._compat import prepare_mamba_ssm_import

SHIMS = prepare_mamba_ssm_import()
# mamba_ssm 2.2.2 decorates with torch.cuda.amp.custom_fwd, deprecated in recent torch: noise only.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"mamba_ssm\.")

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from mamba_ssm.ops.triton.layer_norm import rms_norm_ref
from mamba_ssm.ops.triton.layernorm_gated import rms_norm_ref as gated_rms_norm_ref
from mamba_ssm.ops.triton.selective_state_update import selective_state_update_ref
from mamba_ssm.ops.triton.ssd_chunk_scan import chunk_scan_ref
from mamba_ssm.ops.triton.ssd_chunk_state import chunk_state_ref
from mamba_ssm.ops.triton.ssd_state_passing import state_passing_ref

FUNCTIONS = {
    "block_norm_and_residual": "mamba_ssm.ops.triton.layer_norm.rms_norm_ref(prenorm=True, upcast=True)",
    "final_norm": "mamba_ssm.ops.triton.layer_norm.rms_norm_ref(prenorm=False, upcast=True)",
    "ssd_prefill": "mamba_ssm.ops.triton.{ssd_chunk_state.chunk_state_ref, ssd_state_passing.state_passing_ref, "
                   "ssd_chunk_scan.chunk_scan_ref} (as in ssd_combined.ssd_chunk_scan_combined_ref, plus final state)",
    "ssd_step": "mamba_ssm.ops.triton.selective_state_update.selective_state_update_ref",
    "gated_norm": "mamba_ssm.ops.triton.layernorm_gated.rms_norm_ref(group_size=d_ssm//ngroups)",
    "conv1d": "torch.nn.functional.conv1d (depthwise, causal padding) + silu  [not from mamba_ssm]",
    "linear_embedding_softplus": "torch.nn.functional.{linear, embedding, softplus}  [not from mamba_ssm]",
}


class RefMamba2LM:
    """Mamba-2 LM (MambaLMHeadModel semantics) built from mamba_ssm's reference functions."""

    def __init__(self, cfg: dict[str, Any], sd: dict[str, torch.Tensor]):
        self.cfg = cfg
        s = cfg["ssm_cfg"]
        self.d_model = cfg["d_model"]
        self.n_layer = cfg["n_layer"]
        self.d_state, self.d_conv, self.headdim = s["d_state"], s["d_conv"], s["headdim"]
        self.ngroups, self.chunk_size = s["ngroups"], s["chunk_size"]
        self.d_inner = s["expand"] * self.d_model
        self.d_ssm = self.d_inner if s["d_ssm"] is None else s["d_ssm"]
        self.nheads = self.d_ssm // self.headdim
        self.d_mlp = self.d_inner - self.d_ssm
        self.conv_dim = self.d_ssm + 2 * self.ngroups * self.d_state
        self.dt_limit = tuple(s["dt_limit"])
        self.D_has_hdim = s["D_has_hdim"]
        self.norm_before_gate = s["norm_before_gate"]
        self.eps = cfg["norm_epsilon"]
        self.sd = sd

    # -------------------------------------------------------------------------- pieces
    def _w(self, i: int, name: str):
        return self.sd.get(f"backbone.layers.{i}.{name}")

    def _split(self, zxbcdt):
        m, s = self.d_mlp, self.d_ssm
        return torch.split(zxbcdt, [m, m, s, self.conv_dim, self.nheads], dim=-1)

    def _dt(self, i, dt_raw):
        dt = F.softplus(dt_raw.float() + self._w(i, "mixer.dt_bias").float())
        if self.dt_limit != (0.0, math.inf):
            dt = dt.clamp(min=self.dt_limit[0], max=self.dt_limit[1])
        return dt

    def _D(self, i):
        D = self._w(i, "mixer.D").float()
        return rearrange(D, "(h p) -> h p", p=self.headdim) if self.D_has_hdim else D

    def _gated_out(self, i, y, z, z0, x0):
        y = gated_rms_norm_ref(y, self._w(i, "mixer.norm.weight"), None, z=z, eps=1e-5,
                               group_size=self.d_ssm // self.ngroups, norm_before_gate=self.norm_before_gate)
        if self.d_mlp > 0:
            y = torch.cat([F.silu(z0) * x0, y], dim=-1)
        return F.linear(y, self._w(i, "mixer.out_proj.weight"), self._w(i, "mixer.out_proj.bias"))

    def _ssd_prefill(self, x, dt, A, B, C, D):
        """x (b,l,h,p), dt (b,l,h) f32, B/C (b,l,g,n) → y (b,l,h,p), final state (b,h,p,n)."""
        b, l, h, p = x.shape
        q = self.chunk_size
        pad = (-l) % q
        if pad:
            x = F.pad(x, (0, 0, 0, 0, 0, pad))
            B = F.pad(B, (0, 0, 0, 0, 0, pad))
            C = F.pad(C, (0, 0, 0, 0, 0, pad))
            dt = F.pad(dt, (0, 0, 0, pad))
        dtc = rearrange(dt, "b (c l) h -> b h c l", l=q).float()
        dA_cumsum = torch.cumsum(dtc * rearrange(A, "h -> h 1 1"), dim=-1)
        states = chunk_state_ref(B, x, dtc, dA_cumsum)  # (b c h p n)
        n = states.shape[-1]
        prev, final = state_passing_ref(rearrange(states, "... p n -> ... (p n)"), dA_cumsum[:, :, :, -1])
        prev = rearrange(prev, "... (p n) -> ... p n", n=n)
        final = rearrange(final, "... (p n) -> ... p n", n=n)
        y = chunk_scan_ref(B, C, x, dtc, dA_cumsum, prev, D=D, z=None)
        return y[:, :l], final

    # -------------------------------------------------------------------------- mixer
    def mixer_prefill(self, i, u):
        b, l, _ = u.shape
        zxbcdt = F.linear(u, self._w(i, "mixer.in_proj.weight"), self._w(i, "mixer.in_proj.bias"))
        z0, x0, z, xBC, dt_raw = self._split(zxbcdt)
        xBC_t = rearrange(xBC, "b l d -> b d l")
        conv_state = F.pad(xBC_t, (self.d_conv - l, 0)) if l < self.d_conv else xBC_t[..., -self.d_conv:]
        conv = F.conv1d(xBC_t, self._w(i, "mixer.conv1d.weight"), self._w(i, "mixer.conv1d.bias"),
                        padding=self.d_conv - 1, groups=self.conv_dim)[..., :l]
        xBC = F.silu(rearrange(conv, "b d l -> b l d"))
        x, B, C = torch.split(xBC, [self.d_ssm, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        A = -torch.exp(self._w(i, "mixer.A_log").float())
        y, ssm_state = self._ssd_prefill(
            rearrange(x, "b l (h p) -> b l h p", p=self.headdim), self._dt(i, dt_raw), A,
            rearrange(B, "b l (g n) -> b l g n", g=self.ngroups), rearrange(C, "b l (g n) -> b l g n", g=self.ngroups),
            self._D(i))
        out = self._gated_out(i, rearrange(y, "b l h p -> b l (h p)"), z, z0, x0)
        return out, conv_state.contiguous(), ssm_state.contiguous()

    def mixer_step(self, i, u, conv_state, ssm_state):
        """u (b, d); conv_state (b, conv_dim, d_conv) and ssm_state (b,h,p,n) are updated in place."""
        zxbcdt = F.linear(u, self._w(i, "mixer.in_proj.weight"), self._w(i, "mixer.in_proj.bias"))
        z0, x0, z, xBC, dt_raw = self._split(zxbcdt)
        conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
        conv_state[:, :, -1] = xBC
        xBC = torch.sum(conv_state * rearrange(self._w(i, "mixer.conv1d.weight"), "d 1 w -> d w"), dim=-1)
        cb = self._w(i, "mixer.conv1d.bias")
        if cb is not None:
            xBC = xBC + cb
        xBC = F.silu(xBC)
        x, B, C = torch.split(xBC, [self.d_ssm, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        A = -torch.exp(self._w(i, "mixer.A_log").float())
        D = self._D(i)
        y = selective_state_update_ref(
            ssm_state, rearrange(x, "b (h p) -> b h p", p=self.headdim),
            repeat(self._dt(i, dt_raw), "b h -> b h p", p=self.headdim),
            repeat(A, "h -> h p n", p=self.headdim, n=self.d_state),
            rearrange(B, "b (g n) -> b g n", g=self.ngroups), rearrange(C, "b (g n) -> b g n", g=self.ngroups),
            D=D if D.dim() == 2 else repeat(D, "h -> h p", p=self.headdim), z=None, dt_bias=None, dt_softplus=False)
        return self._gated_out(i, rearrange(y, "b h p -> b (h p)"), z, z0, x0)

    # -------------------------------------------------------------------------- model
    def _run(self, emb, mixer_fn):
        """Block structure of MixerModel with fused_add_norm: returns final normed h and hiddens."""
        hidden_states, residual, hiddens = emb, None, []
        for i in range(self.n_layer):
            normed, residual = rms_norm_ref(hidden_states, self._w(i, "norm.weight"), None, residual=residual,
                                            prenorm=True, eps=self.eps, upcast=True)
            if residual is not None and self.cfg["residual_in_fp32"]:
                residual = residual.float()
            if i > 0:
                hiddens.append(residual)  # stream after block i-1
            hidden_states = mixer_fn(i, normed)
        h, residual = rms_norm_ref(hidden_states, self.sd["backbone.norm_f.weight"], None, residual=residual,
                                   prenorm=True, eps=self.eps, upcast=True)
        hiddens.append(residual)
        return h, hiddens

    def _head(self, h):
        return F.linear(h, self.sd["lm_head.weight"])

    @torch.no_grad()
    def logits(self, ids):
        """ids (b, l) → logits (b, l, V) (no cache, no hidden states kept)."""
        h, _ = self._run(F.embedding(ids, self.sd["backbone.embedding.weight"]),
                         lambda i, u: self.mixer_prefill(i, u)[0])
        return self._head(h)

    @torch.no_grad()
    def prefill(self, ids):
        """ids (b, l) → logits (b, l, V), hidden (n_layer, b, l, d), cache."""
        emb = F.embedding(ids, self.sd["backbone.embedding.weight"])
        cache = {}

        def fn(i, u):
            out, conv, ssm = self.mixer_prefill(i, u)
            cache[i] = (conv, ssm)
            return out

        h, hiddens = self._run(emb, fn)
        return self._head(h), torch.stack(hiddens), cache

    @torch.no_grad()
    def step(self, tok, cache):
        """tok (b,) → logits (b, V); cache updated in place."""
        emb = F.embedding(tok, self.sd["backbone.embedding.weight"])
        h, _ = self._run(emb, lambda i, u: self.mixer_step(i, u, *cache[i]))
        return self._head(h)


def load(model_dir, device: str = "cpu"):
    from .common import read_config, read_weights

    if device != "cpu":
        raise ValueError("mamba_ssm_ref_cpu runs on CPU only")
    cfg = read_config(model_dir)
    sd, stored = read_weights(model_dir, "float32")
    return RefMamba2LM(cfg, sd), {"stored_dtype": stored, "compute_dtype": "float32"}
