"""Bytes per device of parameters and cache under a mesh, read from the compiled decode step.

    python experiments/sharding_memory.py        # 5 paper models × meshes (1,1) (1,4) (1,8) × batch 1, 64
    python experiments/sharding_memory.py dtype=bfloat16 meshes=[data=2,model=4]

Nothing is allocated: the parameters and the cache are ``jax.ShapeDtypeStruct`` with shardings
(``mamba2_jax.sharding.abstract_params`` / ``abstract_cache``), and one decode step (the program
generation runs per token; cache donated) is AOT lowered and compiled for each model × mesh ×
batch.  Per device, from the compiled executable: the shard shape of every input under
``compiled.input_shardings`` (parameters and cache separately) and ``compiled.memory_analysis()``
(arguments, outputs, aliased, temporaries); the two agree (checked: arguments = parameters +
cache + token ids).  On CPU, JAX is given 8 simulated devices (the XLA SPMD partitioner and the
per-device program are the same as on 8 accelerators; only the executable's backend differs).

Writes results/sharding/<run>.json (+ .md table, provenance included).
"""

from __future__ import annotations

import os
import time

if __name__ == "__main__" and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    # run as a script, before JAX starts (affects only the CPU backend); not on import, where it
    # would only leak into the importer's environment and its subprocesses (tests import run())
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import hydra
from omegaconf import OmegaConf

from mamba2_jax.eval import models as model_specs
from mamba2_jax.eval.results import write_results
from mamba2_jax.fileio import atomic_write_text
from mamba2_jax.paths import require_data_dir, results_dir


def measure(cfg_model, mesh, batch: int, dtype: str, precision: str | None = None) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from mamba2_jax import sharding
    from mamba2_jax.eval import flops
    from mamba2_jax.loading import precision_policy
    from mamba2_jax.model import Mamba2LMHeadModel

    prec = precision or precision_policy(dtype)["matmul_precision"]
    model = Mamba2LMHeadModel(cfg_model, sharding.abstract_params(cfg_model, mesh, dtype), precision=prec)
    model.mesh = mesh
    graphdef, state = nnx.split(model)
    cache = sharding.abstract_cache(cfg_model, batch, mesh, dtype)
    tok = jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=NamedSharding(mesh, P("data")))

    def step(state, cache, tok):
        logits, cache = nnx.merge(graphdef, state).step(tok, cache)
        return jnp.argmax(logits, axis=-1).astype(jnp.int32), cache

    t0 = time.perf_counter()
    lowered = jax.jit(step, donate_argnums=(1,)).lower(state, cache, tok)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    in_sh = compiled.input_shardings[0]  # (state, cache, tok) as compiled
    leaves = jax.tree.leaves((state, cache, tok))
    shs = jax.tree.leaves(in_sh, is_leaf=lambda x: hasattr(x, "shard_shape"))
    assert len(leaves) == len(shs), (len(leaves), len(shs))

    def per_device(x, sh) -> int:
        return int(np.prod(sh.shard_shape(x.shape))) * jnp.dtype(x.dtype).itemsize

    n_state, n_cache = len(jax.tree.leaves(state)), len(jax.tree.leaves(cache))
    sizes = [per_device(x, s) for x, s in zip(leaves, shs)]
    params_b, cache_b = sum(sizes[:n_state]), sum(sizes[n_state:n_state + n_cache])
    tok_b = sum(sizes[n_state + n_cache:])
    total_params = sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(state))
    total_cache = sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(cache))
    ma = compiled.memory_analysis()
    mem = {k: int(getattr(ma, k)) for k in ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
                                            "temp_size_in_bytes", "generated_code_size_in_bytes")
           if ma is not None and getattr(ma, k, None) is not None}
    sb = flops.state_bytes(cfg_model, batch, dtype)  # float32 SSM state, conv state in the param dtype
    ssm_frac = sb["ssm"] / sb["total"]
    return {
        "model": cfg_model.name, "dtype": dtype, "batch": batch,
        "mesh_data": int(mesh.shape["data"]), "mesh_model": int(mesh.shape["model"]),
        "n_devices": int(mesh.devices.size),
        "params_bytes_per_device": params_b, "cache_bytes_per_device": cache_b, "token_bytes_per_device": tok_b,
        "params_bytes_total": total_params, "cache_bytes_total": total_cache,
        "params_fraction_per_device": params_b / total_params, "cache_fraction_per_device": cache_b / total_cache,
        "ssm_state_share_of_cache": ssm_frac,
        "compiled_memory": mem,
        "arguments_match_shard_shapes": mem.get("argument_size_in_bytes") == params_b + cache_b + tok_b
        if "argument_size_in_bytes" in mem else None,
        "compile_s": compile_s, "program": "decode step (model.step + argmax), cache donated",
    }


def render_markdown(doc: dict) -> str:
    recs = doc["records"]
    mib = lambda b: f"{b / 2**20:,.1f}"
    lines = [
        f"Bytes per device (MiB) of one decode step, {recs[0]['dtype'] if recs else ''} parameters, float32 SSM "
        f"state; from the compiled program (AOT, no allocation). `temp` = XLA temporaries.", "",
        "| model | mesh (data, model) | batch | params / device | cache / device | params+cache | args (compiled) "
        "| temp (compiled) | params ÷ | cache ÷ |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in recs:
        m = r["compiled_memory"]
        lines.append(
            f"| {r['model']} | ({r['mesh_data']}, {r['mesh_model']}) | {r['batch']} | "
            f"{mib(r['params_bytes_per_device'])} | {mib(r['cache_bytes_per_device'])} | "
            f"{mib(r['params_bytes_per_device'] + r['cache_bytes_per_device'])} | "
            f"{mib(m.get('argument_size_in_bytes', 0))} | {mib(m.get('temp_size_in_bytes', 0))} | "
            f"{r['params_bytes_total'] / r['params_bytes_per_device']:.2f} | "
            f"{r['cache_bytes_total'] / r['cache_bytes_per_device']:.2f} |")
    return "\n".join(lines) + "\n"


def run(cfg) -> list[dict]:
    from mamba2_jax import sharding

    dd = require_data_dir(cfg.paths.data_dir)
    records = []
    for name in cfg.models:
        mcfg = model_specs.model_config(model_specs.load_model_spec(str(name)), dd)
        for spec in cfg.meshes:
            mesh = sharding.make_mesh(str(spec))
            for b in cfg.batches:
                r = {**measure(mcfg, mesh, int(b), str(cfg.dtype), cfg.matmul_precision), "model": str(name),
                     "mesh": sharding.describe_mesh(mesh)}
                records.append(r)
                print(f"[sharding_memory] {name} mesh={spec} batch={b}: "
                      f"params {r['params_bytes_per_device'] / 2**20:,.1f} "
                      f"MiB/device, cache {r['cache_bytes_per_device'] / 2**20:,.1f} MiB/device, args match: "
                      f"{r['arguments_match_shard_shapes']} (compile {r['compile_s']:.1f} s)", flush=True)
    return records


@hydra.main(config_path="pkg://mamba2_jax.eval.conf", config_name="sharding_memory", version_base="1.3")
def main(cfg) -> None:
    import jax

    records = run(cfg)
    d0 = jax.devices()[0]
    hw = {"profile": {"name": "aot-compile"}, "device": f"{d0.device_kind} ({d0.platform})", "matches_device": True,
          "n_devices_visible": len(jax.devices()),
          "note": "byte counts come from compiled executables; nothing ran"}
    run_name = cfg.run or f"memory-{cfg.dtype}-on-{d0.platform}"
    out = results_dir(cfg.out_dir) if cfg.out_dir else results_dir() / "sharding"
    paths = write_results("sharding_memory", run_name, records, hardware=hw,
                                config=OmegaConf.to_container(cfg, resolve=True),
                                label=f"sharding_memory: bytes per device from AOT-compiled decode steps on "
                                      f"{len(jax.devices())} {d0.platform} devices", out_dir=out)
    doc = {"records": records}
    md = paths[0].with_suffix(".md")
    atomic_write_text(md, render_markdown(doc))
    print(f"[sharding_memory] wrote {paths[0]} and {md}")


if __name__ == "__main__":
    main()
