"""Ahead-of-time compilation for a target device, without the device and without weights.

``compile_program(model, target="tpu-v6e", program="prefill", ...)`` builds the model from its
shapes only (``jax.ShapeDtypeStruct`` leaves carrying their ``NamedSharding``; nothing is
allocated), lowers one program and compiles it with the *target's* compiler:

* ``tpu-v6e``, ``tpu-v5e``, ``tpu-v5p``, ``tpu-v4``: libtpu's compiler on a topology described by
  ``jax.experimental.topologies.get_topology_desc`` (no TPU needed).  libtpu is not a dependency of
  the project: ``make install-tpu`` puts it in its own directory (``.tpu/``), which is added to
  ``sys.path`` only here, when a TPU target is compiled (see :func:`ensure_libtpu`).
* ``cpu``: this machine's XLA:CPU.

Programs (the ones the benchmarks and ``Generator`` run):

* ``prefill``: ``model.prefill(ids, last_only=...)`` for (batch, length) ids (``PrefillBench``);
* ``step``: one cached decode step ``model.step(token, cache)``, the cache donated;
* ``generate``: ``Generator``'s on-device decode loop (``lax.while_loop`` of ``step`` + sampling)
  for ``new_tokens`` tokens, the cache donated.

The structure (scan chunk, prefill blocks) and precision are the *target's* policy
(``loading.structure_policy(cfg, platform)``, ``precision_policy(dtype)``), never the host's, and
are recorded in the result's ``policy``.

What is reported (per device: XLA partitions a sharded program into one per-device program):
XLA's cost analysis (flops, bytes accessed, transcendentals), the memory analysis (argument,
output, temp, alias, generated code bytes), whether that fits the chip's HBM (hardware profile),
the custom calls in the optimised HLO, and a roofline (:func:`roofline`).

Two byte counts, because they answer different questions (see docs/compile.md):

* ``bytes_accessed`` is XLA's cost model: the sum over the optimised program's instructions of the
  bytes each one reads and writes, in *every* memory space.  Measured here on libtpu 0.0.42: a
  donated ``x + 1`` over 256 MiB counts exactly 2 × 256 MiB (one read, one write); a lone GEMV
  counts its weight once; a 1024² bf16 matmul counts 14.7 MB for 6 MiB of operands and output
  (operand re-reads of the tiled matmul).  But a whole decode step counts ~3.2-3.6× its weights:
  the compiled program prefetches weights from HBM into on-chip VMEM with asynchronous
  ``copy-start``/``copy-done`` and ``slice-start``/``slice-done`` (their results are in memory space
  ``S(1)`` in the HLO), and the cost model counts the HBM read, the VMEM write and the consumer's
  VMEM read alike.  So it is not HBM traffic and not a bound; it is reported for information.
* ``min_bytes`` = argument + output bytes: what any program computing the same function must move
  through HBM at least once (weights and cache read, cache and logits written).  The roofline bound
  uses it, so the bound is an upper bound on speed; ``roofline["xla"]`` gives the same arithmetic
  with XLA's count, for comparison only.

XLA's cost analysis counts the body of a ``while`` loop once (it does not know the trip count):
``generate``'s flops and bytes are one loop iteration's, which is why its bound is per step.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["TARGETS", "PROGRAMS", "CompileError", "compile_program", "ensure_libtpu", "libtpu_dir",
           "roofline", "fit_and_bound", "target_devices", "custom_calls", "versions", "NOT_RUN"]

PROGRAMS = ("prefill", "step", "generate")

# target → platform, default topology (the smallest libtpu 0.0.42 accepts: one host's chips,
# "v6e:1x1" is refused as not divisible by chips_per_host_bounds 2x2x1), hardware profile
TARGETS: dict[str, dict[str, Any]] = {
    "tpu-v6e": {"name": "TPU v6e", "platform": "tpu", "topology": "v6e:2x2", "profile": "tpu_v6e",
                "accelerator": "v6e-4"},
    "tpu-v5e": {"name": "TPU v5e", "platform": "tpu", "topology": "v5e:2x2", "profile": "tpu_v5e",
                "accelerator": "v5litepod-4"},
    "tpu-v5p": {"name": "TPU v5p", "platform": "tpu", "topology": "v5p:2x2x1", "profile": "tpu_v5p",
                "accelerator": "v5p-8"},
    "tpu-v4": {"name": "TPU v4", "platform": "tpu", "topology": "v4:2x2x1", "profile": "tpu_v4", "accelerator": "v4-8"},
    "cuda-l40s": {"name": "NVIDIA L40S", "platform": "cuda", "topology": "1x1x1", "profile": "l40s",
                  "accelerator": None, "target_config": "l40s"},
    "cuda-h100": {"name": "NVIDIA H100 SXM", "platform": "cuda", "topology": "1x1x1", "profile": "h100_sxm",
                  "accelerator": None, "target_config": "h100_sxm"},
    "cpu": {"name": "CPU", "platform": "cpu", "topology": None, "profile": "cpu", "accelerator": None},
}
NOT_RUN = "compiled for {kind}, not run"
LIBTPU_ENV = "MAMBA2_JAX_LIBTPU_DIR"
CUDA_ENV = "MAMBA2_JAX_CUDA_PLUGIN_DIR"


class CompileError(ValueError):
    """A target, topology, program or mesh that cannot be compiled (the CLI exits with 2)."""


# ------------------------------------------------------------------------------ libtpu
def libtpu_dir() -> Path | None:
    """Where ``make install-tpu`` put libtpu: ``$MAMBA2_JAX_LIBTPU_DIR``, else ``<checkout>/.tpu``."""
    env = os.environ.get(LIBTPU_ENV)
    if env:
        return Path(env).expanduser().resolve()
    from .paths import checkout_root

    root = checkout_root()
    return (root / ".tpu") if root is not None else None


def ensure_libtpu(accelerator: str | None = "v6e-4") -> str:
    """Make libtpu importable for a TPU compile and return its version.

    An installed libtpu (a TPU VM's ``jax[tpu]``) is used as is.  Otherwise :func:`libtpu_dir` is
    appended to ``sys.path`` for this process only.  Off a TPU VM, libtpu's start-up looks for the
    accelerator type and worker hostnames (metadata server, then environment) and prints two
    warnings; the environment variables it reads are set (``setdefault``: a real TPU VM's own values
    win) so that it finds them and stays quiet.  libtpu also takes a machine-wide lock
    (/tmp/libtpu_lockfile) that makes a second process fail ("Internal error when accessing libtpu
    multi-process lockfile"); compiling needs no TPU to own, so ``ALLOW_MULTIPLE_LIBTPU_LOAD=1``
    lets several compiles (tests beside a running suite) share the machine."""
    if importlib.util.find_spec("libtpu") is None:
        d = libtpu_dir()
        if d is not None and (d / "libtpu").is_dir() and str(d) not in sys.path:
            sys.path.append(str(d))
            importlib.invalidate_caches()
        if importlib.util.find_spec("libtpu") is None:
            raise CompileError(
                f"libtpu is not installed: run `make install-tpu` (libtpu==0.0.42.*, the version jax 0.10.2's "
                f"[tpu] extra pins, into .tpu/ of the checkout, outside the venv) or point {LIBTPU_ENV} at a "
                f"directory holding the libtpu package")
    if accelerator:
        for k, v in (("ALLOW_MULTIPLE_LIBTPU_LOAD", "1"), ("TPU_SKIP_MDS_QUERY", "1"),
                     ("TPU_ACCELERATOR_TYPE", accelerator), ("TPU_WORKER_HOSTNAMES", "localhost"),
                     ("TPU_WORKER_ID", "0")):
            os.environ.setdefault(k, v)
    return libtpu_version() or "unknown"


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # the parent package is missing
        return False


def cuda_plugin_dir() -> Path | None:
    """Where ``make install-cuda-plugin`` put jax-cuda12-plugin/-pjrt: ``$MAMBA2_JAX_CUDA_PLUGIN_DIR``,
    else ``<checkout>/.cuda``."""
    env = os.environ.get(CUDA_ENV)
    if env:
        return Path(env).expanduser().resolve()
    from .paths import checkout_root

    root = checkout_root()
    return (root / ".cuda") if root is not None else None


def ensure_cuda_plugin() -> str:
    """Make JAX's CUDA plugin loadable for a compile-only CUDA target; returns its version.

    JAX registers PJRT plugins (the ``jax_plugins`` namespace) when its backends start, so the
    plugin's directory must be on ``sys.path`` before that: a fresh process (the CLI).  The backends
    are then limited to the CPU (``jax_platforms="cpu"``, unless the caller chose): without a GPU
    driver the CUDA backend cannot start, and only the plugin's compiler is used."""
    import jax
    from jax._src import xla_bridge as xb

    if not _has_module("jax_plugins.xla_cuda12"):
        d = cuda_plugin_dir()
        if d is not None and (d / "jax_plugins").is_dir() and str(d) not in sys.path:
            if xb.backends_are_initialized():
                raise CompileError("a CUDA target must be compiled in a fresh process (JAX's backends are "
                                   "already started here, so the CUDA plugin can no longer register)")
            sys.path.append(str(d))
            importlib.invalidate_caches()
        if not _has_module("jax_plugins.xla_cuda12"):
            raise CompileError(f"JAX's CUDA plugin is not installed: run `make install-cuda-plugin` "
                               f"(jax-cuda12-plugin and jax-cuda12-pjrt 0.10.2 into .cuda/ of the checkout) or "
                               f"point {CUDA_ENV} at a directory holding them")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    if not xb.backends_are_initialized() and not os.environ.get("JAX_PLATFORMS"):
        jax.config.update("jax_platforms", "cpu")
    try:
        return importlib.metadata.version("jax-cuda12-pjrt")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def libtpu_version() -> str | None:
    try:
        return importlib.metadata.version("libtpu")
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, Any]:
    import jax
    import jaxlib

    try:
        cuda = importlib.metadata.version("jax-cuda12-pjrt")
    except importlib.metadata.PackageNotFoundError:
        cuda = None
    return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "libtpu": libtpu_version(), "jax_cuda12_pjrt": cuda}


# ------------------------------------------------------------------------------ targets
def target_devices(target: str, topology: str | None = None) -> tuple[list, str, str]:
    """(devices, topology name, device kind) for ``target``.  TPU devices are compile-only."""
    if target not in TARGETS:
        raise CompileError(f"unknown target {target!r}; known targets: {', '.join(TARGETS)}")
    t = TARGETS[target]
    if t["platform"] == "cpu":
        if topology:
            raise CompileError("--topology applies to TPU targets only")
        import jax

        devs = jax.devices("cpu")
        return devs, f"cpu:{len(devs)}", devs[0].device_kind
    from jax.experimental import topologies

    if t["platform"] == "cuda":
        from .gpu_targets import TARGET_CONFIGS

        ensure_cuda_plugin()
        if topology and topology != t["topology"]:
            raise CompileError(f"{target}: only topology {t['topology']} (one GPU) is supported")
        try:
            topo = topologies.get_topology_desc(platform="cuda", target_config=TARGET_CONFIGS[t["target_config"]],
                                                topology=t["topology"])
        except Exception as e:
            raise CompileError(f"the CUDA plugin refused the {t['name']} target description: "
                               f"{type(e).__name__}: {str(e).splitlines()[0][:300]}") from None
        devs = list(topo.devices)
        return devs, f"{t['target_config']}:{t['topology']}", devs[0].device_kind
    ensure_libtpu(t["accelerator"])

    name = topology or t["topology"]
    gen = t["topology"].split(":")[0]
    if not name.startswith(gen + ":"):
        raise CompileError(f"topology {name!r} is not a {target} topology (expected {gen}:AxB[xC])")
    try:
        topo = topologies.get_topology_desc(topology_name=name, platform="tpu")
    except Exception as e:  # libtpu's INVALID_ARGUMENT (e.g. "v6e:1x1": not divisible by the host bounds)
        raise CompileError(f"libtpu refused topology {name!r}: {str(e).splitlines()[0][:300]}") from None
    devs = list(topo.devices)
    return devs, name, devs[0].device_kind


def _chips(devices) -> int:
    """Chips among ``devices`` (a v4 chip shows its two TensorCores as two devices in a topology)."""
    coords = {tuple(getattr(d, "coords", ()) or ()) for d in devices}
    return len(coords) if coords and () not in coords else len(devices)


# ------------------------------------------------------------------------------ the abstract model
def _structure_policy(cfg, platform: str):
    from .loading import structure_policy

    return structure_policy(cfg, platform)


def _precision_policy(dtype, state_dtype="float32") -> dict[str, Any]:
    from .loading import precision_policy

    try:
        return precision_policy(dtype, state_dtype)
    except ValueError as e:
        raise CompileError(str(e)) from None


def _single_device_params(cfg, dtype, sharding, stacked: bool = False) -> dict[str, Any]:
    import jax

    from .sharding import _param_shapes

    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
                        _param_shapes(cfg, dtype, stacked))


def abstract_model(cfg, dtype, mesh, sharded: bool, policy, precision, state_dtype="float32"):
    """The model with ``jax.ShapeDtypeStruct`` parameters (with their shardings): no weights.  ``policy``
    is the target's ``loading.StructurePolicy``; ``state_dtype`` the SSM state's storage dtype."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from .model import Mamba2LMHeadModel
    from .sharding import abstract_params

    stacked = policy.param_layout == "stacked"
    if sharded:
        params = abstract_params(cfg, mesh, dtype, stacked)
    else:
        params = _single_device_params(cfg, dtype, NamedSharding(mesh, P()), stacked)
    model = Mamba2LMHeadModel(cfg, params, precision=precision, scan_chunk_size=policy.scan_chunk_size,
                              scan_layers=policy.prefill_layers == "scan", prefill_block=policy.prefill_block,
                              step_block_bytes=None if sharded else policy.step_block_bytes, state_dtype=state_dtype,
                              ssd_chunk_loop=policy.ssd_chunks == "scan")
    if sharded:
        model.mesh = mesh
    return model


def _abstract_cache(cfg, batch: int, mesh, dtype, state_dtype="float32"):
    from .sharding import abstract_cache

    return abstract_cache(cfg, batch, mesh, dtype, state_dtype)


# ------------------------------------------------------------------------------ HLO facts
_CC = re.compile(r'custom_call_target="([^"]+)"')
_SCC = re.compile(r'(?:stablehlo\.custom_call|call_target_name\s*=)\s*@?"?([\w.$-]+)')
# sharding annotations for XLA's SPMD partitioner (with_sharding_constraint), not kernels
PARTITIONER_ANNOTATIONS = frozenset({"Sharding", "SPMDFullToShardShape", "SPMDShardToFullShape"})


def custom_calls(text: str) -> list[str]:
    """The distinct custom-call targets in an HLO module's text or a StableHLO module's text."""
    return sorted(set(_CC.findall(text)) | set(_SCC.findall(text)))


def _cost(compiled) -> dict[str, float]:
    ca = compiled.cost_analysis()
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else {}
    return dict(ca or {})


def _mem(compiled) -> dict[str, int]:
    m = compiled.memory_analysis()
    if m is None:
        return {}
    keys = {"argument_bytes": "argument_size_in_bytes", "output_bytes": "output_size_in_bytes",
            "temp_bytes": "temp_size_in_bytes", "alias_bytes": "alias_size_in_bytes",
            "generated_code_bytes": "generated_code_size_in_bytes"}
    return {k: int(getattr(m, v, 0) or 0) for k, v in keys.items()}


def _lowered_cost(lowered) -> dict[str, float]:
    """XLA's cost analysis of a lowered (not yet optimised) module, run by the CPU client."""
    try:
        from jax._src import xla_bridge as xb
        from jax._src.lib import _jax

        return dict(_jax.hlo_module_cost_analysis(xb.get_backend("cpu"), lowered._lowering.hlo().as_hlo_module()))
    except Exception:  # private API: no cost rather than no compile
        return {}


def roofline(flops: float, min_bytes: float, tokens: int, peak: float, bandwidth: float,
             xla_bytes: float | None = None) -> dict[str, Any]:
    """Minimum time = max(flops / peak, bytes / bandwidth) and the upper bounds that follow:
    tokens/s, MFU (FLOP/s ÷ peak) and HBU (bytes/s ÷ bandwidth) at that time."""
    t_c, t_m = flops / peak, min_bytes / bandwidth
    t = max(t_c, t_m)
    out = {"peak_flops": peak, "bandwidth": bandwidth, "compute_s": t_c, "memory_s": t_m, "min_time_s": t,
           "bound": "compute" if t_c >= t_m else "memory", "tokens": tokens,
           "bound_tokens_per_s": tokens / t if t > 0 else None,
           "bound_mfu": (flops / t) / peak if t > 0 else None,
           "bound_hbu": (min_bytes / t) / bandwidth if t > 0 else None,
           "bound_tflops": flops / t / 1e12 if t > 0 else None}
    if xla_bytes is not None:
        tx = max(t_c, xla_bytes / bandwidth)
        out["xla"] = {"memory_s": xla_bytes / bandwidth, "min_time_s": tx,
                      "bound": "compute" if t_c >= xla_bytes / bandwidth else "memory",
                      "bound_tokens_per_s": tokens / tx if tx > 0 else None,
                      "bound_tflops": flops / tx / 1e12 if tx > 0 else None,
                      "bound_mfu": (flops / tx) / peak if tx > 0 else None}
    return out


# ------------------------------------------------------------------------------ compile
def _config(model: Any):
    """A Mamba2Config from a config, a checkpoint directory, a config.json, a preset or a hub id."""
    from .config import Mamba2Config, get_preset

    if isinstance(model, Mamba2Config):
        return model, model.name
    s = str(model)
    p = Path(s).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise CompileError(f"{s}: a directory without config.json")
        return Mamba2Config.from_json(p / "config.json"), s
    if p.is_file():
        return Mamba2Config.from_json(p), s
    try:
        return get_preset(s), s
    except Exception:
        pass
    from .checkpoint import resolve_model_dir

    d = resolve_model_dir(s)  # a hub id (CheckpointError when it cannot be fetched)
    return Mamba2Config.from_json(d / "config.json"), s


def build_program(cfg, program: str, jdt, jmesh, sharded: bool, policy, prec, *, batch: int,
                  length: int, new_tokens: int, last_only: bool, state_dtype: str = "float32"):
    """(jitted function, abstract arguments, static keyword arguments, tokens per call) of ``program``
    for the abstract model on ``jmesh`` (the shardings of its arguments), its SSM state stored in
    ``state_dtype``."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    abstract = abstract_model(cfg, jdt, jmesh, sharded, policy, prec, state_dtype)
    graphdef, state = nnx.split(abstract)
    batch_sh = NamedSharding(jmesh, P("data"))
    rep = NamedSharding(jmesh, P())

    if program == "prefill":
        def fn(state, ids):
            m = nnx.merge(graphdef, state)
            return m.prefill(ids, last_only=last_only)

        ids = jax.ShapeDtypeStruct((batch, length), jnp.int32, sharding=NamedSharding(jmesh, P("data", None)))
        args = (state, ids)
        jitted, kwargs = jax.jit(fn), {}
        tokens = batch * length
    elif program == "step":
        def fn(state, tok, cache):
            return nnx.merge(graphdef, state).step(tok, cache)

        args = (state, jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=batch_sh),
                _abstract_cache(cfg, batch, jmesh, jdt, state_dtype))
        jitted, kwargs = jax.jit(fn, donate_argnums=2), {}
        tokens = batch
    else:
        from .generate import DecodeState, Generator, SamplingConfig

        gen = Generator(abstract, eos_id=0)
        key = jax.eval_shape(lambda: jax.random.key(0))
        S = jax.ShapeDtypeStruct
        bvec = lambda dt: S((batch,), dt, sharding=batch_sh)  # noqa: E731
        dstate = DecodeState(  # the loop's carry after the prompt's token: shapes only
            cache=_abstract_cache(cfg, batch, jmesh, jdt, state_dtype), token=bvec(jnp.int32),
            position=bvec(jnp.int32),
            tokens=S((batch, int(new_tokens)), jnp.int32, sharding=NamedSharding(jmesh, P("data", None))),
            step=S((), jnp.int32, sharding=rep), done=bvec(jnp.bool_), nonfinite=bvec(jnp.bool_),
            nonfinite_at=bvec(jnp.int32), keys=S((batch,) + key.shape, key.dtype, sharding=batch_sh))
        args = (gen.state, dstate)
        jitted, kwargs = gen._decode, {"sampling": SamplingConfig()}
        tokens = batch  # per loop iteration (XLA counts a while body once)

    return jitted, args, kwargs, tokens


def _ensure_flatbuffers() -> None:
    """``Exported.serialize`` needs ``flatbuffers``; ``make install-cuda-plugin`` puts it in .cuda/."""
    if _has_module("flatbuffers"):
        return
    d = cuda_plugin_dir()
    if d is not None and (d / "flatbuffers").is_dir():
        from jax._src import xla_bridge as xb

        if not xb.backends_are_initialized() and not os.environ.get("JAX_PLATFORMS"):
            import jax

            jax.config.update("jax_platforms", "cpu")  # the CUDA plugin beside it cannot start without a GPU
        sys.path.append(str(d))
        importlib.invalidate_caches()


def export_program(model: Any, program: str = "prefill", *, platforms=("cuda",), batch: int = 1, length: int = 2048,
                   new_tokens: int = 128, last_only: bool = True, dtype: str = "bfloat16",
                   precision: str | None = None, state_dtype: str = "float32") -> dict[str, Any]:
    """``jax.export`` one program for ``platforms`` from shapes only (no device of that kind needed),
    serialize it (the ``flatbuffers`` package: ``make install-cuda-plugin`` installs it beside the
    plugin) and list the custom calls of its StableHLO.  The structure policy is the first
    platform's."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import AxisType, Mesh

    if program not in PROGRAMS:
        raise CompileError(f"unknown program {program!r}; programs: {', '.join(PROGRAMS)}")
    cfg, model_name = _config(model)
    jdt = jnp.dtype(dtype)
    cpu = jax.devices("cpu")[:1]
    jmesh = Mesh(np.array(cpu).reshape(1, 1), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
    plat = {"gpu": "cuda"}.get(platforms[0], platforms[0])
    policy = _structure_policy(cfg, plat)
    prec_pol = _precision_policy(jdt, state_dtype)
    prec = precision if precision is not None else prec_pol["matmul_precision"]
    jitted, args, kwargs, tokens = build_program(cfg, program, jdt, jmesh, False, policy, prec, batch=batch,
                                                 length=length, new_tokens=new_tokens, last_only=last_only,
                                                 state_dtype=prec_pol["state_dtype"])
    # flat arguments and results: an nnx State or a Mamba2Cache has no serialization registered with
    # jax.export, and a flat signature is what another runtime would call anyway
    # (and a typed PRNG key, in or out, travels as its raw uint32 data, which jax.export can serialize)
    leaves, treedef = jax.tree.flatten(args)
    is_key = [jnp.issubdtype(x.dtype, jax.dtypes.prng_key) for x in leaves]
    raw = [jax.ShapeDtypeStruct(x.shape + (2,), jnp.uint32) if k else x for x, k in zip(leaves, is_key)]

    def flat(*xs):
        xs = [jax.random.wrap_key_data(x) if k else x for x, k in zip(xs, is_key)]
        out = jax.tree.leaves(jitted(*jax.tree.unflatten(treedef, xs), **kwargs))
        # results too: the decode loop returns its carry, PRNG key included
        return [jax.random.key_data(y) if jnp.issubdtype(y.dtype, jax.dtypes.prng_key) else y for y in out]

    _ensure_flatbuffers()
    t0 = time.perf_counter()
    exp = jax.export.export(jax.jit(flat), platforms=tuple(platforms))(*raw)
    t1 = time.perf_counter()
    text = exp.mlir_module()
    try:
        blob = exp.serialize()
        ser = {"serialized_bytes": len(blob), "serialize_error": None}
    except Exception as e:  # flatbuffers missing
        ser = {"serialized_bytes": None, "serialize_error": f"{type(e).__name__}: {e}"}
    calls = custom_calls(text)
    return {"model": model_name, "config": cfg.name, "program": program, "platforms": list(exp.platforms),
            "batch": batch, "length": length if program == "prefill" else None,
            "new_tokens": new_tokens if program == "generate" else None, "dtype": jdt.name, "precision": str(prec),
            "policy": {**policy.as_dict(), **prec_pol, "matmul_precision": str(prec)}, "export_s": t1 - t0,
            "io_dtypes": sorted({str(a.dtype) for a in (*exp.in_avals, *exp.out_avals)}),
            "stablehlo_chars": len(text), **ser,
            "custom_calls": [c for c in calls if c not in PARTITIONER_ANNOTATIONS],
            "partitioner_annotations": [c for c in calls if c in PARTITIONER_ANNOTATIONS],
            "versions": versions()}


def fit_and_bound(mem: dict[str, int], flops: float, xla_bytes: float, tokens: int, profile: str, dtype: str,
                  precision: Any, num_devices: int = 1, chips: int = 1) -> dict[str, Any]:
    """Whether a compiled program fits the chip's HBM and its :func:`roofline`, from its memory analysis
    (``mem``: argument/output/temp/alias/generated_code bytes per device), XLA's flops and bytes, and the
    target's hardware profile (``TARGETS[target]["profile"]``; "cpu": no bound).  One function for every
    compiled program, this project's (:func:`compile_program`) and the paper's package's
    (experiments/tpu_compile_anchor.py), so that their bounds are computed alike."""
    from .hardware import get_profile

    prof = get_profile(profile) if profile != "cpu" else None
    per_chip_devices = max(1, num_devices // max(chips, 1))
    hbm = (prof.memory_bytes / per_chip_devices) if prof is not None and prof.memory_bytes else None
    need = mem.get("argument_bytes", 0) + mem.get("output_bytes", 0) + mem.get("temp_bytes", 0) \
        + mem.get("generated_code_bytes", 0) - mem.get("alias_bytes", 0)
    min_bytes = float(mem.get("argument_bytes", 0) + mem.get("output_bytes", 0))
    roof = None
    if prof is not None:
        peak, peak_note = prof.peak_flops(dtype, precision)
        bw = prof.bandwidth / per_chip_devices
        peak = peak / per_chip_devices
        roof = roofline(flops, min_bytes, tokens, peak, bw, xla_bytes)
        roof["peak_note"] = peak_note
        roof["profile"] = prof.name
        roof["source"] = prof.source
    return {"min_bytes": min_bytes, "bytes_needed_per_device": need, "hbm_bytes_per_device": hbm,
            "fits": (need <= hbm) if hbm else None, "roofline": roof,
            "bound_tokens_per_s": roof["bound_tokens_per_s"] if roof else None}


def compile_program(model: Any, target: str = "tpu-v6e", program: str = "prefill", *, batch: int = 1,
                    length: int = 2048, new_tokens: int = 128, last_only: bool = True, dtype: str = "bfloat16",
                    mesh: Any = None, topology: str | None = None, precision: str | None = None,
                    keep_hlo: bool = False, state_dtype: str = "float32") -> dict[str, Any]:
    """Compile one program for one target (see the module docstring); returns the report dict."""
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import AxisType, Mesh

    from .sharding import describe_mesh, parse_mesh

    if program not in PROGRAMS:
        raise CompileError(f"unknown program {program!r}; programs: {', '.join(PROGRAMS)}")
    if target not in TARGETS:
        raise CompileError(f"unknown target {target!r}; known targets: {', '.join(TARGETS)}")
    for name, v in (("batch", batch), ("length", length), ("new_tokens", new_tokens)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise CompileError(f"{name} must be a positive integer, got {v!r}")
    try:
        jdt = jnp.dtype(dtype)
    except TypeError:
        raise CompileError(f"unknown dtype {dtype!r} (float32 | bfloat16 | float16)") from None
    cfg, model_name = _config(model)
    t = TARGETS[target]
    devices, topo_name, kind = target_devices(target, topology)
    shape = parse_mesh(mesh) or {"data": 1, "model": 1}
    D, M = shape["data"], shape["model"]
    if D * M > len(devices):
        raise CompileError(f"mesh data={D},model={M} needs {D * M} devices; topology {topo_name} has "
                           f"{len(devices)} (pass a larger --topology, e.g. {t['topology'].split(':')[0]}:2x4)")
    if batch % D:
        raise CompileError(f"batch {batch} does not divide by the mesh's data axis ({D})")
    used = devices[:D * M]
    jmesh = Mesh(np.array(used).reshape(D, M), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
    sharded = D * M > 1
    policy = _structure_policy(cfg, t["platform"])
    prec_pol = _precision_policy(jdt, state_dtype)
    prec = precision if precision is not None else prec_pol["matmul_precision"]
    jitted, args, kwargs, tokens = build_program(cfg, program, jdt, jmesh, sharded, policy, prec, batch=batch,
                                                 length=length, new_tokens=new_tokens, last_only=last_only,
                                                 state_dtype=prec_pol["state_dtype"])

    t0 = time.perf_counter()
    lowered = jitted.lower(*args, **kwargs)
    t1 = time.perf_counter()
    try:
        compiled = lowered.compile()
    except Exception as e:
        raise CompileError(f"{target} compiler failed: {str(e).splitlines()[0][:500]}") from e
    t2 = time.perf_counter()
    cost, mem = _cost(compiled), _mem(compiled)
    cost_source = "compiled"
    loop_cost = None
    if program == "prefill" and (policy.prefill_layers == "scan" or policy.ssd_chunks == "scan"):
        # XLA counts a while body once: the scans over layers and over SSD chunks would hide all but
        # one layer's and one chunk's work.  The count is XLA's on the same program with the layers
        # unrolled and the chunks at once (the same math), before optimisations, per device.
        flat = policy.replace(prefill_layers="unrolled", ssd_chunks="parallel")
        fj, fargs, fkw, _ = build_program(cfg, program, jdt, jmesh, sharded, flat, prec, batch=batch,
                                          length=length, new_tokens=new_tokens, last_only=last_only,
                                          state_dtype=prec_pol["state_dtype"])
        flat_cost = _lowered_cost(fj.lower(*fargs, **fkw))
        if flat_cost:
            loop_cost, cost = cost, {k: float(v) / len(used) for k, v in flat_cost.items()
                                     if k in ("flops", "bytes accessed", "transcendentals")}
            cost_source = ("XLA's HloCostAnalysis, before optimisations, of the same program with the layers "
                           "unrolled and the SSD chunks at once (the compiled program's loops are counted once); "
                           "divided by the devices")
    if not cost:  # the CUDA plugin's compile-only executable reports none: XLA's count on the unoptimised HLO
        cost = _lowered_cost(lowered)
        cost_source = ("XLA's HloCostAnalysis of the program before the target's optimisations (the CUDA plugin's "
                       "compile-only executable reports no cost analysis)")
    hlo = compiled.as_text() or ""
    program_calls = custom_calls(lowered.as_text())
    chips = _chips(used)
    flops = float(cost.get("flops", float("nan")))
    xla_bytes = float(cost.get("bytes accessed", float("nan")))
    fb = fit_and_bound(mem, flops, xla_bytes, tokens, t["profile"], jdt.name, prec, len(used), chips)
    need, hbm, min_bytes, roof = (fb["bytes_needed_per_device"], fb["hbm_bytes_per_device"], fb["min_bytes"],
                                  fb["roofline"])
    vers = versions()
    out = {
        "target": target, "platform": t["platform"], "device_kind": kind, "topology": topo_name,
        "topology_devices": len(devices), "num_devices": len(used), "chips": chips,
        "mesh": describe_mesh(jmesh) if sharded else None, "mesh_shape": shape,
        "model": model_name, "config": cfg.name, "num_params": cfg.num_params(), "program": program,
        "batch": batch, "length": length if program == "prefill" else None,
        "new_tokens": new_tokens if program == "generate" else None,
        "last_only": last_only if program == "prefill" else None, "dtype": jdt.name,
        "precision": str(prec), "policy": {**policy.as_dict(), **prec_pol, "matmul_precision": str(prec)},
        "lower_s": t1 - t0, "compile_s": t2 - t1,
        "flops": flops, "bytes_accessed": xla_bytes, "transcendentals": float(cost.get("transcendentals", 0.0)),
        "optimal_seconds": cost.get("optimal_seconds"),
        **mem, "min_bytes": min_bytes, "bytes_needed_per_device": need, "hbm_bytes_per_device": hbm,
        "fits": (need <= hbm) if hbm else None,
        "custom_calls": [c for c in program_calls if c not in PARTITIONER_ANNOTATIONS],
        "partitioner_annotations": [c for c in program_calls if c in PARTITIONER_ANNOTATIONS],
        "compiler_custom_calls": custom_calls(hlo),
        "tokens_per_call": tokens,
        "bound_tokens_per_s": roof["bound_tokens_per_s"] if roof else None,
        "roofline": roof,
        "cost_source": cost_source,
        "compiled_cost_loops_once": ({k: loop_cost.get(k) for k in ("flops", "bytes accessed", "transcendentals")}
                                     if loop_cost else None),
        "cost_note": ("per device; a while loop's body is counted once by XLA's cost analysis"
                      if program == "generate" else "per device"),
        "versions": vers,
        "status": (NOT_RUN.format(kind=t["name"]) if t["platform"] != "cpu"
                   else "compiled for this machine's CPU, not run"),
    }
    if keep_hlo:
        out["hlo"] = hlo
        out["stablehlo"] = lowered.as_text()
    return out

