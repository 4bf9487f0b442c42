"""Peers: this project vs mamba2-jax 1.1.2 (the paper's package) vs HF transformers vs llama.cpp, side by side.

    make bench-peers             (python experiments/peers.py profile=cpu_bench)

One set of random weights (mamba_ssm-style init of the ``peers.model`` shape, float32) is written
once as a state-spaces checkpoint (read by this project and by mamba2-jax 1.1.2), as an HF
checkpoint (read by transformers) and, for llama.cpp, converted from the state-spaces one to GGUF
(``reference.llama_gguf``: ``mamba2-jax convert --format hf`` + the GPT-NeoX tokenizer files +
llama.cpp's ``convert_hf_to_gguf.py``; f32, plus f16/bf16/q8_0 rows labelled lower precision).
Every peer runs in its own subprocess (experiments/peers_runners/<peer>.py), set up one after the
other; at setup each runner lists the tasks it can run (prefill at every ``prefill_lengths`` x
``prefill_modes`` -- "full": logits at every position, "last": the last position only --, decode at
batch 1, recompute, batched decode at ``batch_sizes``).  Then they are timed round-robin: in each
round every peer (rotating the start) runs all its tasks back to back while the others wait, so
all peers see the same machine load; a streaming-bandwidth probe takes its turn in the same rounds
(the bound for the decode rows).  Runners time themselves; medians over rounds are reported.

A peer that cannot run (llama.cpp not built or not convertible, mamba2-jax 1.1.2 not installed, a
setup that fails) is skipped with the reason, in the results and on the console; the others run.

Fidelity is checked on the way: the last-position logits of the first prefill length and a few
greedy tokens (over the real vocabulary) after the decode prompt are compared with this project's.
"""

from __future__ import annotations

import hashlib
import json
import os
import selectors
import subprocess
import sys
import time
from pathlib import Path

import hydra
import numpy as np

from mamba2_jax.eval import bench, reported
from mamba2_jax.eval import models as model_specs
from mamba2_jax.eval.results import write_results
from mamba2_jax.fileio import atomic_write_text
from mamba2_jax.paths import require_data_dir

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # reference/ (llama.cpp build status and GGUF conversion)
    sys.path.insert(0, str(REPO))

RUNNERS = REPO / "experiments" / "peers_runners"
MARK = "@@PEER "
PEERS = {
    "ours": {"script": "ours.py", "weights": "state-spaces", "decode": "fast",
             "desc": "this project (mamba2_jax, compiled fori_loop decode, cache donated)"},
    "mamba2_jax_1_1_2": {"script": "anchor.py", "weights": "state-spaces", "decode": "slow",
                         "desc": "mamba2-jax 1.1.2 from PyPI (jitted forward, Python decode loop)"},
    "hf_transformers": {"script": "hf.py", "weights": "hf", "decode": "fast",
                        "desc": "transformers Mamba2ForCausalLM, torch eager fp32 (no mamba_ssm kernels)"},
    "llama_cpp": {"script": "llama_tools.py", "weights": "gguf", "decode": "fast",
                  "desc": "llama.cpp measured by its own tools (llama-bench pp/tg, llama-batched-bench), one tool "
                          "process per measurement, GGUF f32 (+ f16/bf16/q8_0 lower-precision rows) converted "
                          "with its convert_hf_to_gguf.py"},
    "llama_cpp_capi": {"script": "llama_cpp.py", "weights": "gguf", "decode": "fast",
                       "desc": "llama.cpp through its C API (llama-cpp-python's ctypes) in one process, GGUF f32: "
                               "what the tools cannot measure (full-logit prefill, logits for the fidelity "
                               "check) and the calibration against llama-bench in the same rounds"},
}
# The results document's extension of the common schema (mamba2_jax.eval.results, schema_version 1):
# 2 = llama_cpp measured by llama.cpp's tools (tool_runs, calibration, llama_settings), the C-API runner
# as llama_cpp_capi.  Documents without the key are version 1 (llama_cpp = the C-API runner).
PEERS_SCHEMA = 2
TOOL_PEER, CAPI_PEER = "llama_cpp", "llama_cpp_capi"


class CalibrationError(RuntimeError):
    pass


def calibration(capi_rows: dict, tool_rows: dict, max_gap: float) -> dict:
    """The C-API runner against llama.cpp's own tools, task by task, from the same rounds: for every
    fp32 task both ran, capi tokens/s ÷ tool tokens/s and ``flag`` when it is off by more than
    ``max_gap`` (relative) either way."""
    out = {}
    for key, c in capi_rows.items():
        t = tool_rows.get(key)
        if t is None or c.get("lower_precision") or t.get("lower_precision") or "tokens_per_s" not in c:
            continue
        r = c["tokens_per_s"] / t["tokens_per_s"]
        gap = max(r, 1 / r) - 1
        out[key] = {"capi_tokens_per_s": c["tokens_per_s"], "tool_tokens_per_s": t["tokens_per_s"],
                    "capi_over_tool": r, "gap": gap, "max_gap": max_gap,
                    "flag": gap > max_gap + 1e-9}
    return out


def check_calibration(cal: dict, strict: bool) -> list[str]:
    """The flagged rows as warnings; with ``strict``, refuse the run (CalibrationError)."""
    bad = [f"{k}: C API {v['capi_tokens_per_s']:.4g} vs tool {v['tool_tokens_per_s']:.4g} tokens/s "
           f"(x{v['capi_over_tool']:.2f}, gap {v['gap']:.0%} > {v['max_gap']:.0%})"
           for k, v in cal.items() if v["flag"]]
    if bad and strict:
        raise CalibrationError("llama.cpp C-API runner disagrees with llama.cpp's own tools: " + "; ".join(bad))
    return bad


class Peer:
    def __init__(self, name: str, python: str, env: dict, log: Path, timeout: float):
        self.name, self.timeout = name, timeout
        self.log = open(log, "w")  # noqa: SIM115 - held for the peer process's lifetime, closed in close()
        self.proc = subprocess.Popen([python, str(RUNNERS / PEERS[name]["script"])], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True, env=env, cwd=str(REPO))
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.proc.stdout, selectors.EVENT_READ)

    def call(self, cmd: str, **args) -> dict:
        self.send(cmd, **args)
        return self.recv(cmd)

    def send(self, cmd: str, **args) -> None:
        self.proc.stdin.write(json.dumps({"cmd": cmd, **args}) + "\n")
        self.proc.stdin.flush()

    def recv(self, cmd: str) -> dict:
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sel.select(timeout=left):
                raise TimeoutError(f"peer {self.name}: {cmd} timed out after {self.timeout} s")
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"peer {self.name} exited (rc={self.proc.poll()}); see {self.log.name}")
            if line.startswith(MARK):
                res = json.loads(line[len(MARK):])
                if not res.get("ok"):
                    raise RuntimeError(f"peer {self.name}: {cmd} failed: {res.get('error')}\n"
                                       f"{res.get('traceback', '')}")
                return res

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.call("quit")
        except Exception:
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def make_weights(mcfg, seed: int, work: Path) -> dict[str, Path]:
    """Write the shared random weights in both formats (reused if already there)."""
    from mamba2_jax.checkpoint import init_state_dict, write_checkpoint

    key = hashlib.sha256(json.dumps([mcfg.to_state_spaces(), seed]).encode()).hexdigest()[:12]
    d = work / f"{mcfg.name}-seed{seed}-{key}"
    out = {"state-spaces": d / "state-spaces", "hf": d / "hf"}
    if not (d / "done").exists():
        sd = init_state_dict(mcfg, seed=seed)
        # safetensors (not the .bin pickle): both JAX peers read it without importing torch
        write_checkpoint(mcfg, sd, out["state-spaces"], fmt="state-spaces", dtype="float32", weights="safetensors")
        write_checkpoint(mcfg, sd, out["hf"], fmt="hf", dtype="float32")
        (d / "done").write_text(key + "\n")
    return out


def _collect_setup(name, peers, setups, skipped, t0) -> None:
    try:
        setups[name] = peers[name].recv("setup")
    except Exception as e:
        skipped[name] = f"setup failed: {e}"
        print(f"[peers] {name}: SKIPPED ({skipped[name].splitlines()[0]})", flush=True)
        peers.pop(name).close()
        return
    print(f"[peers] {name}: ready in {time.perf_counter() - t0:.1f} s", flush=True)


def prepare_llama(P, weights: dict[str, Path], work: Path) -> tuple[dict | None, str | None]:
    """(llama.cpp setup args with the converted GGUFs, None) or (None, why it is skipped): not built,
    build failed, or the conversion failed.  Nothing is built here (``make llama-cpp`` does that)."""
    from reference.llama_cpp_capi import build_status
    from reference.llama_gguf import ConversionError, convert

    L = P.get("llama_cpp") or {}
    ok, info = build_status()
    if not ok:
        return None, str(info)
    outtypes = list(L.get("outtypes") or ["f32"])
    if "f32" not in outtypes:
        outtypes = ["f32", *outtypes]
    t0 = time.perf_counter()
    try:
        ggufs = convert(weights["state-spaces"], work / "gguf", outtypes)
    except ConversionError as e:
        return None, f"GGUF conversion failed: {e}"
    print(f"[peers] llama.cpp: GGUF {', '.join(ggufs)} ready in {time.perf_counter() - t0:.1f} s "
          f"(llama.cpp {info.get('llama_cpp_commit')}, ggml CPU features {','.join(info.get('cpu_features') or [])})",
          flush=True)
    return {"ggufs": {k: str(v) for k, v in ggufs.items()}, "threads": L.get("threads"),
            "n_ubatch": L.get("n_ubatch"), "lowp_batch_sizes": list(L.get("lowp_batch_sizes") or [])}, None


def tool_threads(bin_dir: Path, gguf: str, threads, env: dict) -> int:
    """The thread count llama.cpp's tools use (``threads`` if set, else their default): what a one-token
    ``llama-bench`` run reports.  The C-API runner gets the same count, so the calibration compares like
    with like."""
    from peers_runners.llama_tools import parse_llama_bench_json, run_tool

    argv = [str(bin_dir / "llama-bench"), "-m", gguf, "-p", "0", "-n", "1", "-r", "1", "--no-warmup", "-o", "json"]
    out, _ = run_tool(argv + (["-t", str(int(threads))] if threads else []), env=env, timeout=600)
    return int(parse_llama_bench_json(out)[0]["n_threads"])


def llama_peer_args(name: str, largs: dict, P, common: dict, threads: int) -> dict:
    """Per-runner setup arguments: the tools runner gets every GGUF type; the C-API runner the f32 GGUF
    alone, one context (``llama_cpp.capi_batch_sizes`` adds a batched one), the tools' thread count."""
    from reference.llama_cpp_capi import binary

    L = P.get("llama_cpp") or {}
    if name == TOOL_PEER:
        return {"llama": {**largs, "bin_dir": str(binary("llama-bench").parent),
                          "repetitions": int(L.get("repetitions") or 1), "timeout_s": float(P.timeout_s)}}
    return {"llama": {**largs, "ggufs": {"f32": largs["ggufs"]["f32"]}, "threads": threads},
            "batch_sizes": [int(b) for b in _lst(L.get("capi_batch_sizes") or [])]}


def _lst(x) -> list:
    return [x] if isinstance(x, (int, str)) else list(x)


def run(cfg) -> dict:
    ctx = bench.setup_run(cfg, "peers")
    P = cfg.peers
    seed = int(cfg.seed)
    work = Path(P.work_dir)
    work = (work if work.is_absolute() else REPO / work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    spec = model_specs.load_model_spec(str(P.model))
    mcfg = model_specs.model_config(spec, require_data_dir(cfg.paths.data_dir))
    weights = make_weights(mcfg, seed, work)
    anchor = Path(P.anchor_dir)
    anchor = (anchor if anchor.is_absolute() else REPO / anchor).resolve()

    skipped, peers = {}, {}
    base_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    base_env.update({"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"})
    if P.get("omp_wait_policy"):
        # torch's OpenMP threads spin-wait by default; on a shared machine a spinning thread whose
        # partner core is busy stalls every op (measured: HF decode 0.1-2.5 s/token instead of 75 ms)
        base_env["OMP_WAIT_POLICY"] = str(P.omp_wait_policy)
    prefill_lengths = [int(x) for x in _lst(P.prefill_lengths)]
    prefill_modes = [str(x) for x in _lst(P.get("prefill_modes") or ["full"])]
    batch_sizes = [int(x) for x in _lst(P.get("batch_sizes") or [])]
    tokens = {n: int(P.decode_tokens if PEERS[n]["decode"] == "fast" else P.decode_tokens_slow) for n in P.list}
    common = {"prefill_lengths": prefill_lengths, "prefill_modes": prefill_modes,
              "decode_prompt": int(P.decode_prompt), "recompute_context": int(P.recompute_context), "seed": seed,
              "check_tokens": 8, "torch_threads": P.torch_threads, "vocab": mcfg.vocab_size,
              "batch_sizes": batch_sizes, "batch_prompt": int(P.get("batch_prompt") or P.decode_prompt),
              "batch_tokens": int(P.get("batch_tokens") or P.decode_tokens),
              "batch_dtypes": [str(x) for x in _lst(P.get("batch_dtypes") or ["float32"])],
              "model_cfg": {"padded_vocab_size": mcfg.padded_vocab_size, "d_model": mcfg.d_model,
                            "d_state": mcfg.d_state, "headdim": mcfg.headdim, "chunk_size": mcfg.chunk_size,
                            "expand": mcfg.expand, "d_conv": mcfg.d_conv, "n_layer": mcfg.n_layer,
                            "norm_epsilon": mcfg.norm_epsilon, "ngroups": mcfg.ngroups}}
    extra_args: dict[str, dict] = {}
    L = P.get("llama_cpp") or {}
    # llama.cpp runs as its users run it: OMP_WAIT_POLICY unset (its OpenMP threads spin between graphs)
    # unless peers.llama_cpp.omp_wait_policy; recorded in llama_settings
    llama_env = {k: v for k, v in base_env.items() if k != "OMP_WAIT_POLICY"}
    if L.get("omp_wait_policy"):
        llama_env["OMP_WAIT_POLICY"] = str(L.omp_wait_policy)
    largs, llama_why, llama_threads, llama_settings = None, None, None, {}
    for name in P.list:
        if name not in PEERS:
            raise ValueError(f"unknown peer {name!r}; known: {sorted(PEERS)}")
        env = dict(base_env)
        if name == "mamba2_jax_1_1_2":
            if not (anchor / "mamba2_jax" / "__init__.py").exists():
                skipped[name] = f"not installed in {anchor} (make anchor-install)"
                print(f"[peers] {name}: SKIPPED ({skipped[name]})", flush=True)
                continue
            env["PYTHONPATH"] = str(anchor)
        if name in (TOOL_PEER, CAPI_PEER):
            env = dict(llama_env)
            if largs is None and llama_why is None:
                largs, llama_why = prepare_llama(P, weights, work)
            why = llama_why
            if not why and name == TOOL_PEER:
                from reference.llama_cpp_capi import binary

                miss = [t for t in ("llama-bench", "llama-batched-bench") if not binary(t).exists()]
                if miss:
                    why = f"{', '.join(miss)} not built (make llama-tools)"
            if not why and llama_threads is None:
                from reference.llama_cpp_capi import binary

                if binary("llama-bench").exists():
                    llama_threads = tool_threads(binary("llama-bench").parent, largs["ggufs"]["f32"],
                                                 L.get("threads"), env)
                else:  # the C-API runner alone (no tools): its own default
                    llama_threads = int(L.get("threads") or os.cpu_count() or 1)
                llama_settings = {"threads": llama_threads,
                                  "threads_source": "peers.llama_cpp.threads" if L.get("threads")
                                  else "llama.cpp tools' default (as reported by llama-bench)",
                                  "omp_wait_policy": env.get("OMP_WAIT_POLICY"),
                                  "repetitions_per_round": int(L.get("repetitions") or 1),
                                  "calibration_max_gap": float(L.get("calibration_max_gap", 0.10)),
                                  "calibration_strict": bool(L.get("calibration_strict", False))}
            if why:
                skipped[name] = why
                print(f"[peers] {name}: SKIPPED ({why.splitlines()[0]})", flush=True)
                continue
            extra_args[name] = llama_peer_args(name, largs, P, common, llama_threads)
        peers[name] = Peer(name, sys.executable, env, work / f"{name}.log", float(P.timeout_s))
    setups, times = {}, {}
    stream = None
    try:
        # setup (load + compile) one after the other, or all at once with peers.parallel_setup (tests)
        parallel = bool(P.get("parallel_setup", False))
        t0 = time.perf_counter()
        for name, peer in list(peers.items()):
            peer.send("setup", **{"weights_dir": str(weights.get(PEERS[name]["weights"], "")),
                                  "dump": str(work / f"{name}_logits.npy"), **common, "decode_tokens": tokens[name],
                                  **extra_args.get(name, {})})
            if not parallel:
                _collect_setup(name, peers, setups, skipped, t0)
                t0 = time.perf_counter()
        if parallel:
            for name in list(peers):
                _collect_setup(name, peers, setups, skipped, t0)
        specs = {name: {t["key"]: t for t in setups[name]["tasks"]} for name in peers}
        tasks, tool_runs = {}, {}

        def call(p, t, k):
            res = p.call(t["cmd"], **t["args"])
            if "tool" in res:  # llama.cpp's tools: every run's own record (argv, n_threads, its tokens/s)
                tool_runs.setdefault(k, []).append(res["tool"])
            return res["seconds"]

        for name, peer in peers.items():
            for key, t in specs[name].items():
                tasks[f"{name}:{key}"] = (lambda p=peer, t=t, k=f"{name}:{key}": call(p, t, k))
        if P.get("stream_bytes"):
            from mamba2_jax.hardware import StreamBench

            stream = StreamBench(int(P.stream_bytes))
            tasks["stream"] = stream.run
        # round-robin over peers (rotating), each peer's tasks back to back; the streaming probe is one more "peer"
        names = list(peers) + (["stream"] if stream else [])
        times = {k: [] for k in tasks}
        load0 = bench.load_avg()
        for r in range(int(P.rounds)):
            k = r % max(1, len(names))
            for name in names[k:] + names[:k]:
                for t in [t for t in tasks if t == name or t.startswith(name + ":")]:
                    times[t].append(float(tasks[t]()))
            print(f"[peers] round {r + 1}/{P.rounds} done (load {bench.load_avg()})", flush=True)
        load1 = bench.load_avg()
    finally:
        for peer in peers.values():
            peer.close()
        if stream is not None:
            stream.close()

    med = {k: bench.median(v) for k, v in times.items()}
    bw = stream.bytes_per_call / med["stream"] if stream else None
    L0 = prefill_lengths[0]
    recs = []

    def rec(peer, metric, value, unit, **kw):
        recs.append({"peer": peer, "metric": metric, "value": value, "unit": unit, **kw})

    table: dict[str, dict[str, dict]] = {}  # peer -> task key -> row
    for name in peers:
        if name not in setups:
            continue
        table[name] = {}
        for key, t in specs[name].items():
            s = med[f"{name}:{key}"]
            row = {k: t.get(k) for k in ("kind", "variant", "lower_precision", "length", "logits", "batch", "context")
                   if t.get(k) is not None}
            row.update({"median_s": s, "tokens": t["tokens"], "times_s": times[f"{name}:{key}"]})
            if t.get("argv"):  # llama.cpp's tools: the command, and the tool's own tokens/s (median over rounds)
                row["command"] = " ".join(t["argv"])
                runs = tool_runs.get(f"{name}:{key}") or []
                if runs:
                    row["tool_tokens_per_s"] = bench.median([r["tool_tokens_per_s"] for r in runs])
                    row["n_threads"] = runs[0].get("n_threads")
            if t["kind"] == "recompute":
                row["ms_per_token"] = s * 1e3
            else:
                row["tokens_per_s"] = t["tokens"] / s
            if bw and name == "ours" and t["kind"] in ("decode", "batched", "decode_stepwise"):
                from mamba2_jax.eval import flops

                b = int(t.get("batch") or 1)
                dt = "bfloat16" if t.get("variant") == "bf16" else "float32"
                by = flops.decode_bytes(mcfg, b, dt)["total"]
                row.update({"bytes_per_step": by, "bound_tokens_per_s": b * bw / by,
                            "bandwidth_fraction": row["tokens_per_s"] / (b * bw / by)})
            table[name][key] = row
            rec(name, "ms_per_token" if t["kind"] == "recompute" else "tokens_per_s",
                row.get("ms_per_token", row.get("tokens_per_s")), "ms" if t["kind"] == "recompute" else "tokens/s",
                task=key, **{k: v for k, v in row.items() if k not in ("times_s", "tokens_per_s", "ms_per_token")})
    summary = {}
    for name, rows in table.items():
        pf = rows.get(f"prefill_full_{L0}") or rows.get(f"prefill_last_{L0}")
        s = {"prefill_tokens_per_s": pf["tokens_per_s"] if pf else None,
             "decode_ms_per_token": 1e3 / rows["decode"]["tokens_per_s"],
             "decode_tokens_per_s": rows["decode"]["tokens_per_s"],
             "recompute_ms_per_token": rows["recompute"]["ms_per_token"],
             "cached_over_recompute": rows["recompute"]["ms_per_token"] / (1e3 / rows["decode"]["tokens_per_s"])}
        if "decode_stepwise" in rows:
            s["decode_stepwise_ms_per_token"] = 1e3 / rows["decode_stepwise"]["tokens_per_s"]
            s["decode_stepwise_tokens_per_s"] = rows["decode_stepwise"]["tokens_per_s"]
        summary[name] = s
    # ratios, ours ÷ peer, over the tasks both ran at fp32 (lower-precision rows are never ranked)
    ratios, ratio_sources = {}, {}
    if "ours" in table:
        o = table["ours"]
        for name, rows in table.items():
            if name == "ours" or (name == CAPI_PEER and TOOL_PEER in table):
                continue
            r = {}
            rows = dict(rows)
            if name == TOOL_PEER and CAPI_PEER in table:
                # what llama.cpp's tools cannot measure (full-logit prefill) comes from the C-API runner, in
                # the same rounds; its calibration against the tools is in `calibration`
                extra = {k: v for k, v in table[CAPI_PEER].items() if k not in rows and v["kind"] == "prefill"}
                rows.update(extra)
                ratio_sources[name] = dict.fromkeys(extra, CAPI_PEER)
            for key, row in rows.items():
                if row.get("lower_precision") or key not in o:
                    continue
                if row["kind"] == "recompute":
                    r["recompute"] = row["ms_per_token"] / o[key]["ms_per_token"]
                else:
                    r[key] = o[key]["tokens_per_s"] / row["tokens_per_s"]
            if f"prefill_full_{L0}" in r:
                r["prefill"] = r[f"prefill_full_{L0}"]
                if f"prefill_full_{L0}" in ratio_sources.get(name, {}):
                    ratio_sources[name]["prefill"] = CAPI_PEER
            if "decode_stepwise" in o and "decode" in rows:
                r["decode_stepwise"] = o["decode_stepwise"]["tokens_per_s"] / rows["decode"]["tokens_per_s"]
            ratios[name] = r
        # ours bf16 ÷ ours fp32 (same rounds), per batch size
        own = {}
        for row in o.values():
            fp = o.get(f"batched_b{row.get('batch')}")
            if row["kind"] == "batched" and row.get("variant") == "bf16" and fp:
                own[f"bf16_over_fp32_b{row['batch']}"] = row["tokens_per_s"] / fp["tokens_per_s"]
        if own:
            ratios["ours"] = own
        for name, r in ratios.items():
            for m, v in r.items():
                src = ratio_sources.get(name, {}).get(m)
                rec(name, f"ours_over_peer_{m}" if name != "ours" else m, v, "ratio",
                    **({"measured_by": src} if src else {}))
    # the C-API runner vs llama.cpp's own tools, same rounds: flagged beyond peers.llama_cpp.calibration_max_gap
    cal, cal_bad = {}, []
    if TOOL_PEER in table and CAPI_PEER in table:
        cal = calibration(table[CAPI_PEER], table[TOOL_PEER], float(llama_settings["calibration_max_gap"]))
        for key, v in cal.items():
            rec(CAPI_PEER, "capi_over_tool", v["capi_over_tool"], "ratio", task=key, flag=v["flag"], gap=v["gap"],
                max_gap=v["max_gap"], capi_tokens_per_s=v["capi_tokens_per_s"],
                tool_tokens_per_s=v["tool_tokens_per_s"])
        cal_bad = check_calibration(cal, strict=False)
        for line in cal_bad:
            print(f"[peers] WARNING calibration: {line}", flush=True)
    # fidelity vs ours (runners that dump logits; llama.cpp's tools print timings only)
    fidelity = {}
    if "ours" in setups:
        ref = np.load(work / "ours_logits.npy")
        for name in setups:
            if setups[name].get("check_tokens") is None or not (work / f"{name}_logits.npy").exists():
                fidelity[name] = {"not_measured": setups[name].get("fidelity") or "no logits dumped"}
                continue
            lg = np.load(work / f"{name}_logits.npy")
            V = mcfg.vocab_size
            fidelity[name] = {"max_abs_logit_diff_vs_ours": float(np.max(np.abs(lg[:V] - ref[:V]))),
                              "max_abs_logit": float(np.max(np.abs(ref[:V]))),
                              "argmax_equal": bool(np.argmax(lg[:V]) == np.argmax(ref[:V])),
                              "check_tokens": setups[name]["check_tokens"],
                              "check_tokens_equal": setups[name]["check_tokens"] == setups["ours"]["check_tokens"]}
    targets = {}  # the project's targets (paper/reported.yaml, targets:), for the peers that ran
    for t in reported.targets("peers"):
        if t.get("metric") == "bandwidth_fraction":  # achieved / bound of one of our tasks
            v = table.get("ours", {}).get(t["task"], {}).get("bandwidth_fraction")
        else:
            v = ratios.get(t["peer"], {}).get(t["ratio"])
        if v is not None:
            targets[t["id"]] = {"target": f">= {t['min']:g}", "value": v, "pass": v >= t["min"]}
    for k, v in targets.items():
        print(f"[peers] {k}: {v['value']:.2f} (target {v['target']}): {'PASS' if v['pass'] else 'MISS'}", flush=True)
    for name, s in summary.items():
        print(f"[peers] {name}: " + ", ".join(f"{k}={v:.4g}" for k, v in s.items() if v is not None), flush=True)
    for name, why in skipped.items():
        print(f"[peers] {name}: skipped: {why.splitlines()[0]}", flush=True)
    if not recs:
        raise RuntimeError(f"no peer produced results: {skipped}")
    if bw:
        rec("stream", "stream_bandwidth", bw, "B/s", times_s=times["stream"], array_bytes=stream.array_bytes,
            note="median of the streaming probe alternated with the peers in the same rounds")
    label = (f"{ctx['label']}; {mcfg.name} shape, synthetic (random-init) weights, float32 (bf16 / GGUF f16, bf16, "
             f"q8_0 rows: lower precision, not ranked), batch 1 unless batched; peers alternated round-robin "
             f"in one run; llama.cpp timed by its own llama-bench / llama-batched-bench (C-API runner: full-logit "
             f"prefill and calibration)")
    extra = {"summary": summary, "ratios": ratios, "targets": targets, "fidelity": fidelity, "skipped": skipped,
             "setups": setups, "peers": {n: PEERS[n]["desc"] for n in P.list if n in PEERS}, "tasks": table,
             "times_s": times, "decode_tokens": tokens, "omp_wait_policy": P.get("omp_wait_policy"),
             "stream_bandwidth": bw, "load_avg": {"rounds_start": load0 if peers else None,
                                                  "rounds_end": load1 if peers else None},
             "peers_schema": PEERS_SCHEMA, "tool_runs": tool_runs, "calibration": cal, "ratio_sources": ratio_sources,
             "calibration_flagged": cal_bad, "llama_settings": llama_settings}
    paths = write_results("peers", ctx["run"], recs, hardware=ctx["hardware"], config=bench.config_dict(cfg),
                          label=label, out_dir=cfg.out_dir, extra=extra)
    md = Path(paths[0]).with_suffix(".md")
    atomic_write_text(md, markdown_table(label, table, ratios, targets, skipped, setups, bw, L0, cal, llama_settings,
                                       ratio_sources))
    print(f"[peers] wrote {paths[0]} and {md.name}")
    # written first (the evidence), then refused: peers.llama_cpp.calibration_strict=true fails the run
    check_calibration(cal, strict=bool(llama_settings.get("calibration_strict")))
    return {"records": recs, "summary": summary, "ratios": ratios, "fidelity": fidelity, "skipped": skipped,
            "targets": targets, "paths": paths, "run": ctx["run"], "tasks": table, "calibration": cal}


def markdown_table(label, table, ratios, targets, skipped, setups, bw, L0, cal=None, llama_settings=None,
                   ratio_sources=None) -> str:
    """The run as a Markdown table: every task's median tokens/s per peer, ours ÷ peer on the fp32
    tasks, our achieved ÷ bound, the targets, and what was skipped and why (same numbers as the JSON)."""
    peers = list(table)
    keys = list(dict.fromkeys(k for rows in table.values() for k in rows))
    lines = [f"# Peers: {label}", "",
             "Median over the rounds of one alternating run. tokens/s (recompute: ms per token). "
             "Lower-precision rows (ours bf16; llama.cpp GGUF f16 / bf16 / q8_0) are never ranked against fp32. "
             "full / last: logits at every position / at the last one.", "",
             "| task | " + " | ".join(peers) + " | " + " | ".join(f"ours ÷ {p}" for p in peers if p != "ours")
             + " | ours achieved ÷ bound |",
             "|---" * (2 + len(peers) + len([p for p in peers if p != "ours"])) + "|"]
    for k in keys:
        cells = []
        for p in peers:
            row = table[p].get(k)
            cells.append("" if row is None else f"{row.get('tokens_per_s', row.get('ms_per_token')):.4g}")
        rat = [ratios.get(p, {}).get("recompute" if k == "recompute" else k) for p in peers if p != "ours"]
        frac = (table.get("ours", {}).get(k) or {}).get("bandwidth_fraction")
        lines.append(f"| {k} | " + " | ".join(cells) + " | " + " | ".join("" if r is None else f"{r:.2f}x" for r in rat)
                     + f" | {'' if frac is None else f'{frac:.2f}'} |")
    if "ours" in ratios:
        lines += ["", "ours bf16 ÷ ours fp32 (batched, same rounds): "
                  + ", ".join(f"{k.removeprefix('bf16_over_fp32_')}: {v:.2f}x" for k, v in ratios["ours"].items())]
    if bw:
        lines += ["", f"Streaming bandwidth (median of the probe in the same rounds): {bw / 1e9:.1f} GB/s."]
    if targets:
        lines += ["", "| target | value | required | |", "|---|---|---|---|"]
        lines += [f"| {k} | {v['value']:.2f} | {v['target']} | {'PASS' if v['pass'] else 'MISS'} |"
                  for k, v in targets.items()]
    for p, why in skipped.items():
        lines.append(f"\n- skipped {p}: {why.splitlines()[0]}")
    for p, src in (ratio_sources or {}).items():
        keys = [k for k in src if k != "prefill"]
        if keys:
            lines += ["", f"ours ÷ {p} at {', '.join(keys)}: measured by {next(iter(src.values()))} (llama.cpp's "
                      f"tools have no full-logit prefill)."]
    if cal:
        lines += ["", "Calibration, llama.cpp C API ÷ llama.cpp's own tools (same rounds; flagged beyond "
                  f"{next(iter(cal.values()))['max_gap']:.0%}):", "",
                  "| task | C API tok/s | tool tok/s | C API ÷ tool | |", "|---|---|---|---|---|"]
        lines += [f"| {k} | {v['capi_tokens_per_s']:.4g} | {v['tool_tokens_per_s']:.4g} | {v['capi_over_tool']:.2f} | "
                  f"{'FLAG' if v['flag'] else 'ok'} |" for k, v in cal.items()]
    cmds = [(k, row["command"]) for k, row in (table.get(TOOL_PEER) or {}).items() if row.get("command")]
    if cmds:
        ls = llama_settings or {}
        lines += ["", f"llama.cpp's tools, one process per task per round (threads {ls.get('threads')}: "
                  f"{ls.get('threads_source')}; OMP_WAIT_POLICY {ls.get('omp_wait_policy') or 'unset'}):", ""]
        lines += [f"- {k}: `{c}`" for k, c in cmds]
    b = (setups.get(TOOL_PEER) or {}).get("build") or (setups.get(CAPI_PEER) or {}).get("build")
    if b and b.get("cmake_flags"):
        lines += ["", f"llama.cpp {b.get('llama_cpp_commit')} from {b.get('sdist')}; "
                  f"cmake {' '.join(b['cmake_flags'])}; "
                  f"ggml CPU features {', '.join(b.get('cpu_features') or [])}; built in {b.get('build_wall_s')} s."]
    return "\n".join(lines) + "\n"


@hydra.main(config_path="pkg://mamba2_jax.eval.conf", config_name="peers", version_base="1.3")
def main(cfg) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
