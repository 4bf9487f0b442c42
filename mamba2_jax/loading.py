"""From tensors to a compiled-ready model: the policies, building, loading, saving and sharding.

Two policies are decided here, once, for the platform the program is compiled for (not the host
that builds it: a TPU program compiled on a CPU machine gets the TPU choices):

* **precision** (:func:`precision_policy`), from the param dtype and the state dtype: float32
  params and state are the parity mode (matmul precision "highest"); bfloat16/float16 params, or a
  bfloat16/float16 SSM state (storage only: the state math is float32), the fast mode.  Accumulation
  is float32 in both; the state is float32 unless asked otherwise.
* **structure** (:func:`structure_policy`), from the target platform: the SSD scan chunk, whether
  long prompts are prefilled in blocks, and whether prefill unrolls or scans the layers.  These are
  execution choices, not math: the outputs agree to fp32 rounding whatever they are (tested
  against the float64 oracle); a 16-bit state is rounded where a cache is returned (the end of a
  prefill call, every decode step), never inside one call.

Both are recorded on ``model.policy`` and by every run.
"""

from __future__ import annotations

import dataclasses
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import sharding
from .cache import check_state_dtype
from .checkpoint import read_state_dict, resolve_model_dir, write_checkpoint
from .config import Mamba2Config
from .model import Mamba2LMHeadModel
from .params import EMBEDDING, LM_HEAD, ParamSpec, fuse_in_proj, rows

__all__ = ["PLATFORMS", "PREFILL_BLOCK_CPU", "STEP_BLOCK_BYTES_CPU", "StructurePolicy", "ModelPolicy", "ModelSource",
           "platform_of", "precision_policy", "structure_policy", "jax_params_from_state_dict",
           "state_dict_from_model", "model_from_state_dict", "load_pretrained", "save_pretrained", "shard_model"]

# platform names JAX uses → the policy family
PLATFORMS = {"cpu": "cpu", "tpu": "tpu", "gpu": "gpu", "cuda": "gpu", "rocm": "gpu"}

# Tokens per block of a long CPU prefill (see ``structure_policy``).
PREFILL_BLOCK_CPU = 512

# Bytes (float32) per block of the SSM state in the CPU decode step (see ``structure_policy``).
STEP_BLOCK_BYTES_CPU = 2 << 20


class _Record:
    """A frozen dataclass read like the dict it replaced: ``rec["field"]``, ``rec.get``, ``keys``/``items``
    and ``{**rec}``; :meth:`as_dict` is what results record (``dataclasses.asdict``, fields that are
    None and marked ``optional`` left out).  Frozen and hashable, so a model holding one as a static
    attribute has a hashable graph definition (``generate.program_key``)."""

    _optional: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if not (k in self._optional and v is None)}

    def keys(self):
        return self.as_dict().keys()

    def items(self):
        return self.as_dict().items()

    def __getitem__(self, key: str):
        d = self.as_dict()
        if key not in d:
            raise KeyError(key)
        return d[key]

    def get(self, key: str, default=None):
        return self.as_dict().get(key, default)


@dataclass(frozen=True)
class StructurePolicy(_Record):
    """The execution structure of a target platform (:func:`structure_policy`): not math, the outputs
    agree to fp32 rounding whatever it is."""

    platform: str  # the policy family: "cpu", "tpu" or "gpu"
    scan_chunk_size: int  # the SSD scan chunk
    prefill_block: int | None  # tokens per block of a long prefill (None: one pass)
    prefill_layers: str  # "unrolled" or "scan" (a lax.scan over layers)
    ssd_chunks: str  # "parallel" (all chunks at once) or "scan" (one chunk at a time, ssd._ssd_chunk_loop)
    param_layout: str  # "layers" (one array per layer and parameter) or "stacked" (one (n_layer, ...) array)
    step_block_bytes: int | None  # bytes per block of the SSM state in the decode step (None: one block)

    def replace(self, **kw) -> StructurePolicy:
        return dataclasses.replace(self, **kw)


def _frozen_mesh(desc: dict[str, Any] | None):
    """``sharding.describe_mesh``'s dict as a hashable tuple of items (lists as tuples), or None."""
    if desc is None:
        return None
    return tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in desc.items())


@dataclass(frozen=True)
class ModelPolicy(_Record):
    """What a model runs with (``model.policy``): its precision policy (:func:`precision_policy`), its
    structure (:class:`StructurePolicy`, with the model's own values) and, on a mesh, the mesh
    (``sharding.describe_mesh``).  ``as_dict()`` is the record results keep (the keys and values of
    the dict ``model.policy`` was before it was frozen; "mesh" only with a mesh)."""

    mode: str
    param_dtype: str
    state_dtype: str
    accum_dtype: str
    matmul_precision: str
    platform: str
    scan_chunk_size: int
    prefill_layers: str
    ssd_chunks: str
    prefill_block: int | None
    step_block_bytes: int | None
    param_layout: str
    mesh: tuple | None = None  # describe_mesh's items, frozen (as_dict gives the dict back)

    _optional = ("mesh",)

    def as_dict(self) -> dict[str, Any]:
        d = super().as_dict()
        if self.mesh is not None:
            d["mesh"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.mesh}
        return d


@dataclass(frozen=True)
class ModelSource(_Record):
    """Where a loaded model's weights came from (``model.source``)."""

    path: str
    format: str
    stored_dtype: str


def platform_of(platform: str | None = None, mesh=None) -> str:
    """The policy family ("cpu", "tpu" or "gpu") of ``platform``, else of the mesh's devices, else of
    JAX's default backend."""
    if platform is None:
        platform = mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()
    key = str(platform).lower()
    if key not in PLATFORMS:
        raise ValueError(f"unknown platform {platform!r}; known: {sorted(PLATFORMS)}")
    return PLATFORMS[key]


def precision_policy(dtype, state_dtype="float32") -> dict[str, str]:
    """The precision policy in effect for a param dtype and an SSM-state storage dtype (recorded by
    every run).  The matmul precision follows the param dtype; the mode is "parity" only with float32
    params and a float32 state."""
    name = jnp.dtype(dtype).name
    state = check_state_dtype(state_dtype).name
    if name == "float32":
        prec = "highest"
    elif name in ("bfloat16", "float16"):
        prec = "default"
    else:
        raise ValueError(f"unsupported param dtype {name!r} (float32 | bfloat16 | float16)")
    mode = "parity" if name == "float32" and state == "float32" else "fast"
    return {"mode": mode, "param_dtype": name, "state_dtype": state, "accum_dtype": "float32",
            "matmul_precision": prec}


def structure_policy(cfg: Mamba2Config, platform: str | None = None) -> StructurePolicy:
    """The execution structure for ``platform`` (None: JAX's default backend).

    * CPU: scan chunk min(config chunk, 64): the quadratic intra-chunk work and the (q × q) decay
      matrices shrink with q while the inter-chunk recurrence stays cheap (130m shape, L = 1024:
      q = 64 prefills ~20% faster than q = 256).  Prompts longer than ``PREFILL_BLOCK_CPU`` tokens
      (and a multiple of it) are prefilled block by block, a ``lax.scan`` carrying the cache, so a
      block's activations stay cache-sized (130m, fp32, L = 4096: 3.30 s in one pass, 2.64 s in
      blocks of 512; L = 1024: 0.70 s and 0.67 s).
    * CPU decode: the step updates and reads out the SSM state in blocks of at most
      ``STEP_BLOCK_BYTES_CPU`` (``ssd.ssd_step``), so that each block is read from memory once, the
      read-out taking it from cache (XLA:CPU does not fuse the update and the read-out into one
      pass); blocks are batch rows, as many as fit (130m: 0.75 MiB per row and layer, so batch 1
      and 2 are one block, larger even batches blocks of 2 rows, odd ones of 1).  Under a mesh
      (``model_from_state_dict``, ``shard_model``), whose "data" axis shards the batch, the step is
      one block.
    * TPU and GPU: the checkpoint's own chunk (256), whose larger matmuls suit the MXU and tensor
      cores, and one pass; the decode step in one block.
    * Prefill layers: unrolled on CPU (XLA:CPU copies each layer's weights out of a stacked array;
      see ``Mamba2Backbone``), a ``lax.scan`` over the layers on TPU and GPU ("scan"): one compiled
      layer instead of n_layer, so compile time and generated code no longer grow with depth.
    * SSD chunks (``ssd.ssd_chunked``'s ``chunk_loop``): all at once on CPU ("parallel", today's
      measured-fast form), one at a time on TPU and GPU ("scan", a ``lax.scan`` over chunks carrying
      the state): the same FLOPs, a smaller program to compile.
    * Parameter layout: one array per layer on CPU ("layers"), one (n_layer, ...) array per
      parameter on TPU and GPU ("stacked"), so that the layer scan reads the stored arrays instead
      of stacking them on every call (see ``Mamba2Backbone``).

    Compiled for v6e on the shared 2-core host (fp32, matmul precision "default", L = 4096; probes,
    not committed results): 130m, full logits: 403 s, 180 MB of code and 378 MB of temporaries
    unrolled; 147 s, 4.6 MB and 150 MB with the three choices above (the paper's package, same run:
    240 s, 61 MiB).  2.7b, last position: 262 s and 2.4 GiB unrolled; 124 s and 5.9 GB scanned:
    XLA:TPU converts the stacked float32 weights to bfloat16 once, before the loop, a temporary of
    all layers' in_proj and out_proj (5.1 GB), where the unrolled program converts inside each dot.
    """
    fam = platform_of(platform)
    cpu = fam == "cpu"
    return StructurePolicy(platform=fam, scan_chunk_size=min(cfg.chunk_size, 64) if cpu else cfg.chunk_size,
                           prefill_block=PREFILL_BLOCK_CPU if cpu else None,
                           prefill_layers="unrolled" if cpu else "scan", ssd_chunks="parallel" if cpu else "scan",
                           param_layout="layers" if cpu else "stacked",
                           step_block_bytes=STEP_BLOCK_BYTES_CPU if cpu else None)


# ------------------------------------------------------------------------------ tensors ↔ JAX params
def jax_params_from_state_dict(cfg: Mamba2Config, sd: dict[str, np.ndarray], dtype=None,
                               stacked: bool = False) -> dict[str, Any]:
    """state-spaces tensors (torch layout, numpy) → JAX-layout parameter dict: ``"layers"`` one dict
    per layer, or, ``stacked``, one dict of (n_layer, ...) arrays (the policy's "stacked" layout).

    Matrices and norms take ``dtype`` (default float32); the table's float32 rows (A_log, dt_bias
    and D) stay float32 (the SSM math is fp32)."""
    npd = np.dtype(jnp.dtype(dtype or jnp.float32))

    def cast(spec: ParamSpec, a) -> Any:
        return spec.to_jax(np.asarray(a)).astype(np.float32 if spec.fp32 else npd)

    layers: list[dict[str, Any]] = [{} for _ in range(cfg.n_layer)]
    params: dict[str, Any] = {"layers": layers}
    for key, spec, i in rows(cfg):
        (params if i is None else layers[i])[spec.name] = cast(spec, sd[key])
    if not cfg.tie_embeddings:
        params[LM_HEAD.name] = cast(LM_HEAD, sd[LM_HEAD.key])
    if stacked:
        params["layers"] = {k: np.stack([lp[k] for lp in layers]) for k in layers[0]}
    return jax.tree.map(jnp.asarray, params)


def _param_of(model, spec: ParamSpec, i: int | None, blk=None):
    if spec.owner == "model":
        return getattr(model, spec.attr)
    if spec.owner == "backbone":
        return getattr(model.backbone, spec.attr)
    return getattr(blk if spec.owner == "block" else blk.mixer, spec.attr)


def state_dict_from_model(model) -> dict[str, np.ndarray]:
    """The inverse of :func:`jax_params_from_state_dict` (torch layout, numpy, model dtype).  Works for
    sharded models too: arrays are gathered to the host, and an in_proj split into its output parts
    for a mesh is fused back."""
    cfg = model.cfg
    sd: dict[str, np.ndarray] = {}
    blocks: dict[int, Any] = {}
    for key, spec, i in rows(cfg):
        if i is not None and i not in blocks:
            blocks[i] = model.backbone.layer(i)  # stored stacked: a view on row i
        blk = blocks.get(i)
        mixer = blk.mixer if blk is not None else None
        if spec.name in ("in_proj", "in_proj_bias") and mixer.in_proj is None:
            w, b = fuse_in_proj(cfg, {k: sharding.to_host(v[...]) for k, v in mixer.in_proj_parts.items()})
            sd[key] = spec.from_jax(w if spec.name == "in_proj" else b)
        else:
            sd[key] = spec.from_jax(sharding.to_host(_param_of(model, spec, i, blk)[...]))
    head = model.lm_head
    sd[LM_HEAD.key] = sd[EMBEDDING.key] if head is None else LM_HEAD.from_jax(sharding.to_host(head[...]))
    return sd


def _host_params(cfg: Mamba2Config, sd: dict[str, np.ndarray], dtype, stacked: bool = False) -> dict[str, Any]:
    """:func:`jax_params_from_state_dict` built on the host CPU device (not on an accelerator:
    ``sharding.put`` then sends each device only its own shards)."""
    try:
        ctx = jax.default_device(jax.local_devices(backend="cpu")[0])
    except RuntimeError:
        ctx = nullcontext()
    with ctx:
        return jax_params_from_state_dict(cfg, sd, jnp.dtype(dtype), stacked)


# ------------------------------------------------------------------------------ models
def model_from_state_dict(cfg: Mamba2Config, sd: dict[str, np.ndarray], dtype="float32", precision=None, *,
                          platform: str | None = None, scan_chunk_size: int | None = None,
                          prefill_block: int | None | str = "auto", scan_layers: bool | None = None, mesh=None,
                          state_dtype="float32", step_block_bytes: int | None | str = "auto",
                          ssd_chunk_loop: bool | None = None):
    """A model from state-spaces tensors, with the precision policy of ``dtype`` and ``state_dtype``
    (the SSM state's storage dtype) and the structure policy of ``platform`` (None: the mesh's
    devices, else JAX's default backend).  Explicit ``scan_chunk_size`` / ``prefill_block`` (tokens,
    or None for one pass) / ``scan_layers`` / ``step_block_bytes`` (or None for one block) /
    ``ssd_chunk_loop`` override the structure policy (None: the policy's).  The policy in effect is
    recorded on ``model.policy``."""
    if isinstance(mesh, str):
        mesh = sharding.make_mesh(mesh)
    pol = precision_policy(dtype, state_dtype)
    prec = precision if precision is not None else pol["matmul_precision"]
    st = structure_policy(cfg, platform_of(platform, mesh))
    chunk = int(scan_chunk_size or st.scan_chunk_size)
    block = st.prefill_block if prefill_block == "auto" else prefill_block
    # blocks are batch rows, and a mesh's "data" axis shards the batch: one block under a mesh
    auto_step = st.step_block_bytes if mesh is None else None
    step_block = auto_step if step_block_bytes == "auto" else step_block_bytes
    if scan_layers is None:
        scan_layers = st.prefill_layers == "scan"
    if ssd_chunk_loop is None:
        ssd_chunk_loop = st.ssd_chunks == "scan"
    stacked = st.param_layout == "stacked"
    if mesh is None:
        params = jax_params_from_state_dict(cfg, sd, jnp.dtype(dtype), stacked)
    else:
        params = sharding.shard_params(cfg, _host_params(cfg, sd, dtype, stacked), mesh)
    model = Mamba2LMHeadModel(cfg, params, precision=prec, scan_chunk_size=chunk, scan_layers=scan_layers,
                              prefill_block=block, state_dtype=pol["state_dtype"], step_block_bytes=step_block,
                              ssd_chunk_loop=ssd_chunk_loop)
    model.policy = ModelPolicy(**{**pol, "matmul_precision": str(prec)}, platform=st.platform,
                               scan_chunk_size=model.scan_chunk_size,
                               prefill_layers="scan" if scan_layers else "unrolled",
                               ssd_chunks="scan" if ssd_chunk_loop else "parallel", prefill_block=model.prefill_block,
                               step_block_bytes=model.step_block_bytes, param_layout=st.param_layout,
                               mesh=None if mesh is None else _frozen_mesh(sharding.describe_mesh(mesh)))
    if mesh is not None:
        model.mesh = mesh
    return model


def load_pretrained(path_or_hub_id: str | Path, dtype="float32", revision: str | None = None, precision=None, *,
                    platform: str | None = None, scan_chunk_size: int | None = None,
                    prefill_block: int | None | str = "auto", scan_layers: bool | None = None, mesh=None,
                    allow_nonfinite: bool = False, state_dtype="float32"):
    """Load a Mamba-2 checkpoint (local dir in either format, or a hub id) as a JAX model.

    dtype "float32" is the parity mode (matmul precision "highest"); "bfloat16"/"float16" is the
    fast mode (low-precision params, float32 SSM state and accumulation).  ``state_dtype``
    "bfloat16"/"float16" stores the SSM state in 16 bits (its math stays float32; float32, the
    default, is the parity setting).  ``platform`` picks the
    structure policy (:func:`structure_policy`; default: where the model will run).  ``mesh`` (a
    ``jax.sharding.Mesh`` with axes ("data", "model"), or a string such as "data=2,model=4") shards
    the parameters over devices, each device receiving only its own shards; see
    :mod:`mamba2_jax.sharding`.  Weights holding NaN or Inf are refused (a CheckpointError naming
    the tensors) unless ``allow_nonfinite=True``.  The policy in effect is recorded on
    ``model.policy``.
    """
    model_dir = resolve_model_dir(path_or_hub_id, revision)
    cfg, sd, fmt = read_state_dict(model_dir, check_finite=not allow_nonfinite)
    model = model_from_state_dict(cfg, sd, dtype=dtype, precision=precision, platform=platform,
                                  scan_chunk_size=scan_chunk_size, prefill_block=prefill_block,
                                  scan_layers=scan_layers, mesh=mesh, state_dtype=state_dtype)
    model.source = ModelSource(path=str(model_dir), format=fmt,
                               stored_dtype=str(np.asarray(sd["backbone.embedding.weight"]).dtype))
    return model


def save_pretrained(model, out_dir: str | Path, format: str = "state-spaces", dtype: str | None = None,
                    weights: str | None = None) -> Path:
    """Write ``model`` as a checkpoint (``checkpoint.write_checkpoint``; atomic)."""
    return write_checkpoint(model.cfg, state_dict_from_model(model), out_dir, fmt=format, dtype=dtype,
                            weights=weights)


def shard_model(model, mesh):
    """A copy of ``model`` (single-device or on another mesh) with its parameters on ``mesh``, the
    same precision and structure, but the decode step in one block (its blocks are batch rows, which
    the mesh's "data" axis shards; see :func:`structure_policy`)."""
    if getattr(model, "mesh", None) is mesh:
        return model
    pol = getattr(model, "policy", None)
    out = model_from_state_dict(model.cfg, state_dict_from_model(model), dtype=model.dtype,
                                precision=model.precision, platform=None if pol is None else pol.platform,
                                scan_chunk_size=model.scan_chunk_size, prefill_block=model.prefill_block,
                                scan_layers=model.backbone.scan_layers, mesh=mesh, state_dtype=model.state_dtype,
                                step_block_bytes=None, ssd_chunk_loop=model.ssd_chunk_loop)
    if hasattr(model, "source"):
        out.source = model.source
    return out
