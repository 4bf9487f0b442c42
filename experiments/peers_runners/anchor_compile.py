"""Compile runner: the paper's package, mamba2-jax 1.1.2, compiled for a target from shapes only.

Runs in its own process with PYTHONPATH=<anchor_dir> first (its ``mamba2_jax`` shadows this
project's, which is never imported here: experiments/tpu_compile_anchor.py is the other side).
Speaks the line protocol of ``_protocol.py``:

* ``setup``: the target (platform, topology name, accelerator type, libtpu / CUDA plugin directory,
  a GPU target description) and the model's config; makes the target's devices (TPU: libtpu's
  topology API, no TPU needed; CUDA: the plugin's, no GPU needed) and the model from shapes only
  (``nnx.eval_shape``; fp32 parameters, its defaults; nothing allocated), each leaf a
  ``jax.ShapeDtypeStruct`` placed on one device of the topology;
* ``compile``: one program, lowered and compiled with the target's compiler through the package's
  own public ``mamba2_jax.forward`` (``jax.jit`` of ``Mamba2ForCausalLM.__call__``; default matmul
  precision, no donation: what its API does):

  - ``prefill``: ``forward(model, ids)`` for (batch, length) ids: full logits (its only mode);
  - ``decode``: ``forward(model, token[:, None], cache=cache)``, its documented cached step.

  Returns raw facts only: compile seconds (wall), the 1-minute load average before and after, XLA's
  cost analysis, the memory analysis, custom calls, and how the program pads the sequence axis (the
  ``pad`` equations of its jaxpr: a one-token decode step padded to a chunk shows as ``(0, chunk-1)``).
  Whether it fits the chip and its roofline bound are computed on the project's side, by the same
  function as the project's own compiled programs (mamba2_jax.compile).

The TPU environment variables and the sys.path handling repeat ``mamba2_jax.compile.ensure_libtpu``
/ ``ensure_cuda_plugin`` (a few lines; that module cannot be imported here).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _protocol as P

S: dict = {}
_CC = re.compile(r'custom_call_target="([^"]+)"')
_SCC = re.compile(r'(?:stablehlo\.custom_call|call_target_name\s*=)\s*@?"?([\w.$-]+)')


def _custom_calls(text: str) -> list[str]:
    return sorted(set(_CC.findall(text)) | set(_SCC.findall(text)))


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # the parent package is missing
        return False


def _platform_setup(platform: str, accelerator, libtpu_dir, cuda_dir) -> str:
    """Make the target's compiler loadable (before JAX's backends start); returns its version."""
    import importlib.metadata as md

    if platform == "tpu":
        if importlib.util.find_spec("libtpu") is None and libtpu_dir and str(libtpu_dir) not in sys.path:
            sys.path.append(str(libtpu_dir))
            importlib.invalidate_caches()
        if importlib.util.find_spec("libtpu") is None:
            raise RuntimeError(f"libtpu is not installed (looked in {libtpu_dir}): run `make install-tpu`")
        for k, v in (("ALLOW_MULTIPLE_LIBTPU_LOAD", "1"), ("TPU_SKIP_MDS_QUERY", "1"),
                     ("TPU_ACCELERATOR_TYPE", accelerator or "v6e-4"), ("TPU_WORKER_HOSTNAMES", "localhost"),
                     ("TPU_WORKER_ID", "0")):
            os.environ.setdefault(k, v)
        return f"libtpu {md.version('libtpu')}"
    if platform == "cuda":
        import jax

        if not _has_module("jax_plugins.xla_cuda12") and cuda_dir:
            sys.path.append(str(cuda_dir))
            importlib.invalidate_caches()
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
        if not os.environ.get("JAX_PLATFORMS"):
            jax.config.update("jax_platforms", "cpu")
        return f"jax-cuda12-pjrt {md.version('jax-cuda12-pjrt')}"
    return "XLA:CPU"


def _devices(platform: str, topology, target_config):
    import jax

    if platform == "cpu":
        devs = jax.devices("cpu")
        return devs, f"cpu:{len(devs)}"
    from jax.experimental import topologies

    if platform == "cuda":
        topo = topologies.get_topology_desc(platform="cuda", target_config=target_config, topology=topology)
    else:
        topo = topologies.get_topology_desc(topology_name=topology, platform="tpu")
    return list(topo.devices), topology


def setup(platform, topology=None, accelerator=None, libtpu_dir=None, cuda_dir=None, target_config=None,
          model_cfg=None, topology_name=None, **_):
    compiler = _platform_setup(platform, accelerator, libtpu_dir, cuda_dir)
    import jax
    from flax import nnx
    from jax.sharding import SingleDeviceSharding

    import mamba2_jax as m2

    if m2.__version__ != "1.1.2" or "site-packages" in m2.__file__:
        raise RuntimeError(f"expected mamba2-jax 1.1.2 from the anchor dir, got {m2.__version__} at {m2.__file__}")
    mc = model_cfg
    if mc.get("ngroups", 1) != 1:
        raise RuntimeError("mamba2-jax 1.1.2 supports ngroups=1 only")
    cfg = m2.Mamba2Config(
        vocab_size=mc["padded_vocab_size"], hidden_size=mc["d_model"], state_size=mc["d_state"],
        head_dim=mc["headdim"], chunk_size=mc["chunk_size"], expand=mc["expand"], conv_kernel=mc["d_conv"],
        num_hidden_layers=mc["n_layer"], layer_norm_epsilon=mc["norm_epsilon"], tie_word_embeddings=True,
        residual_in_fp32=True)
    devs, topo_name = _devices(platform, topology, target_config)
    sh = SingleDeviceSharding(devs[0])
    place = lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh)  # noqa: E731
    # the model from shapes only: its own constructor under nnx.eval_shape (its default fp32 parameters)
    abstract = nnx.eval_shape(lambda: m2.Mamba2ForCausalLM(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    state = jax.tree.map(place, state)
    cache = jax.tree.map(place, jax.eval_shape(lambda: m2.create_empty_cache(cfg, 1)))
    n_params = sum(int(x.size) for x in jax.tree.leaves(state))
    param_dtypes = sorted({str(x.dtype) for x in jax.tree.leaves(state)})
    S.update(cfg=cfg, graphdef=graphdef, state=state, sh=sh, place=place, m2=m2, devs=devs,
             cache_of=lambda b: jax.tree.map(place, jax.eval_shape(lambda: m2.create_empty_cache(cfg, b))))
    del cache
    return {"compiler": compiler, "device_kind": devs[0].device_kind, "topology": topology_name or topo_name,
            "topology_devices": len(devs), "num_params": n_params, "param_dtypes": param_dtypes,
            "anchor_config": {k: (list(v) if isinstance(v, tuple) else v)
                              for k, v in vars(cfg).items() if not k.startswith("_")},
            "versions": P.versions("mamba2-jax", "jax", "jaxlib", "flax", "libtpu", "jax-cuda12-pjrt"),
            "module": m2.__file__}


def _seq_pads(jaxpr, axis: int = 1) -> list[list[int]]:
    """Distinct (low, high) paddings of axis ``axis`` over the ``pad`` equations of a (closed) jaxpr."""
    found = set()

    def walk(j):
        for e in j.eqns:
            if e.primitive.name == "pad":
                cfg = e.params["padding_config"]
                if len(cfg) > axis and (cfg[axis][0] or cfg[axis][1]):
                    found.add((int(cfg[axis][0]), int(cfg[axis][1])))
            for v in e.params.values():
                for sub in (v if isinstance(v, (list, tuple)) else [v]):
                    if hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):
                        walk(sub.jaxpr)
                    elif hasattr(sub, "eqns"):
                        walk(sub)

    walk(jaxpr.jaxpr)
    return sorted([list(p) for p in found])


def compile(program, batch=1, length=None, keep_hlo=False, **_):  # noqa: A001  (the protocol's command name)
    import jax
    import jax.numpy as jnp
    from flax import nnx

    m2, graphdef, state, place = S["m2"], S["graphdef"], S["state"], S["place"]
    batch = int(batch)
    if program == "prefill":
        def fn(state, ids):
            return m2.forward(nnx.merge(graphdef, state), ids)

        args = (state, place(jax.ShapeDtypeStruct((batch, int(length)), jnp.int32)))
        tokens = batch * int(length)
    elif program == "decode":
        def fn(state, tok, cache):
            return m2.forward(nnx.merge(graphdef, state), tok, cache=cache)

        args = (state, place(jax.ShapeDtypeStruct((batch, 1), jnp.int32)), S["cache_of"](batch))
        tokens = batch
    else:
        raise ValueError(f"unknown program {program!r} (prefill | decode)")
    jitted = jax.jit(fn)  # forward is itself a jax.jit: inlined, as when it is called inside another jit
    pads = _seq_pads(jax.make_jaxpr(fn)(*args))
    out_shapes = jax.eval_shape(fn, *args)
    logits_shape = list(out_shapes["logits"].shape)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    lowered = jitted.lower(*args)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    load1 = os.getloadavg()[0]
    ca = compiled.cost_analysis()
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else {}
    ca = dict(ca or {})
    cost_source = "compiled"
    if not ca:  # the CUDA plugin's compile-only executable reports none: XLA's count before its optimisations
        try:     # (as mamba2_jax.compile._lowered_cost does for our programs)
            from jax._src import xla_bridge as xb
            from jax._src.lib import _jax

            ca = dict(_jax.hlo_module_cost_analysis(xb.get_backend("cpu"), lowered._lowering.hlo().as_hlo_module()))
            cost_source = ("XLA's HloCostAnalysis of the program before the target's optimisations (the CUDA "
                           "plugin's compile-only executable reports no cost analysis)")
        except Exception:  # private API: no cost rather than no compile
            ca = {}
    wanted = ("flops", "bytes accessed", "transcendentals", "optimal_seconds")
    cost = {k: float(v) for k, v in ca.items() if k in wanted}
    m = compiled.memory_analysis()
    keys = {"argument_bytes": "argument_size_in_bytes", "output_bytes": "output_size_in_bytes",
            "temp_bytes": "temp_size_in_bytes", "alias_bytes": "alias_size_in_bytes",
            "generated_code_bytes": "generated_code_size_in_bytes"}
    mem = {k: int(getattr(m, v, 0) or 0) for k, v in keys.items()} if m is not None else {}
    hlo = compiled.as_text() or ""
    stablehlo = lowered.as_text()
    chunk = int(S["cfg"].chunk_size)
    # the chunked SSD's intra-chunk (chunk x chunk) decay matrix in the optimised program
    chunk_square = bool(re.search(rf"\b{chunk},{chunk}\b|\[{chunk},{chunk}\]|x{chunk}x{chunk}x", hlo + stablehlo))
    out = {"program": program, "batch": batch, "length": int(length) if program == "prefill" else None,
           "tokens_per_call": tokens, "lower_s": t1 - t0, "compile_s": t2 - t1,
           "load_avg_1m": [round(load0, 2), round(load1, 2)], "cost": cost, "cost_source": cost_source, "memory": mem,
           "logits_shape": logits_shape, "seq_pads": pads, "chunk_size": chunk,
           "chunk_square_in_hlo": chunk_square,
           "custom_calls": _custom_calls(stablehlo), "compiler_custom_calls": _custom_calls(hlo),
           "hlo_chars": len(hlo)}
    if keep_hlo:
        out["hlo"] = hlo
    del compiled, lowered
    return out


if __name__ == "__main__":
    P.serve({"setup": setup, "compile": compile})
