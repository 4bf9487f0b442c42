"""Mamba-2 language model as Flax NNX modules.

Structure (mamba_ssm v2.2.2 ``MambaLMHeadModel``):

    embedding → n_layer × [RMSNorm → Mamba2 mixer → + residual] → RMSNorm → tied LM head

Each layer owns its parameters (CPU), or each parameter is one array stacked over layers (the
TPU/GPU policy); see ``Mamba2Backbone`` for how layers are run (decode unrolled; prefill unrolled on
CPU, a ``lax.scan`` over layers with ``scan_layers=True``, the TPU/GPU policy).

Parameter layout (JAX side):

    in_proj  (d_in_proj, d_model)      conv_w (d_conv, conv_dim)     out_proj (d_model, d_inner)

The projections keep the torch "out × in" layout and the dot contracts the weight's axis 1 (as the
LM head does with the embedding): measured faster for the memory-bound decode GEMV on XLA:CPU
than "in × out" (results/decode_formulations/), and a checkpoint loads without a transpose.

The in_proj output is split, as in mamba_ssm, into [z0, x0, z, xBC, dt] with widths
[d_mlp, d_mlp, d_ssm, d_ssm + 2·ngroups·d_state, nheads]; xBC goes through the causal depthwise
conv (+bias) and SiLU and is split into [x, B, C].
"""

from __future__ import annotations

import weakref
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from .cache import Mamba2Cache, check_state_dtype
from .config import Mamba2Config
from .ops import F32, dot, gated_rms_norm, rms_norm, silu
from .params import in_proj_slices
from .sharding import constrain_cache
from .ssd import discretize_dt, ssd_chunked, ssd_step

__all__ = ["Mamba2Mixer", "Mamba2Block", "Mamba2Backbone", "Mamba2LMHeadModel"]



def _at_position(h: jax.Array, pos: jax.Array) -> jax.Array:
    """h (b, l, d) at each row's position ``pos`` (b,) → (b, d)."""
    idx = jnp.broadcast_to(pos[:, None, None], (h.shape[0], 1, h.shape[-1]))
    return jnp.take_along_axis(h, idx, axis=1)[:, 0]


class Mamba2Mixer(nnx.Module):
    """The Mamba-2 mixer (mamba_ssm ``Mamba2``) of one layer."""

    def __init__(self, cfg: Mamba2Config, params: dict[str, Any], precision=None, scan_chunk_size=None,
                 step_block_bytes=None, chunk_loop: bool = False):
        self.cfg = cfg
        self.precision = precision
        # The chunk size and the decode step's state block are execution choices, not part of the
        # math (outputs are invariant to them to fp32 rounding; tested).  The loading policy picks
        # them per target platform.
        self.scan_chunk_size = int(scan_chunk_size or cfg.chunk_size)
        self.step_block_bytes = None if step_block_bytes is None else int(step_block_bytes)
        self.chunk_loop = bool(chunk_loop)  # prefill's SSD chunks one at a time (ssd_chunked's chunk_loop)
        if "in_proj_parts" in params:  # split into its output parts for a mesh (see sharding.py)
            self.in_proj = None
            self.in_proj_parts = nnx.Dict({k: nnx.Param(v) for k, v in params["in_proj_parts"].items()})
        else:
            self.in_proj = nnx.Param(params["in_proj"])
        self.in_proj_bias = nnx.Param(params["in_proj_bias"]) if "in_proj_bias" in params else None
        self.conv_w = nnx.Param(params["conv_w"])
        self.conv_b = nnx.Param(params["conv_b"]) if "conv_b" in params else None
        self.dt_bias = nnx.Param(params["dt_bias"])
        self.A_log = nnx.Param(params["A_log"])
        self.D = nnx.Param(params["D"])
        self.norm = nnx.Param(params["mixer_norm"])
        self.out_proj = nnx.Param(params["out_proj"])
        self.out_proj_bias = nnx.Param(params["out_proj_bias"]) if "out_proj_bias" in params else None

    # -- shared pieces ---------------------------------------------------------------------
    def _in_proj(self, u):
        """u (..., d) → (z0, x0, z, xBC, dt), the in_proj output split as mamba_ssm splits it."""
        with jax.named_scope("in_proj"):
            return self._in_proj_split(u)

    def _in_proj_split(self, u):
        cfg = self.cfg
        at = {k: (a, b) for k, a, b in in_proj_slices(cfg)}
        if self.in_proj is None:
            # split for a mesh: one matmul per output part, so each part keeps its own sharding
            parts = self.in_proj_parts

            def part(k):
                y = dot(u, parts[k][...], self.precision, out_dtype=F32)
                if "bias_" + k in parts:
                    y = y + parts["bias_" + k][...].astype(F32)
                return y.astype(u.dtype)

            got = {k: part(k) for k in at}
            xBC = jnp.concatenate([got["x"], got["B"], got["C"]], axis=-1)
        else:
            zxbcdt = dot(u, self.in_proj[...], self.precision, out_dtype=F32)
            if self.in_proj_bias is not None:
                zxbcdt = zxbcdt + self.in_proj_bias[...].astype(F32)
            zxbcdt = zxbcdt.astype(u.dtype)
            got = {k: zxbcdt[..., a:b] for k, (a, b) in at.items()}
            xBC = zxbcdt[..., at["x"][0]:at["C"][1]]  # one contiguous slice
        empty = got["z"][..., :0]
        return got.get("z0", empty), got.get("x0", empty), got["z"], xBC, got["dt"]

    def _split_xbc(self, xBC):
        cfg = self.cfg
        s, gn = cfg.ssm_dim, cfg.ngroups * cfg.d_state
        return xBC[..., :s], xBC[..., s:s + gn], xBC[..., s + gn:]

    def _out(self, y, z, z0, x0, dtype):
        cfg = self.cfg
        with jax.named_scope("gate_norm"):
            y = gated_rms_norm(y, z, self.norm[...], cfg.ngroups, cfg.mixer_norm_epsilon, cfg.norm_before_gate)
            y = y.astype(dtype)
            if cfg.d_mlp > 0:
                y = jnp.concatenate([(silu(z0.astype(F32)) * x0.astype(F32)).astype(dtype), y], axis=-1)
        with jax.named_scope("out_proj"):
            out = dot(y, self.out_proj[...], self.precision, out_dtype=F32)
            if self.out_proj_bias is not None:
                out = out + self.out_proj_bias[...].astype(F32)
        return out

    def _A(self):
        return -jnp.exp(self.A_log[...].astype(F32))

    def _D(self):
        D = self.D[...].astype(F32)
        return D.reshape(self.cfg.nheads, self.cfg.headdim) if self.cfg.D_has_hdim else D

    # -- prefill ---------------------------------------------------------------------------
    def prefill(self, u, conv_state, ssm_state, lengths=None):
        """u (b, l, d) → (out (b, l, d) float32, new conv_state, new ssm_state).

        ``lengths`` (b,) marks right padding: positions ≥ length get dt = 0 and x = 0, so they
        leave the SSM state untouched, and the conv state is taken at each sequence's end.
        """
        cfg = self.cfg
        b, l, _ = u.shape
        z0, x0, z, xBC, dt_raw = self._in_proj(u)
        k = cfg.d_conv
        with jax.named_scope("conv"):
            # causal depthwise conv over [previous k-1 inputs, xBC]
            xpad = jnp.concatenate([conv_state.astype(xBC.dtype), xBC], axis=1)  # (b, k-1+l, cd)
            w = self.conv_w[...].astype(F32)
            acc = sum(xpad[:, j:j + l].astype(F32) * w[j] for j in range(k))
            if self.conv_b is not None:
                acc = acc + self.conv_b[...].astype(F32)
            xBC_act = silu(acc).astype(u.dtype)
            if lengths is None:
                new_conv = xpad[:, l:]  # last k-1 inputs
            else:
                idx = lengths[:, None] + jnp.arange(k - 1)[None, :]  # positions (in xpad) of the last k-1 real inputs
                new_conv = jnp.take_along_axis(xpad, idx[:, :, None], axis=1)
        x, B, C = self._split_xbc(xBC_act)
        dt = discretize_dt(dt_raw, self.dt_bias[...], cfg.dt_limit)  # (b, l, h) f32
        if lengths is not None:
            valid = jnp.arange(l)[None, :] < lengths[:, None]
            dt = jnp.where(valid[..., None], dt, 0.0)
            x = jnp.where(valid[..., None], x, jnp.zeros_like(x))
        with jax.named_scope("ssd_chunk_scan"):
            y, new_ssm = ssd_chunked(
                x.reshape(b, l, cfg.nheads, cfg.headdim), dt, self._A(),
                B.reshape(b, l, cfg.ngroups, cfg.d_state), C.reshape(b, l, cfg.ngroups, cfg.d_state),
                self.scan_chunk_size, D=self._D(), initial_state=ssm_state, precision=self.precision,
                chunk_loop=self.chunk_loop,
            )
        out = self._out(y.reshape(b, l, cfg.ssm_dim), z, z0, x0, u.dtype)
        return out, new_conv.astype(conv_state.dtype), new_ssm.astype(ssm_state.dtype)

    # -- decode step -----------------------------------------------------------------------
    def step(self, u, conv_state, ssm_state):
        """u (b, d) one token → (out (b, d) float32, new conv_state, new ssm_state)."""
        cfg = self.cfg
        b = u.shape[0]
        z0, x0, z, xBC, dt_raw = self._in_proj(u)
        with jax.named_scope("conv"):
            window = jnp.concatenate([conv_state.astype(xBC.dtype), xBC[:, None, :]], axis=1)  # (b, k, cd)
            w = self.conv_w[...].astype(F32)
            acc = sum(window[:, j].astype(F32) * w[j] for j in range(cfg.d_conv))  # one fused loop, no transpose
            if self.conv_b is not None:
                acc = acc + self.conv_b[...].astype(F32)
            xBC_act = silu(acc).astype(u.dtype)
        x, B, C = self._split_xbc(xBC_act)
        dt = discretize_dt(dt_raw, self.dt_bias[...], cfg.dt_limit)
        with jax.named_scope("ssd_step"):
            y, new_ssm = ssd_step(
                ssm_state, x.reshape(b, cfg.nheads, cfg.headdim), dt, self._A(),
                B.reshape(b, cfg.ngroups, cfg.d_state), C.reshape(b, cfg.ngroups, cfg.d_state), D=self._D(),
                precision=self.precision, block_bytes=self.step_block_bytes,
            )
        out = self._out(y.reshape(b, cfg.ssm_dim), z, z0, x0, u.dtype)
        return out, window[:, 1:].astype(conv_state.dtype), new_ssm


class Mamba2Block(nnx.Module):
    """Pre-norm residual block: stream ← stream + mixer(RMSNorm(stream))."""

    def __init__(self, cfg: Mamba2Config, params: dict[str, Any], precision=None, scan_chunk_size=None,
                 step_block_bytes=None, chunk_loop: bool = False):
        self.cfg = cfg
        self.norm = nnx.Param(params["norm"])
        self.mixer = Mamba2Mixer(cfg, params, precision, scan_chunk_size, step_block_bytes, chunk_loop)

    def _normed(self, stream):
        return rms_norm(stream, self.norm[...], self.cfg.norm_epsilon).astype(self.mixer.out_proj.dtype)

    def prefill(self, stream, conv_state, ssm_state, lengths=None):
        out, conv, ssm = self.mixer.prefill(self._normed(stream), conv_state, ssm_state, lengths)
        return (stream.astype(F32) + out).astype(stream.dtype), conv, ssm

    def step(self, stream, conv_state, ssm_state):
        out, conv, ssm = self.mixer.step(self._normed(stream), conv_state, ssm_state)
        return (stream.astype(F32) + out).astype(stream.dtype), conv, ssm


class Mamba2Backbone(nnx.Module):
    """Embedding, the residual blocks, and the final norm.

    Each layer owns its own parameter arrays (``self.layers`` is an ``nnx.List``).  Why not one
    stacked array per parameter, scanned over?  On XLA:CPU a dot cannot read its weight operand
    through a (dynamic-)slice: every layer's weights are first copied out of the stacked array,
    which triples the weight traffic of the memory-bound decode step (measured: the copies
    show up as ``dynamic-slice`` fusions of every in_proj/out_proj in the compiled HLO).  So both
    ``step`` (decode) and ``prefill`` loop over the layers in Python, and each layer's state is
    its own cache buffer (see ``Mamba2Cache``).  The price is a compile time that grows with
    depth (130m, 24 layers: prefill ~4-5 s instead of ~1.5 s on a 2-core CPU).

    ``scan_layers=True`` runs prefill as a ``lax.scan`` over layers instead, stacking the
    per-layer parameters inside the jitted function: compile time independent of depth, at the
    cost of the stacking copy and the per-layer weight slices (130m, L = 1024, fp32, CPU: prefill
    1.22x slower, 135 ms of the 1.37 s being the ``stack`` of the weights).  Decode always unrolls.

    Stored stacked (``params["layers"]`` a dict of (n_layer, ...) arrays, the loading policy's
    layout for TPU and GPU): ``self.stack`` is one block whose parameters carry the layer axis and
    ``self.layers`` is None.  The scanned prefill then reads the stored arrays (nothing is stacked
    per call: on TPU the per-call stack was a bfloat16 copy of every in_proj and out_proj), and the
    decode step, unrolled, reads layer i through static slices (``layer(i)``).
    """

    def __init__(self, cfg: Mamba2Config, params: dict[str, Any], precision=None, scan_chunk_size=None,
                 scan_layers: bool = False, step_block_bytes=None, chunk_loop: bool = False):
        self.cfg = cfg
        self.embedding = nnx.Param(params["embedding"])
        lp = params["layers"]
        if isinstance(lp, dict):  # stored stacked: one (n_layer, ...) array per parameter
            self.layers = None
            self.stack = Mamba2Block(cfg, lp, precision, scan_chunk_size, step_block_bytes, chunk_loop)
        else:
            self.stack = None
            self.layers = nnx.List([Mamba2Block(cfg, p, precision, scan_chunk_size, step_block_bytes, chunk_loop)
                                    for p in lp])
        self.norm_f = nnx.Param(params["norm_f"])
        self.scan_layers = bool(scan_layers)

    @property
    def stacked(self) -> bool:
        """Whether the layers' parameters are stored stacked (see the class docstring)."""
        return self.stack is not None

    def layer(self, i: int) -> Mamba2Block:
        """Layer ``i``: its own block, or, stored stacked, a block on row ``i`` of every stacked
        parameter (static slices)."""
        if self.stack is None:
            return self.layers[i]
        graphdef, state = nnx.split(self.stack)
        return nnx.merge(graphdef, jax.tree.map(lambda a: a[i], state))

    def _scanned(self):
        """(graphdef of one block, its state with every parameter stacked over layers) for the scan."""
        if self.stack is not None:
            return nnx.split(self.stack)
        graphdef, _ = nnx.split(self.layers[0])
        states = [nnx.state(blk) for blk in self.layers]
        return graphdef, jax.tree.map(lambda *xs: jnp.stack(xs), *states)

    def _stream_dtype(self):
        return F32 if self.cfg.residual_in_fp32 else self.embedding.dtype

    def prefill(self, input_ids, cache: Mamba2Cache, lengths=None, collect_hidden=False, fresh=False):
        """``fresh``: ``cache`` is the zero cache of a new prompt; the layer scan then starts each layer
        from zeros made inside its body instead of reading a stacked copy of the zero cache."""
        stream = jnp.take(self.embedding[...], input_ids, axis=0).astype(self._stream_dtype())
        n = self.cfg.n_layer
        if not self.scan_layers:
            conv, ssm, hid = [], [], []
            for i in range(n):
                stream, c, m = self.layer(i).prefill(stream, cache.conv[i], cache.ssm[i], lengths)
                conv.append(c), ssm.append(m), hid.append(stream)
            hidden = jnp.stack(hid) if collect_hidden else None
            return rms_norm(stream, self.norm_f[...], self.cfg.norm_epsilon), tuple(conv), tuple(ssm), hidden
        graphdef, stacked = self._scanned()

        c0, s0 = cache.conv[0], cache.ssm[0]

        def body(carry, xs):
            layer_state, conv, ssm = xs
            if fresh:
                conv, ssm = jnp.zeros(c0.shape, c0.dtype), jnp.zeros(s0.shape, s0.dtype)
            blk = nnx.merge(graphdef, layer_state)
            new, conv, ssm = blk.prefill(carry, conv, ssm, lengths)
            return new, (conv, ssm, new if collect_hidden else None)

        conv0, ssm0 = (None, None) if fresh else cache.stacked()
        stream, (conv, ssm, hidden) = jax.lax.scan(body, stream, (stacked, conv0, ssm0))
        conv, ssm = tuple(conv[i] for i in range(n)), tuple(ssm[i] for i in range(n))
        return rms_norm(stream, self.norm_f[...], self.cfg.norm_epsilon), conv, ssm, hidden

    def step(self, token, cache: Mamba2Cache, collect_hidden=False):
        stream = jnp.take(self.embedding[...], token, axis=0).astype(self._stream_dtype())
        conv, ssm, hid = [], [], []
        for i in range(self.cfg.n_layer):
            stream, c, m = self.layer(i).step(stream, cache.conv[i], cache.ssm[i])
            conv.append(c), ssm.append(m), hid.append(stream)
        hidden = jnp.stack(hid) if collect_hidden else None
        return rms_norm(stream, self.norm_f[...], self.cfg.norm_epsilon), tuple(conv), tuple(ssm), hidden


class Mamba2LMHeadModel(nnx.Module):
    """``model(input_ids) → (logits, cache)``; ``prefill`` / ``step`` for cached generation.

    Logits have shape (batch, length, padded_vocab) and are float32.  The LM head is tied to the
    embedding unless the config says otherwise.  ``mesh`` is set when the parameters are sharded
    (``load_pretrained(..., mesh=...)``); the cache is then sharded too.  ``state_dtype`` is the dtype
    the SSM state is stored in (``init_cache``); the state math is float32 whatever it is.
    """

    mesh = None

    def __init__(self, cfg: Mamba2Config, params: dict[str, Any], precision=None, scan_chunk_size=None,
                 scan_layers: bool = False, prefill_block: int | None = None, state_dtype="float32",
                 step_block_bytes: int | None = None, ssd_chunk_loop: bool = False):
        self.cfg = cfg
        self.precision = precision
        self.state_dtype = check_state_dtype(state_dtype).name
        self.scan_chunk_size = int(scan_chunk_size or cfg.chunk_size)
        self.prefill_block = None if prefill_block is None else int(prefill_block)
        self.step_block_bytes = None if step_block_bytes is None else int(step_block_bytes)
        self.ssd_chunk_loop = bool(ssd_chunk_loop)
        self.backbone = Mamba2Backbone(cfg, params, precision, self.scan_chunk_size, scan_layers,
                                       self.step_block_bytes, self.ssd_chunk_loop)
        self.lm_head = None if cfg.tie_embeddings else nnx.Param(params["lm_head"])

    @property
    def dtype(self):
        return self.backbone.embedding.dtype

    def _head(self):
        return self.backbone.embedding if self.lm_head is None else self.lm_head

    def logits(self, h: jax.Array) -> jax.Array:
        """h (..., d) float32 → logits (..., V) float32: h · Eᵀ, contracting E's contiguous axis."""
        with jax.named_scope("lm_head"):
            E = self._head()[...]
            hh = h.astype(E.dtype)
            return jax.lax.dot_general(hh, E, (((hh.ndim - 1,), (1,)), ((), ())), precision=self.precision,
                                       preferred_element_type=F32)

    def init_cache(self, batch: int) -> Mamba2Cache:
        return self._sharded(Mamba2Cache.zeros(self.cfg, batch, dtype=self.dtype, state_dtype=self.state_dtype))

    def _sharded(self, cache: Mamba2Cache) -> Mamba2Cache:
        return cache if self.mesh is None else constrain_cache(cache, self.mesh)

    def prefill(self, input_ids, cache: Mamba2Cache | None = None, lengths=None, *, collect_hidden=False,
                last_only=False):
        """Run a (right-padded) prompt.  Returns (logits, cache[, hidden]).

        ``lengths`` (b,) gives the real length of each row; the cache then holds each row's state
        at its own end.  ``last_only`` returns only the logits at each row's last real position,
        shape (b, V), which avoids the (b, l, V) logits tensor.  Prompts longer than
        ``prefill_block`` (a multiple of it, without ``collect_hidden``) run block by block,
        carrying the cache (see ``loading.structure_policy``).
        """
        h, new_cache, hidden = self._prefill_hidden(input_ids, cache, lengths, collect_hidden, last_only)
        logits = self.logits(h)
        return (logits, new_cache, hidden) if collect_hidden else (logits, new_cache)

    def hidden_states(self, input_ids, cache: Mamba2Cache | None = None, lengths=None):
        """The prefill without the LM head: (final normed hidden states (b, l, d) float32, cache).

        The same program as :meth:`prefill` (the model's prefill policy: blocks of ``prefill_block``,
        the scan chunk, right padding by ``lengths``), the entry for scoring and training, which apply
        the head themselves a chunk at a time (:meth:`token_logprobs`)."""
        h, new_cache, _ = self._prefill_hidden(input_ids, cache, lengths, False, False)
        return h, new_cache

    def _prefill_hidden(self, input_ids, cache, lengths, collect_hidden, last_only):
        input_ids = jnp.asarray(input_ids)
        b, l = input_ids.shape
        fresh = cache is None  # a new prompt: the zero cache
        if fresh:
            cache = self.init_cache(b)
        n_new = jnp.full((b,), l, jnp.int32) if lengths is None else lengths.astype(jnp.int32)
        blk = self.prefill_block
        if blk and l > blk and l % blk == 0 and not collect_hidden:
            h, conv, ssm = self._prefill_blocks(input_ids, cache, int(blk), last_only, n_new, lengths is not None)
            hidden = None
        else:
            h, conv, ssm, hidden = self.backbone.prefill(input_ids, cache, lengths, collect_hidden, fresh)
            if last_only:
                h = _at_position(h, n_new - 1)
        return h, self._sharded(Mamba2Cache(conv=conv, ssm=ssm, seqlen=cache.seqlen + n_new)), hidden

    def token_logprobs(self, h: jax.Array, targets: jax.Array, chunk: int) -> jax.Array:
        """log p(target) under the LM head, in float32: h (N, d), targets (N,) int → (N,).

        The one place the chunked log-softmax is written (scoring and the training loss use it):
        the head and the float32 log-softmax over the padded vocabulary run ``chunk`` rows at a time
        (a ``lax.map``, each chunk under ``jax.checkpoint`` so that a backward pass recomputes its
        logits), so the (N, V) logits are never materialised.  N need not be a multiple of ``chunk``."""
        n, d = h.shape
        chunk = max(1, min(int(chunk), n))
        pad = (-n) % chunk
        if pad:
            h = jnp.pad(h, ((0, pad), (0, 0)))
            targets = jnp.pad(targets, (0, pad))

        @jax.checkpoint
        def piece(args):
            hc, tc = args
            logits = self.logits(hc)  # (chunk, V) float32
            lse = jax.nn.logsumexp(logits, axis=-1)
            return jnp.take_along_axis(logits, tc[:, None], axis=-1)[:, 0] - lse

        c = (n + pad) // chunk
        with jax.named_scope("token_logprobs"):
            lp = jax.lax.map(piece, (h.reshape(c, chunk, d), targets.reshape(c, chunk)))
        return lp.reshape(-1)[:n]

    def _prefill_blocks(self, input_ids, cache: Mamba2Cache, blk: int, last_only: bool, n_new, ragged: bool):
        """Prefill (b, l) ids, l a multiple of ``blk``, as a ``lax.scan`` over blocks of ``blk`` tokens
        carrying the cache: (normed hidden (b, l, d), or (b, d) at each row's last real position if
        ``last_only``; conv; ssm).  Block j sees each row's real length inside it,
        clip(n_new - j·blk, 0, blk), passed to the backbone only for a ``ragged`` batch; a block
        with none leaves that row's state untouched (the backbone's right-padding rule).  The scan
        compiles the layer stack once, whatever l is."""
        b, l = input_ids.shape
        n = l // blk
        ids = jnp.moveaxis(input_ids.reshape(b, n, blk), 1, 0)  # (blocks, b, blk)
        lens = jnp.clip(n_new[None, :] - jnp.arange(n, dtype=jnp.int32)[:, None] * blk, 0, blk)  # (blocks, b)

        def body(carry, xs):
            conv, ssm, last = carry
            ids_blk, len_blk = xs
            h, conv, ssm, _ = self.backbone.prefill(ids_blk, cache.replace(conv=conv, ssm=ssm),
                                                    len_blk if ragged else None)
            if not last_only:
                return (conv, ssm, last), h
            here = _at_position(h, jnp.maximum(len_blk - 1, 0))
            return (conv, ssm, jnp.where((len_blk > 0)[:, None], here, last)), None

        last0 = jnp.zeros((b, self.cfg.d_model), F32)
        # the blocks are an execution choice, not a store: the SSM state crosses them in float32 and is
        # rounded to the cache's state dtype once, at the end, as a one-pass prefill rounds it
        ssm0 = jax.tree.map(lambda s: s.astype(F32), cache.ssm)
        (conv, ssm, last), hs = jax.lax.scan(body, (cache.conv, ssm0, last0), (ids, lens))
        ssm = jax.tree.map(lambda s, ref: s.astype(ref.dtype), ssm, cache.ssm)
        h = last if last_only else jnp.moveaxis(hs, 0, 1).reshape(b, l, hs.shape[-1])
        return h, conv, ssm

    def step(self, token, cache: Mamba2Cache, *, collect_hidden=False):
        """token (b,) → (logits (b, V), cache[, hidden])."""
        h, conv, ssm, hidden = self.backbone.step(jnp.asarray(token), cache, collect_hidden)
        new_cache = self._sharded(Mamba2Cache(conv=conv, ssm=ssm, seqlen=cache.seqlen + 1))
        logits = self.logits(h)
        return (logits, new_cache, hidden) if collect_hidden else (logits, new_cache)

    def __call__(self, input_ids, cache: Mamba2Cache | None = None):
        """``model(ids[, cache]) → (logits (b, l, V), cache)``: the prefill with every position's logits.

        Called eagerly (not inside ``jax.jit`` / ``nnx.jit`` or another transform), it runs one
        compiled program: a ``jax.jit`` over the model's split state (``nnx.split``), cached per model
        (and re-traced if its structure changes), the program the benchmarks time.  Inside a
        transform it is the plain ``prefill``, traced into the caller's program."""
        if _is_traced(self.backbone.embedding[...], input_ids, cache):
            return self.prefill(input_ids, cache)
        graphdef, state = nnx.split(self)
        hit = _CALL_JIT.get(self)
        if hit is None or hit[0] != graphdef:  # first call, or the module's structure changed since
            hit = _CALL_JIT[self] = (graphdef, jax.jit(lambda st, ids, c: nnx.merge(graphdef, st).prefill(ids, c)))
        return hit[1](state, jnp.asarray(input_ids), cache)


# model(ids) outside a transform: one jax.jit per model instance (keyed weakly: it goes with the model),
# with the graph structure it was traced for; jax.jit's own cache keys on shapes and dtypes
_CALL_JIT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _is_traced(*xs) -> bool:
    return any(isinstance(leaf, jax.core.Tracer) for x in xs for leaf in jax.tree.leaves(x))
