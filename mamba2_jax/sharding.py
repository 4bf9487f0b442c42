"""Sharded inference on a ("data", "model") device mesh, on JAX's own runtime.

Everything here is ``jax.sharding`` (``Mesh``, ``NamedSharding``, ``PartitionSpec``) compiled by
XLA's SPMD partitioner, plus ``jax.distributed`` for several processes; nothing is home-made.
The model code is unchanged: parameters and caches carry their shardings, ``jax.jit`` propagates
them, and XLA inserts the collectives (e.g. the all-reduce after ``out_proj`` and inside the
gated group norm when a group spans several shards).  Results therefore equal the single-device
ones to fp32 rounding (reductions may be summed in another order).

Mesh axes
---------
* ``"data"``: the batch (prompts, perplexity windows) is split over it; parameters are
  replicated along it.
* ``"model"``: tensor parallelism over the SSM heads (Megatron-style for the mixer).

Parameter rules (by name; JAX layout = torch layout "out × in" for the projections)
-----------------------------------------------------------------------------------
==========================  ===========================  ==========================================
parameter                   shape                        PartitionSpec
==========================  ===========================  ==========================================
in_proj, split at load      z, x: (d_ssm, d)             ("model", None)   heads
time into its output parts  dt: (nheads, d)              ("model", None)   heads
(``in_proj_parts``)         B, C: (ngroups·d_state, d)   ("model", None) if ngroups % model == 0,
                                                         else replicated
                            z0, x0 (gated MLP, d_mlp>0)  ("model", None) if d_mlp % model == 0
in_proj biases (if any)     as their part                the part's output-axis spec
A_log, dt_bias, D           (nheads,) / (d_ssm,)         ("model",)        heads
mixer norm weight           (d_ssm,)                     ("model",)        heads
out_proj                    (d, d_inner)                 (None, "model")   input axis; XLA reduces
conv weight / bias          (d_conv, conv_dim)           replicated (see below)
embedding / LM head         (V_pad, d)                   ("model", None)   vocab-parallel
block norms, norm_f         (d,)                         replicated
==========================  ===========================  ==========================================

The fused in_proj weight cannot be sharded part-wise as one array (a contiguous split of its
output axis would cut across the z | x | B | C | dt boundaries), so under a mesh it is split into
its parts when loaded (``in_proj_parts``); ``save_pretrained`` fuses it back.  The depthwise conv
runs over [x, B, C] together and its state is one (b, d_conv-1, conv_dim) array per layer, so
the conv weights and conv state are kept whole along channels (replicated over "model"): they
are ~2% of the cache and <0.1% of the parameters of the paper models (see docs/sharding.md).

Cache rules: SSM state (b, h, p, n) → ``("data", "model", None, None)``; conv state
(b, d_conv-1, conv_dim) → ``("data", None, None)``; seqlen (b,) → ``("data",)``.

Errors (``MeshError``, a ValueError): nheads % model != 0; a batch that does not divide by
"data" where the batch cannot be padded; a mesh larger than the devices available.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from .cache import Mamba2Cache
from .params import in_proj_slices, jax_shapes

__all__ = [
    "AXES", "MeshError", "parse_mesh", "make_mesh", "mesh_shape", "describe_mesh", "check_mesh",
    "param_spec", "shard_params", "abstract_params", "CACHE_SPECS", "constrain_cache", "abstract_cache",
    "put", "put_batch", "replicate", "to_host",
    "initialize_distributed", "is_primary",
]

AXES = ("data", "model")
F32 = jnp.float32


class MeshError(ValueError):
    """A mesh that does not fit the model, the batch or the devices."""


# ------------------------------------------------------------------------------ meshes
def parse_mesh(spec: Any) -> dict[str, int] | None:
    """``"data=2,model=4"`` (either order, a missing axis is 1), a mapping {data, model} (None
    values count as unset), or a (data, model) pair → ``{"data": D, "model": M}``; None or an empty
    string or a mapping with both unset → None (no mesh)."""
    if spec is None or isinstance(spec, Mesh):
        return None if spec is None else mesh_shape(spec)
    if isinstance(spec, str):
        s = spec.strip()
        if not s:
            return None
        out: dict[str, int] = {}
        for part in s.split(","):
            m = re.fullmatch(r"\s*(\w+)\s*=\s*(\d+)\s*", part)
            if not m:
                raise MeshError(f"bad mesh {spec!r}: expected 'data=D,model=M' (e.g. 'data=2,model=4')")
            k, v = m.group(1), int(m.group(2))
            if k not in AXES:
                raise MeshError(f"bad mesh {spec!r}: unknown axis {k!r}; the axes are {AXES}")
            if k in out:
                raise MeshError(f"bad mesh {spec!r}: axis {k!r} given twice")
            out[k] = v
    elif isinstance(spec, Mapping) or hasattr(spec, "items"):
        out = {str(k): v for k, v in dict(spec.items()).items() if v is not None}
        bad = set(out) - set(AXES)
        if bad:
            raise MeshError(f"bad mesh {dict(spec)!r}: unknown axes {sorted(bad)}; the axes are {AXES}")
        if not out:
            return None
    elif isinstance(spec, (tuple, list)) and len(spec) == 2:
        out = dict(zip(AXES, spec))
    else:
        raise MeshError(f"bad mesh {spec!r}: expected 'data=D,model=M', a mapping or a (data, model) pair")
    res = {a: out.get(a, 1) for a in AXES}
    for a, v in res.items():
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise MeshError(f"bad mesh {spec!r}: axis {a!r} must be a positive integer, got {v!r}")
    return {a: int(v) for a, v in res.items()}


def make_mesh(spec: Any, devices=None) -> Mesh | None:
    """A ``jax.sharding.Mesh`` with axes ("data", "model") (``jax.make_mesh``, Auto axes, so XLA
    propagates shardings), or None for no mesh.  Uses the first data·model devices of a single
    process; with several processes the mesh must cover every device."""
    if isinstance(spec, Mesh):
        return spec
    shape = parse_mesh(spec)
    if shape is None:
        return None
    devices = list(jax.devices() if devices is None else devices)
    n = shape["data"] * shape["model"]
    if n > len(devices):
        raise MeshError(f"mesh data={shape['data']},model={shape['model']} needs {n} devices, but only "
                        f"{len(devices)} are visible ({devices[0].platform}); on CPU set "
                        f"XLA_FLAGS=--xla_force_host_platform_device_count={n} before JAX starts")
    if n < len(devices) and jax.process_count() > 1:
        raise MeshError(f"with {jax.process_count()} processes the mesh must use all {len(devices)} devices, "
                        f"got data·model = {n}")
    from jax.sharding import AxisType

    return jax.make_mesh((shape["data"], shape["model"]), AXES, axis_types=(AxisType.Auto,) * 2,
                         devices=devices[:n])


def mesh_shape(mesh: Any) -> dict[str, int]:
    """{"data": D, "model": M} of a Mesh, a mesh spec (see ``parse_mesh``) or None (1, 1)."""
    if mesh is None:
        return {"data": 1, "model": 1}
    if not isinstance(mesh, Mesh):
        return parse_mesh(mesh) or {"data": 1, "model": 1}
    return {a: int(mesh.shape[a]) for a in AXES}


def describe_mesh(mesh: Mesh | None) -> dict[str, Any] | None:
    """What results record about a mesh (None: no mesh, one device)."""
    if mesh is None:
        return None
    d = mesh.devices.flat[0]
    return {**mesh_shape(mesh), "n_devices": int(mesh.devices.size), "platform": d.platform,
            "device_kind": d.device_kind, "process_count": jax.process_count(),
            "device_ids": [int(x.id) for x in mesh.devices.flat]}


def check_mesh(cfg, mesh: Mesh | None) -> None:
    """Raise MeshError when the model cannot be split over ``mesh``'s "model" axis."""
    M = mesh_shape(mesh)["model"]
    if M > 1 and cfg.nheads % M:
        raise MeshError(f"{cfg.name}: nheads={cfg.nheads} is not divisible by the mesh's model axis ({M}); "
                        f"tensor parallelism splits whole heads. Use a model axis that divides {cfg.nheads}.")


# ------------------------------------------------------------------------------ parameter rules
def _part_axis(cfg, part: str, M: int):
    """Mesh axis of an in_proj part's output dimension."""
    if M == 1:
        return None
    if part in ("z", "x", "dt"):
        return "model"
    if part in ("B", "C"):
        return "model" if cfg.ngroups % M == 0 else None
    if part in ("z0", "x0"):
        return "model" if cfg.d_mlp % M == 0 else None
    raise KeyError(part)


def param_spec(cfg, name: str, M: int) -> P:
    """PartitionSpec of a (JAX-layout) parameter by name, for a "model" axis of size ``M``."""
    if M == 1:
        return P()
    if name in ("embedding", "lm_head"):
        return P("model", None) if cfg.padded_vocab_size % M == 0 else P()
    if name in ("norm", "norm_f", "conv_w", "conv_b", "out_proj_bias"):
        return P()
    if name in ("dt_bias", "A_log", "D", "mixer_norm"):
        return P("model")
    if name == "out_proj":
        return P(None, "model") if cfg.d_inner % M == 0 else P()
    if name.startswith("in_proj."):
        return P(_part_axis(cfg, name.split(".", 1)[1], M), None)
    if name.startswith("in_proj_bias."):
        return P(_part_axis(cfg, name.split(".", 1)[1], M))
    raise KeyError(f"no sharding rule for parameter {name!r}")


def _out_rows(w, a: int, b: int, axis: int = 0):
    """Rows [a, b) of ``axis`` (the output axis of an (out, in) weight and of a bias; 1 when stored
    stacked over layers) of an array or a ShapeDtypeStruct."""
    if isinstance(w, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(w.shape[:axis] + (b - a,) + w.shape[axis + 1:], w.dtype)
    return w[(slice(None),) * axis + (slice(a, b),)]


def _split_layer(cfg, lp: dict[str, Any], axis: int = 0) -> dict[str, Any]:
    """One layer's params (``axis`` 1: every layer's, stacked) with the fused in_proj (and bias)
    replaced by ``in_proj_parts``."""
    lp = dict(lp)
    w = lp.pop("in_proj")
    b = lp.pop("in_proj_bias", None)
    parts = {}
    for k, a, e in in_proj_slices(cfg):
        parts[k] = _out_rows(w, a, e, axis)
        if b is not None:
            parts["bias_" + k] = _out_rows(b, a, e, axis)
    lp["in_proj_parts"] = parts
    return lp


def _layer_specs(cfg, lp: dict[str, Any], M: int) -> dict[str, Any]:
    out = {}
    for k, v in lp.items():
        if k == "in_proj_parts":
            out[k] = {pk: param_spec(cfg, ("in_proj_bias." + pk[5:]) if pk.startswith("bias_") else "in_proj." + pk, M)
                      for pk in v}
        else:
            out[k] = param_spec(cfg, k, M)
    return out


def _check_divisible(name, shape, spec: P, mesh: Mesh) -> None:
    for dim, ax in zip(shape, tuple(spec)):
        if ax is not None and dim % mesh.shape[ax]:
            raise MeshError(f"parameter {name} {tuple(shape)}: dimension {dim} does not divide by mesh axis "
                            f"{ax!r} ({mesh.shape[ax]})")


def put(x, sharding: NamedSharding) -> jax.Array:
    """A global array with ``sharding`` from host data that every process holds in full
    (``jax.make_array_from_callback``: each device receives only its own shard, also across
    processes)."""
    if isinstance(x, jax.Array) and x.is_fully_addressable:
        x = np.asarray(x)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def _place(params: dict[str, Any], cfg, mesh: Mesh, abstract: bool) -> dict[str, Any]:
    M = mesh_shape(mesh)["model"]
    top = {k: v for k, v in params.items() if k != "layers"}
    specs = {k: param_spec(cfg, k, M) for k in top}
    if isinstance(params["layers"], dict):  # stored stacked: the layer axis leads, unsharded
        layers = _split_layer(cfg, params["layers"], axis=1)
        specs["layers"] = jax.tree.map(lambda sp: P(None, *sp), _layer_specs(cfg, layers, M),
                                       is_leaf=lambda v: isinstance(v, P))
    else:
        layers = [_split_layer(cfg, lp) for lp in params["layers"]]
        specs["layers"] = [_layer_specs(cfg, lp, M) for lp in layers]
    tree = {**top, "layers": layers}

    def one(path, x, spec):
        name = jax.tree_util.keystr(path)
        _check_divisible(name, x.shape, spec, mesh)
        sh = NamedSharding(mesh, spec)
        if abstract:
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh)
        return put(x, sh)

    return jax.tree_util.tree_map_with_path(one, tree, specs, is_leaf=lambda v: isinstance(v, P))


def shard_params(cfg, params: dict[str, Any], mesh: Mesh) -> dict[str, Any]:
    """JAX-layout params (``loading.jax_params_from_state_dict``) → the same params, with in_proj
    split into its parts and every array placed on ``mesh`` by the rules above."""
    check_mesh(cfg, mesh)
    return _place(params, cfg, mesh, abstract=False)


def _param_shapes(cfg, dtype, stacked: bool = False) -> dict[str, Any]:
    """ShapeDtypeStructs of the JAX-layout params, from the parameter table (``params.jax_shapes``):
    the table's float32 rows (A_log, dt_bias, D) stay float32, the rest take ``dtype``.  ``stacked``:
    the layers as one dict of (n_layer, ...) arrays (``loading.jax_params_from_state_dict``'s)."""
    leaf = lambda t: isinstance(t, tuple) and len(t) == 2 and isinstance(t[1], bool)
    out = jax.tree.map(lambda t: jax.ShapeDtypeStruct(t[0], F32 if t[1] else jnp.dtype(dtype)), jax_shapes(cfg),
                       is_leaf=leaf)
    if stacked:
        lay = out["layers"]
        out["layers"] = {k: jax.ShapeDtypeStruct((len(lay),) + v.shape, v.dtype) for k, v in lay[0].items()}
    return out


def abstract_params(cfg, mesh: Mesh, dtype="float32", stacked: bool = False) -> dict[str, Any]:
    """The sharded params as ``jax.ShapeDtypeStruct`` (with shardings): allocates nothing; for AOT
    ``lower(...).compile()`` and memory accounting.  ``stacked``: the stacked layout (the layer axis
    unsharded)."""
    check_mesh(cfg, mesh)
    return _place(_param_shapes(cfg, dtype, stacked), cfg, mesh, abstract=True)


# ------------------------------------------------------------------------------ cache rules
# the same for every config: the batch over "data", the SSM heads over "model"
CACHE_SPECS: dict[str, P] = {"conv": P("data", None, None), "ssm": P("data", "model", None, None),
                             "seqlen": P("data")}


def _check_batch(batch: int, mesh: Mesh, what: str = "batch") -> None:
    D = mesh_shape(mesh)["data"]
    if batch % D:
        raise MeshError(f"{what} {batch} does not divide by the mesh's data axis ({D})")


def constrain_cache(cache, mesh: Mesh):
    """The cache with its sharding fixed (``with_sharding_constraint``; inside or outside jit)."""
    _check_batch(int(cache.seqlen.shape[0]), mesh)
    sp = CACHE_SPECS
    c = lambda x, k: jax.lax.with_sharding_constraint(x, NamedSharding(mesh, sp[k]))
    return Mamba2Cache(conv=tuple(c(x, "conv") for x in cache.conv), ssm=tuple(c(x, "ssm") for x in cache.ssm),
                       seqlen=c(cache.seqlen, "seqlen"))


def abstract_cache(cfg, batch: int, mesh: Mesh, dtype="float32", state_dtype="float32"):
    """The sharded cache as ``jax.ShapeDtypeStruct`` leaves (allocates nothing)."""
    _check_batch(batch, mesh)
    check_mesh(cfg, mesh)
    sh, dt = Mamba2Cache.shapes(cfg, batch), Mamba2Cache.dtypes(dtype, state_dtype)
    leaf = lambda k: jax.ShapeDtypeStruct(sh[k], dt[k], sharding=NamedSharding(mesh, CACHE_SPECS[k]))  # noqa: E731
    return Mamba2Cache(conv=tuple(leaf("conv") for _ in range(cfg.n_layer)),
                       ssm=tuple(leaf("ssm") for _ in range(cfg.n_layer)), seqlen=leaf("seqlen"))


# ------------------------------------------------------------------------------ inputs / outputs
def put_batch(x, mesh: Mesh, what: str = "batch") -> jax.Array:
    """A host array whose leading axis is the batch → a global array split over "data"."""
    x = np.asarray(x)
    _check_batch(int(x.shape[0]), mesh, what)
    return put(x, NamedSharding(mesh, P("data", *([None] * (x.ndim - 1)))))


def replicate(x, mesh: Mesh):
    """Inside jit: make ``x`` replicated on every device (small host-bound outputs such as tokens,
    so that every process can read them)."""
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P()))


def to_host(x) -> np.ndarray:
    """A (possibly multi-process) jax.Array → the full numpy array on this process."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


# ------------------------------------------------------------------------------ multi-process
def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> bool:
    """``jax.distributed.initialize`` from arguments, else from the environment
    (``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``).  Returns False (and
    does nothing) when no coordinator is given or there is one process.  On CPU the cross-process
    collectives are gloo (``jax_cpu_collectives_implementation``)."""
    env = os.environ
    addr = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS") or None
    if num_processes is None and env.get("JAX_NUM_PROCESSES"):
        num_processes = int(env["JAX_NUM_PROCESSES"])
    if process_id is None and env.get("JAX_PROCESS_ID"):
        process_id = int(env["JAX_PROCESS_ID"])
    n, pid = num_processes, process_id
    if addr is None or n is None or n <= 1:
        return False
    if pid is None:
        raise MeshError("multi-process run: the process id is missing (--process-id or JAX_PROCESS_ID)")
    if not 0 <= pid < n:
        raise MeshError(f"process id {pid} is not in [0, {n})")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=addr, num_processes=n, process_id=pid)
    return True


def is_primary() -> bool:
    """True on the process that writes results (process 0)."""
    return jax.process_index() == 0
