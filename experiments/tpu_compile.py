"""The paper's TPU v6e suite, compiled for TPU v6e by libtpu's compiler on a machine without a TPU.

    python experiments/tpu_compile.py [--models mamba2-130m,...] [--target tpu-v6e] [--resume]
                                      [--phase decode|claims|all] [--out results/tpu_compile]

Every program that ``profile=paper hardware=tpu_v6e`` measures (mamba2_jax/eval/conf/profile/paper.yaml:
throughput, sweep and cache_speedup), per scale:

* ``prefill`` (last-position logits, batch 1) at every length the three experiments prefill:
  throughput's prefill lengths, the sweep's contexts (the prefill before each decode context and
  the prefill-vs-length curve) and cache_speedup's contexts (the full-prefix recompute);
* ``generate``: the compiled decode loop of ``decode_tokens`` tokens (the benchmarks' loop has the
  same body: one ``model.step`` and an argmax per token);
* ``step``: one cached decode step (the per-token cost the decode roofline is built on).

In the paper's setting: the profile's param dtype and matmul precision (float32, "default"), and
the TPU structure policy (scan chunk = the checkpoint's chunk_size, no prefill blocks).  Each scale
runs on one chip where its programs fit the chip's HBM, else on the smallest ``model=`` mesh
(2, 4, 8 chips) where they do.  Nothing is run: each result says "compiled for TPU v6e, not run".

Results: ``<out>/<model>.json`` (one record per program, with provenance: git sha and clean tree,
jax / jaxlib / libtpu versions, the topology), rewritten atomically after each program, so a run
that is stopped keeps what it compiled; ``--resume`` skips programs already compiled at this
commit.  ``--phase claims`` compiles only what the paper's claims rest on (prefill at the headline
length, step and generate), for a quick pass over all five scales; ``--phase decode`` only the step
and the decode loop (about a minute per scale; the prefills take 20-40 min each on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from mamba2_jax.paths import CONF_DIR, results_dir

PHASES = ("decode", "claims", "all")
# the files that define the compiled programs: a record compiled at another commit is reused by
# --resume only if these are unchanged since (and its tree was clean)
PROGRAM_FILES = ("mamba2_jax/model.py", "mamba2_jax/ssd.py", "mamba2_jax/cache.py", "mamba2_jax/sharding.py",
                 "mamba2_jax/generate.py", "mamba2_jax/config.py", "mamba2_jax/params.py", "mamba2_jax/loading.py",
                 "mamba2_jax/ops.py", "mamba2_jax/checkpoint.py")


def reusable(rec: dict, head: dict, program_files: tuple[str, ...] = PROGRAM_FILES) -> bool:
    """Whether ``rec`` (a record of an earlier run) compiled the same programs this commit would: both trees
    clean, and ``program_files`` unchanged between the two commits."""
    import subprocess

    from mamba2_jax.paths import checkout_root

    g = rec.get("git") or {}
    if not g.get("sha") or g.get("dirty") or head.get("dirty") or not head.get("sha"):
        return False
    if g["sha"] == head["sha"]:
        return True
    r = subprocess.run(["git", "diff", "--quiet", g["sha"], head["sha"], "--", *program_files],
                       cwd=checkout_root(), capture_output=True)
    return r.returncode == 0


def paper_suite(profile: str = "paper") -> dict:
    """Models, dtype, precision, prefill lengths and decode tokens of a benchmark profile."""
    base = OmegaConf.load(CONF_DIR / "_bench_base.yaml")
    exp = {k: OmegaConf.load(CONF_DIR / f"{k}.yaml") for k in ("throughput", "sweep", "cache_speedup")}
    prof = OmegaConf.load(CONF_DIR / "profile" / f"{profile}.yaml")
    for k in ("throughput", "sweep", "cache_speedup"):
        exp[k] = OmegaConf.merge({k: exp[k].get(k, {})}, {k: prof.get(k, {})})[k]
    models = list(prof.get("models", base.models))
    lengths = sorted(set(exp["throughput"].prefill_lengths) | set(exp["sweep"].contexts)
                     | set(exp["cache_speedup"].contexts))
    tokens = sorted({int(exp["throughput"].decode_tokens), int(exp["sweep"].decode_tokens),
                     int(exp["cache_speedup"].decode_tokens)})
    return {"profile": profile, "models": models, "dtype": str(prof.get("dtype", base.dtype)),
            "matmul_precision": prof.get("matmul_precision", base.matmul_precision),
            "batch": int(prof.get("batch", base.batch)), "prefill_lengths": lengths,
            "headline_length": int(exp["cache_speedup"].headline_context), "decode_tokens": tokens,
            "throughput_prefill_lengths": list(exp["throughput"].prefill_lengths)}


def programs(suite: dict, phase: str) -> list[dict]:
    """(program, kwargs) to compile per scale, the claims' programs first."""
    head = [{"program": "step"}, *({"program": "generate", "new_tokens": n} for n in suite["decode_tokens"]),
            *({"program": "prefill", "length": L} for L in sorted(set(suite["throughput_prefill_lengths"])
                                                                   | {suite["headline_length"]}))]
    if phase == "decode":
        return [p for p in head if p["program"] != "prefill"]
    if phase == "claims":
        return head
    done = {p.get("length") for p in head if p["program"] == "prefill"}
    return head + [{"program": "prefill", "length": L} for L in suite["prefill_lengths"] if L not in done]


def key(p: dict) -> str:
    return p["program"] + (f"-L{p['length']}" if "length" in p else "") + (
        f"-n{p['new_tokens']}" if "new_tokens" in p else "")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=None, help="comma-separated (default: the profile's five scales)")
    ap.add_argument("--target", default="tpu-v6e")
    ap.add_argument("--profile", default="paper")
    ap.add_argument("--phase", default="all", choices=PHASES)
    ap.add_argument("--resume", action="store_true",
                    help="skip programs already compiled from a clean tree whose program files equal this commit's")
    ap.add_argument("--order", default="program", choices=["program", "model"],
                    help="program: every scale's step and decode loop, then the headline prefill, then the rest "
                         "(a stopped run covers all scales); model: one scale after the other")
    ap.add_argument("--out", default=None, help="default: results/tpu_compile")
    ap.add_argument("--dtype", default=None, help="parameter dtype (default: the profile's)")
    ap.add_argument("--mesh", default=None,
                    help="first mesh to try, e.g. data=1,model=2 (default: one chip, growing model= until it fits)")
    a = ap.parse_args(argv)

    from mamba2_jax.compile import TARGETS, CompileError, compile_program, ensure_cuda_plugin, ensure_libtpu, versions
    from mamba2_jax.config import PRESETS, Mamba2Config, get_preset
    from mamba2_jax.eval.provenance import git_info, provenance
    from mamba2_jax.eval.results import read_result, write_document
    from mamba2_jax.hardware import get_profile
    from mamba2_jax.sharding import parse_mesh

    t = TARGETS[a.target]
    if t["platform"] == "tpu":
        compiler = f"libtpu {ensure_libtpu(t['accelerator'])}"
    elif t["platform"] == "cuda":
        compiler = f"jax-cuda12-pjrt {ensure_cuda_plugin()}"
    else:
        compiler = "XLA:CPU"
    suite = paper_suite(a.profile)
    if a.dtype:
        suite["dtype"] = a.dtype
    # a preset name, or a config.json (or its directory) for a scale that is not a preset (Codestral-7B)
    specs = a.models.split(",") if a.models else suite["models"]
    cfgs = {}
    for spec in specs:
        c = get_preset(spec) if spec.removeprefix("state-spaces/") in PRESETS else Mamba2Config.from_json(spec)
        cfgs[c.name] = c
    models = list(cfgs)
    first_mesh = parse_mesh(a.mesh) if a.mesh else None
    out = Path(a.out) if a.out else results_dir() / ("tpu_compile" if a.target == "tpu-v6e" else f"compile-{a.target}")
    from mamba2_jax.eval.provenance import cpu_model as _cpu_model

    host_cpu = _cpu_model()
    git = git_info()  # at start: the modules are imported now; later edits to the tree do not change this run
    prof = get_profile(t["profile"])
    print(f"[tpu_compile] {t['name']} via {compiler} (jax {versions()['jax']}), no {t['platform'].upper()}: compiling "
          f"profile={suite['profile']} ({', '.join(models)}; {suite['dtype']}, matmul precision "
          f"{suite['matmul_precision']}; prefill lengths {suite['prefill_lengths']}; decode loops of "
          f"{suite['decode_tokens']} tokens) -> {out}/; git {str(git['sha'])[:10]}"
          f"{' (dirty tree)' if git['dirty'] else ''}", flush=True)
    total = 0.0
    records_of: dict[str, dict] = {}
    mesh_of: dict[str, dict | None] = {}
    for name in models:
        old = read_result(out / f"{name}.json") if a.resume else None
        for r in (old or {}).get("records", []):
            r.setdefault("git", (old.get("provenance") or {}).get("git"))
        records_of[name] = {r["key"]: r for r in (old or {}).get("records", []) if reusable(r, git)}
        mesh_of[name] = first_mesh
    work = [(name, p) for name in models for p in programs(suite, a.phase)]
    if a.order == "program":  # every scale's step and decode loop first, then the prefills, shortest first
        rank = {key(p): i for i, p in enumerate(programs(suite, a.phase))}
        work.sort(key=lambda w: (w[1]["program"] == "prefill", w[1].get("length", 0) != suite["headline_length"],
                                 w[1].get("length", 0), rank[key(w[1])], models.index(w[0])))
    for name, p in work:
        if True:
            cfg = cfgs[name]
            path = out / f"{name}.json"
            records, mesh = records_of[name], mesh_of[name]
            k = key(p)
            if k in records:
                mesh = dict(records[k]["mesh_shape"]) if records[k]["num_devices"] > 1 else mesh
                print(f"[tpu_compile] {name} {k}: at this commit already, skipped", flush=True)
                continue
            kw = dict(target=a.target, batch=suite["batch"], dtype=suite["dtype"],
                      precision=suite["matmul_precision"], **dict(p))
            ladder = [None, {"data": 1, "model": 2}, {"data": 1, "model": 4}, {"data": 1, "model": 8}]
            for m in ladder[ladder.index(mesh):]:
                if m and t["platform"] != "tpu":
                    break  # one GPU: no mesh to grow into
                if m and m["model"] > 4:
                    kw["topology"] = t["topology"].split(":")[0] + ":2x4"
                t0 = time.perf_counter()
                load0 = os.getloadavg()[0]
                try:
                    r = compile_program(cfg, mesh=m, **kw)
                except CompileError as e:
                    print(f"[tpu_compile] {name} {k} mesh {m}: {e}", flush=True)
                    continue
                total += time.perf_counter() - t0
                if r["fits"] or m == {"data": 1, "model": 8}:
                    break
                print(f"[tpu_compile] {name} {k} on {r['num_devices']} chip(s): needs "
                      f"{r['bytes_needed_per_device'] / 2**30:.1f} GiB of {r['hbm_bytes_per_device'] / 2**30:.1f} "
                      f"GiB per chip; trying a larger model= mesh", flush=True)
            mesh = dict(r["mesh_shape"]) if r["num_devices"] > 1 else None
            mesh_of[name] = mesh
            r["key"] = k
            r["git"] = git
            # the 1-minute load average before and after this compile: compile_s is wall time on a shared host
            r["load_avg_1m"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
            r["cpu_model"] = host_cpu  # the machine that compiled it (kept when --resume reuses the record)
            records[k] = r
            ro = r["roofline"]
            print(f"[tpu_compile] {name} {k}: {r['compile_s']:.1f} s, {r['flops'] / 1e12:.4g} TFLOP, "
                  f"{r['bytes_accessed'] / 1e9:.4g} GB (XLA), {r['bytes_needed_per_device'] / 2**30:.2f} GiB/chip "
                  f"on {r['num_devices']} chip(s) ({'fits' if r['fits'] else 'does NOT fit'}), bound "
                  f"{ro['bound_tokens_per_s']:,.0f} tok/s ({ro['bound']}), custom calls "
                  f"{r['custom_calls'] or 'none'}", flush=True)
            recs = sorted(records.values(), key=lambda r: (r["program"] != "step", r["program"] != "generate",
                                                          r.get("length") or 0))
            write_document(path, {
                "label": f"{suite['profile']}-{t['profile']}-compiled",
                "status": f"compiled for {t['name']}, not run",
                "config": {"suite": suite, "target": a.target, "phase": a.phase, "model": name,
                           "argv": sys.argv[1:]},
                "provenance": provenance(git=git, compile={**versions(), "target": a.target, "topology": r["topology"],
                                                  "device_kind": r["device_kind"]}),
            }, experiment="tpu_compile" if t["platform"] == "tpu" else "gpu_compile", run=name, records=recs,
                hardware={"profile": prof.to_dict(), "device": {"platform": t["platform"],
                                                                "device_kind": r["device_kind"],
                                                                "topology": r["topology"], "compiled_only": True},
                          "matches_device": False})
    print(f"[tpu_compile] done: {total:.0f} s of compilation; results in {out}/ (compiled for {t['name']}, "
          f"not run)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
