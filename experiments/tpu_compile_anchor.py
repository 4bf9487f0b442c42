"""The paper's own package, mamba2-jax 1.1.2, compiled for the same targets and shapes as our suite.

    python experiments/tpu_compile_anchor.py [--models mamba2-130m,...] [--target tpu-v6e|cuda-l40s]
                                             [--phase claims|all] [--resume] [--out results/tpu_compile_anchor]
                                             [--anchor-dir .anchor] [--programs decode,prefill-L4096]

Issue 29, section 2: the programs of mamba2-jax 1.1.2 (PyPI; the package of arXiv 2603.09555) built
from shapes only by the same compiler as ours (experiments/tpu_compile.py: libtpu's TPU v6e compiler
with no TPU, or JAX's CUDA plugin with no GPU), in the suite's setting (profile=paper: batch 1, fp32
parameters, default matmul precision):

* ``prefill-L<L>``: its ``forward(model, ids)`` at every prefill length of the suite (``--phase all``)
  or at the claims' lengths (``--phase claims``: the headline 4096).  Its API has no last-position
  option: these are full-logits prefills (ours, in results/tpu_compile/, are last-position only);
* ``decode``: its cached one-token ``forward(model, token[:, None], cache=cache)``, its decode step
  (the counterpart of our ``step``; it has no on-device decode loop, so nothing matches ``generate``).
  Its chunked SSD pads the one token to a whole chunk (``seq_pads`` in each record: the paddings of
  the sequence axis in its jaxpr).

mamba2-jax 1.1.2 has the same module name as this project, so it is compiled in its own process
(experiments/peers_runners/anchor_compile.py, PYTHONPATH=<anchor dir> first; one process per scale)
that never imports this project; the JSON it returns (compile seconds, load average, XLA's cost and
memory analysis) is completed here by the function that completes our own compiled programs
(``mamba2_jax.compile.fit_and_bound``: HBM fit and roofline bound), and written with our provenance
in the document shape of results/tpu_compile/*.json: ``<out>/<model>.json``, rewritten atomically
after each program.  ``--resume`` skips programs compiled from a clean tree at a commit whose runner
equals this one's, with the same anchor version.  Needs ``make anchor-install`` and ``make
install-tpu`` (or ``make install-cuda-plugin``); ``make tpu-compile-anchor`` runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import tpu_compile as ours  # noqa: E402  (paper_suite, programs: the same suite as ours)

RUNNER = HERE / "peers_runners" / "anchor_compile.py"
MARK = "@@PEER "
ANCHOR_ENV = "MAMBA2_JAX_ANCHOR_DIR"
ANCHOR_VERSION = "1.1.2"
PHASES = ("claims", "all")
# the files that define the anchor's compiled programs on our side (its package is pinned by version)
# (and ours: each anchor record carries our same program compiled just before it, see --no-ours)
PROGRAM_FILES = ("experiments/peers_runners/anchor_compile.py", "mamba2_jax/compile.py", *ours.PROGRAM_FILES)
# what each record keeps of our program compiled in the same run
OURS_KEYS = ("program", "last_only", "compile_s", "lower_s", "flops", "bytes_accessed", "argument_bytes",
             "output_bytes",
             "temp_bytes", "alias_bytes", "generated_code_bytes", "bytes_needed_per_device", "hbm_bytes_per_device",
             "fits", "min_bytes", "roofline", "policy", "precision", "dtype")


def anchor_dir(arg: str | None = None) -> Path:
    """``--anchor-dir``, else ``$MAMBA2_JAX_ANCHOR_DIR``, else ``<checkout>/.anchor`` (make anchor-install)."""
    from mamba2_jax.paths import checkout_root

    s = arg or os.environ.get(ANCHOR_ENV)
    if s:
        return Path(s).expanduser().resolve()
    return ((checkout_root() or HERE.parent) / ".anchor").resolve()


def anchor_installed(d: Path) -> bool:
    return (d / "mamba2_jax" / "__init__.py").is_file()


def anchor_programs(suite: dict, phase: str) -> list[dict]:
    """Our suite's programs (experiments/tpu_compile.py ``programs``) as the anchor has them: ``step`` is its
    cached one-token ``decode``; ``generate`` (an on-device loop) has no counterpart; prefill lengths as ours."""
    out = []
    for p in ours.programs(suite, phase):
        if p["program"] == "step":
            out.append({"program": "decode"})
        elif p["program"] == "prefill":
            out.append({"program": "prefill", "length": int(p["length"])})
    return out


def key(p: dict) -> str:
    return p["program"] + (f"-L{p['length']}" if p.get("length") else "")


def model_cfg(cfg) -> dict:
    """What the runner needs of a Mamba2Config (the same fields as experiments/peers.py passes its runner)."""
    return {"padded_vocab_size": cfg.padded_vocab_size, "d_model": cfg.d_model, "d_state": cfg.d_state,
            "headdim": cfg.headdim, "chunk_size": cfg.chunk_size, "expand": cfg.expand, "d_conv": cfg.d_conv,
            "n_layer": cfg.n_layer, "norm_epsilon": cfg.norm_epsilon, "ngroups": cfg.ngroups}


class Runner:
    """The anchor's compile process (experiments/peers_runners/anchor_compile.py) and its line protocol."""

    def __init__(self, anchor: Path):
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.update({"PYTHONPATH": str(anchor), "PYTHONUNBUFFERED": "1"})
        # its stderr (libtpu's log lines, the package's prints) is ours; its stdout is the protocol's channel
        self.proc = subprocess.Popen([sys.executable, str(RUNNER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=None, env=env, text=True)

    def call(self, cmd: str, **args) -> dict:
        self.proc.stdin.write(json.dumps({"cmd": cmd, **args}) + "\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith(MARK):
                res = json.loads(line[len(MARK):])
                if not res.get("ok"):
                    raise RuntimeError(f"anchor runner {cmd}: {res.get('error')}\n{res.get('traceback', '')}")
                return res
        raise RuntimeError(f"anchor runner exited (code {self.proc.wait()}) during {cmd!r}")

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.call("quit")
        except (RuntimeError, OSError, ValueError):
            pass
        finally:
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def target_args(target: str) -> dict:
    """What the runner needs to make ``target``'s devices without importing this project: platform, topology,
    accelerator type, the libtpu / CUDA plugin directories and the GPU target description (pure data)."""
    from mamba2_jax.compile import TARGETS, CompileError, cuda_plugin_dir, libtpu_dir

    if target not in TARGETS:
        raise CompileError(f"unknown target {target!r}; known targets: {', '.join(TARGETS)}")
    t = TARGETS[target]
    out = {"platform": t["platform"], "topology": t["topology"], "accelerator": t["accelerator"]}
    if t["platform"] == "tpu":
        d = libtpu_dir()
        if d is None or not (d / "libtpu").is_dir():
            raise CompileError(f"libtpu is not installed in {d}: run `make install-tpu`")
        out["libtpu_dir"] = str(d)
    elif t["platform"] == "cuda":
        from mamba2_jax.gpu_targets import TARGET_CONFIGS

        d = cuda_plugin_dir()
        if d is None or not (d / "jax_plugins").is_dir():
            raise CompileError(f"JAX's CUDA plugin is not installed in {d}: run `make install-cuda-plugin`")
        out["cuda_dir"] = str(d)
        out["target_config"] = TARGET_CONFIGS[t["target_config"]]
        out["topology_name"] = f"{t['target_config']}:{t['topology']}"  # as mamba2_jax.compile.target_devices names it
    return out


def complete(raw: dict, setup: dict, *, target: str, model: str, cfg, suite: dict, anchor: Path) -> dict:
    """A record in the shape of results/tpu_compile/*.json's, from the runner's raw facts; the fit and the bound
    by ``mamba2_jax.compile.fit_and_bound``, as for our programs."""
    from mamba2_jax.compile import NOT_RUN, TARGETS, fit_and_bound

    t = TARGETS[target]
    cost, mem = raw["cost"], raw["memory"]
    flops = float(cost.get("flops", float("nan")))
    xla_bytes = float(cost.get("bytes accessed", float("nan")))
    fb = fit_and_bound(mem, flops, xla_bytes, raw["tokens_per_call"], t["profile"], suite["dtype"],
                       suite["matmul_precision"], 1, 1)
    chunk = int(raw["chunk_size"])
    pads = [tuple(p) for p in raw["seq_pads"]]
    prog = raw["program"]
    vers = setup["versions"]
    return {
        "target": target, "platform": t["platform"], "device_kind": setup["device_kind"],
        "topology": setup["topology"], "topology_devices": setup["topology_devices"], "num_devices": 1, "chips": 1,
        "mesh": None, "mesh_shape": {"data": 1, "model": 1}, "model": model, "config": cfg.name,
        "num_params": setup["num_params"], "program": prog, "batch": raw["batch"], "length": raw["length"],
        "new_tokens": None, "last_only": False if prog == "prefill" else None, "dtype": suite["dtype"],
        "precision": str(suite["matmul_precision"]),
        "policy": {"implementation": f"mamba2-jax {vers.get('mamba2-jax')}", "api": "mamba2_jax.forward",
                   "scan_chunk_size": chunk, "logits": "full", "donated": None,
                   "param_dtype": ",".join(setup["param_dtypes"]),
                   "matmul_precision": f"{suite['matmul_precision']} (JAX's default: the package sets none)"},
        "lower_s": raw["lower_s"], "compile_s": raw["compile_s"], "flops": flops, "bytes_accessed": xla_bytes,
        "transcendentals": float(cost.get("transcendentals", 0.0)), "optimal_seconds": cost.get("optimal_seconds"),
        **mem, **{k: fb[k] for k in ("min_bytes", "bytes_needed_per_device", "hbm_bytes_per_device", "fits")},
        "custom_calls": raw["custom_calls"], "partitioner_annotations": [],
        "compiler_custom_calls": raw["compiler_custom_calls"], "tokens_per_call": raw["tokens_per_call"],
        "bound_tokens_per_s": fb["bound_tokens_per_s"], "roofline": fb["roofline"],
        "cost_source": raw.get("cost_source", "compiled"),
        "cost_note": "per device",
        "versions": {"jax": vers.get("jax"), "jaxlib": vers.get("jaxlib"), "libtpu": vers.get("libtpu"),
                     "jax_cuda12_pjrt": vers.get("jax-cuda12-pjrt")},
        "status": (NOT_RUN.format(kind=t["name"]) if t["platform"] != "cpu"
                   else "compiled for this machine's CPU, not run"),
        "load_avg_1m": raw["load_avg_1m"],
        "anchor": {"package": "mamba2-jax", "version": vers.get("mamba2-jax"), "dir": str(anchor),
                   "module": setup["module"], "flax": vers.get("flax"), "logits_shape": raw["logits_shape"],
                   "seq_pads": raw["seq_pads"],
                   "pads_to_chunk": bool(prog == "decode" and (0, chunk - 1) in pads),
                   "chunk_square_in_hlo": raw["chunk_square_in_hlo"]},
    }


def reusable(rec: dict, head: dict, version: str | None) -> bool:
    """The same anchor version, and ours.reusable over this runner's program files."""
    return (rec.get("anchor") or {}).get("version") == version and ours.reusable(rec, head, PROGRAM_FILES)


def installed_version(d: Path) -> str | None:
    import importlib.metadata as md

    dist = next((x for x in md.distributions(path=[str(d)])
                 if (x.metadata["Name"] or "").lower().replace("_", "-") == "mamba2-jax"), None)
    return dist.version if dist else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=None, help="comma-separated (default: the profile's five scales)")
    ap.add_argument("--target", default="tpu-v6e", help="tpu-v6e | cuda-l40s (any target of mamba2_jax.compile)")
    ap.add_argument("--profile", default="paper")
    ap.add_argument("--phase", default="all", choices=PHASES)
    ap.add_argument("--programs", default=None,
                    help="comma-separated keys to compile among the phase's (e.g. decode,prefill-L4096)")
    ap.add_argument("--resume", action="store_true",
                    help="skip programs compiled from a clean tree whose runner equals this commit's")
    ap.add_argument("--out", default=None, help="default: results/tpu_compile_anchor (results/compile_anchor-"
                                                "<target> for another target)")
    ap.add_argument("--anchor-dir", default=None, help=f"default: ${ANCHOR_ENV} or <checkout>/.anchor")
    ap.add_argument("--no-ours", action="store_true",
                    help="do not compile our same program (step; prefill with full logits, as the anchor's) right "
                         "before each of the anchor's (the one alternating run that compares compile times)")
    a = ap.parse_args(argv)

    from mamba2_jax.compile import TARGETS, CompileError
    from mamba2_jax.config import PRESETS, Mamba2Config, get_preset
    from mamba2_jax.eval.provenance import cpu_model, git_info, provenance
    from mamba2_jax.eval.results import read_result, write_document
    from mamba2_jax.hardware import get_profile
    from mamba2_jax.paths import results_dir

    anchor = anchor_dir(a.anchor_dir)
    if not anchor_installed(anchor):
        print(f"[tpu_compile_anchor] mamba2-jax {ANCHOR_VERSION} is not installed in {anchor}: run "
              f"`make anchor-install`", file=sys.stderr)
        return 2
    version = installed_version(anchor)
    try:
        targs = target_args(a.target)
    except CompileError as e:
        print(f"[tpu_compile_anchor] {e}", file=sys.stderr)
        return 2
    t = TARGETS[a.target]
    suite = ours.paper_suite(a.profile)
    specs = a.models.split(",") if a.models else suite["models"]
    cfgs = {}
    for spec in specs:
        c = get_preset(spec) if spec.removeprefix("state-spaces/") in PRESETS else Mamba2Config.from_json(spec)
        cfgs[c.name] = c
    progs = anchor_programs(suite, a.phase)
    if a.programs:
        want = a.programs.split(",")
        unknown = [k for k in want if k not in {key(p) for p in progs}]
        if unknown:
            print(f"[tpu_compile_anchor] not in --phase {a.phase}: {unknown}; the phase has "
                  f"{[key(p) for p in progs]}", file=sys.stderr)
            return 2
        progs = [p for p in progs if key(p) in want]
    out = Path(a.out) if a.out else results_dir() / (
        "tpu_compile_anchor" if a.target == "tpu-v6e" else f"compile_anchor-{a.target}")
    git = git_info()
    host_cpu = cpu_model()
    prof = get_profile(t["profile"]) if t["profile"] != "cpu" else None
    print(f"[tpu_compile_anchor] mamba2-jax {version} ({anchor}) compiled for {t['name']}"
          f"{'' if t['platform'] == 'cpu' else ', no ' + t['platform'].upper()}: {', '.join(cfgs)}; programs "
          f"{[key(p) for p in progs]} (batch {suite['batch']}, "
          f"{suite['dtype']}, default matmul precision) -> {out}/; git {str(git['sha'])[:10]}"
          f"{' (dirty tree)' if git['dirty'] else ''}", flush=True)
    total = 0.0
    for name, cfg in cfgs.items():
        path = out / f"{name}.json"
        old = read_result(path) if a.resume else None
        for r in (old or {}).get("records", []):
            r.setdefault("git", (old.get("provenance") or {}).get("git"))
        records = {r["key"]: r for r in (old or {}).get("records", []) if reusable(r, git, version)}
        todo = [p for p in progs if key(p) not in records]
        for p in progs:
            if key(p) in records:
                print(f"[tpu_compile_anchor] {name} {key(p)}: at this commit already, skipped", flush=True)
        if not todo:
            continue
        out.mkdir(parents=True, exist_ok=True)
        runner = Runner(anchor)
        try:
            setup = runner.call("setup", **targs, model_cfg=model_cfg(cfg))
            for p in todo:
                k = key(p)
                mine = None
                if not a.no_ours:  # ours first, then the anchor's: alternating, program by program
                    from mamba2_jax.compile import compile_program

                    l0 = os.getloadavg()[0]
                    mine = compile_program(cfg, target=a.target, program="step" if p["program"] == "decode"
                                           else "prefill", batch=suite["batch"], length=int(p.get("length") or 1),
                                           last_only=False, dtype=suite["dtype"],
                                           precision=suite["matmul_precision"])
                    mine = {k: mine.get(k) for k in OURS_KEYS} | {
                        "load_avg_1m": [round(l0, 2), round(os.getloadavg()[0], 2)]}
                    print(f"[tpu_compile_anchor] {name} {k}: ours ({mine['program']}, full logits) "
                          f"{mine['compile_s']:.1f} s, temp {mine['temp_bytes'] / 2**20:.1f} MiB", flush=True)
                t0 = time.perf_counter()
                try:
                    raw = runner.call("compile", batch=suite["batch"], **p)
                except RuntimeError as e:
                    print(f"[tpu_compile_anchor] {name} {k}: FAILED {str(e).splitlines()[0]}", flush=True)
                    if runner.proc.poll() is not None:  # the process died (e.g. out of memory): a fresh one
                        runner.close()
                        runner = Runner(anchor)
                        setup = runner.call("setup", **targs, model_cfg=model_cfg(cfg))
                    continue
                total += time.perf_counter() - t0
                r = complete(raw, setup, target=a.target, model=name, cfg=cfg, suite=suite, anchor=anchor)
                r.update(key=k, git=git, cpu_model=host_cpu)
                if mine is not None:
                    r["ours_same_run"] = mine
                records[k] = r
                ro = r["roofline"] or {}
                print(f"[tpu_compile_anchor] {name} {k}: {r['compile_s']:.1f} s (load {r['load_avg_1m']}), "
                      f"{r['flops'] / 1e12:.4g} TFLOP, {r['bytes_accessed'] / 1e9:.4g} GB (XLA), temp "
                      f"{r['temp_bytes'] / 2**20:.1f} MiB, {r['bytes_needed_per_device'] / 2**30:.2f} GiB/chip "
                      f"({ {True: 'fits', False: 'does NOT fit', None: 'no HBM profile'}[r['fits']] }), bound "
                      f"{ro.get('bound_tokens_per_s') or float('nan'):,.0f} tok/s ({ro.get('bound')}); sequence "
                      f"pads {raw['seq_pads']}", flush=True)
                recs = sorted(records.values(), key=lambda r: (r["program"] != "decode", r.get("length") or 0))
                write_document(path, {
                    "label": f"{suite['profile']}-{t['profile']}-compiled-anchor",
                    "status": f"compiled for {t['name']}, not run",
                    "config": {"suite": suite, "target": a.target, "phase": a.phase, "model": name,
                               "programs": [key(p) for p in progs], "argv": sys.argv[1:],
                               "anchor": {"package": "mamba2-jax", "version": version, "dir": str(anchor)}},
                    "provenance": provenance(git=git, compile={
                        "jax": setup["versions"].get("jax"), "jaxlib": setup["versions"].get("jaxlib"),
                        "libtpu": setup["versions"].get("libtpu"),
                        "jax_cuda12_pjrt": setup["versions"].get("jax-cuda12-pjrt"), "target": a.target,
                        "topology": setup["topology"], "device_kind": setup["device_kind"],
                        "compiler": setup["compiler"], "anchor": f"mamba2-jax {version}",
                        "anchor_dir": str(anchor)}),
                }, experiment="tpu_compile_anchor", run=name, records=recs,
                    hardware={"profile": prof.to_dict() if prof else None,
                              "device": {"platform": t["platform"], "device_kind": setup["device_kind"],
                                         "topology": setup["topology"], "compiled_only": True},
                              "matches_device": False})
        finally:
            runner.close()
    print(f"[tpu_compile_anchor] done: {total:.0f} s of compilation; results in {out}/ (compiled for {t['name']}, "
          f"not run)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
