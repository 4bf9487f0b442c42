"""Peers: this project vs mamba2-jax 1.1.2 (the paper's package) vs HF transformers, side by side.

    make bench-peers             (python experiments/peers.py profile=cpu_bench)

One set of random weights (mamba_ssm-style init of the ``peers.model`` shape, float32) is written
once as a state-spaces checkpoint (read by this project and by mamba2-jax 1.1.2) and as an HF
checkpoint (read by transformers).  Every peer runs in its own subprocess
(experiments/peers_runners/<peer>.py), set up one after the other, then timed round-robin: in each
round every peer (rotating the start) runs prefill, decode and recompute once while the others
wait, so all peers see the same machine load.  Runners time themselves.

Fidelity is checked on the way: the last-position logits of the prefill and a few greedy tokens
after the decode prompt are compared with this project's.
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
from mamba2_jax.paths import require_data_dir

REPO = Path(__file__).resolve().parents[1]

RUNNERS = REPO / "experiments" / "peers_runners"
MARK = "@@PEER "
PEERS = {
    "ours": {"script": "ours.py", "weights": "state-spaces", "decode": "fast",
             "desc": "this project (mamba2_jax, compiled fori_loop decode, cache donated)"},
    "mamba2_jax_1_1_2": {"script": "anchor.py", "weights": "state-spaces", "decode": "slow",
                         "desc": "mamba2-jax 1.1.2 from PyPI (jitted forward, Python decode loop)"},
    "hf_transformers": {"script": "hf.py", "weights": "hf", "decode": "fast",
                        "desc": "transformers Mamba2ForCausalLM, torch eager fp32 (no mamba_ssm kernels)"},
}


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
        peers.pop(name).close()
        return
    print(f"[peers] {name}: ready in {time.perf_counter() - t0:.1f} s", flush=True)


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
    for name in P.list:
        env = dict(base_env)
        if name == "mamba2_jax_1_1_2":
            if not (anchor / "mamba2_jax" / "__init__.py").exists():
                skipped[name] = f"not installed in {anchor} (make anchor-install)"
                continue
            env["PYTHONPATH"] = str(anchor)
        peers[name] = Peer(name, sys.executable, env, work / f"{name}.log", float(P.timeout_s))
    common = {"prefill_length": int(P.prefill_length), "decode_prompt": int(P.decode_prompt),
              "decode_tokens": int(P.decode_tokens), "recompute_context": int(P.recompute_context), "seed": seed,
              "check_tokens": 8, "torch_threads": P.torch_threads, "vocab": mcfg.vocab_size,
              "model_cfg": {"padded_vocab_size": mcfg.padded_vocab_size, "d_model": mcfg.d_model,
                            "d_state": mcfg.d_state, "headdim": mcfg.headdim, "chunk_size": mcfg.chunk_size,
                            "expand": mcfg.expand, "d_conv": mcfg.d_conv, "n_layer": mcfg.n_layer,
                            "norm_epsilon": mcfg.norm_epsilon, "ngroups": mcfg.ngroups}}
    setups, times = {}, {}
    try:
        # setup (load + compile) one after the other, or all at once with peers.parallel_setup (tests)
        parallel = bool(P.get("parallel_setup", False))
        t0 = time.perf_counter()
        for name, peer in list(peers.items()):
            peer.send("setup", weights_dir=str(weights[PEERS[name]["weights"]]),
                      dump=str(work / f"{name}_logits.npy"), **common)
            if not parallel:
                _collect_setup(name, peers, setups, skipped, t0)
                t0 = time.perf_counter()
        if parallel:
            for name in list(peers):
                _collect_setup(name, peers, setups, skipped, t0)
        tokens = {n: int(P.decode_tokens if PEERS[n]["decode"] == "fast" else P.decode_tokens_slow) for n in peers}
        tasks = {}
        for name, peer in peers.items():
            tasks[f"{name}:prefill"] = (lambda p=peer: p.call("prefill")["seconds"])
            tasks[f"{name}:decode"] = (lambda p=peer, n=name: p.call("decode", tokens=tokens[n])["seconds"] / tokens[n])
            tasks[f"{name}:recompute"] = (lambda p=peer: p.call("recompute")["seconds"])
            if name == "ours":
                tasks["ours:decode_stepwise"] = (
                    lambda p=peer: p.call("decode_stepwise", tokens=int(P.decode_tokens))["seconds"]
                    / int(P.decode_tokens))
        # round-robin over peers (rotating), each peer's tasks back to back
        names = list(peers)
        times = {k: [] for k in tasks}
        for r in range(int(P.rounds)):
            k = r % max(1, len(names))
            for name in names[k:] + names[:k]:
                for t in [t for t in tasks if t.startswith(name + ":")]:
                    times[t].append(float(tasks[t]()))
            print(f"[peers] round {r + 1}/{P.rounds} done", flush=True)
    finally:
        for peer in peers.values():
            peer.close()

    med = {k: bench.median(v) for k, v in times.items()}
    L, R = int(P.prefill_length), int(P.recompute_context)
    recs = []

    def rec(peer, metric, value, unit, **kw):
        recs.append({"peer": peer, "metric": metric, "value": value, "unit": unit, **kw})

    summary = {}
    for name in peers:
        if name not in setups:
            continue
        s = {"prefill_tokens_per_s": L / med[f"{name}:prefill"],
             "decode_ms_per_token": med[f"{name}:decode"] * 1e3,
             "decode_tokens_per_s": 1.0 / med[f"{name}:decode"],
             "recompute_ms_per_token": med[f"{name}:recompute"] * 1e3,
             "cached_over_recompute": med[f"{name}:recompute"] / med[f"{name}:decode"]}
        if f"{name}:decode_stepwise" in med:
            s["decode_stepwise_ms_per_token"] = med[f"{name}:decode_stepwise"] * 1e3
            s["decode_stepwise_tokens_per_s"] = 1.0 / med[f"{name}:decode_stepwise"]
        summary[name] = s
        units = {"prefill_tokens_per_s": "tokens/s", "decode_ms_per_token": "ms", "decode_tokens_per_s": "tokens/s",
                 "recompute_ms_per_token": "ms", "cached_over_recompute": "ratio",
                 "decode_stepwise_ms_per_token": "ms", "decode_stepwise_tokens_per_s": "tokens/s"}
        for m, v in s.items():
            rec(name, m, v, units[m], length=L if m.startswith("prefill") else (R if "recompute" in m else None),
                decode_tokens=tokens.get(name))
    ratios = {}
    if "ours" in summary:
        o = summary["ours"]
        for name, s in summary.items():
            if name == "ours":
                continue
            ratios[name] = {"prefill": o["prefill_tokens_per_s"] / s["prefill_tokens_per_s"],
                            "decode": o["decode_tokens_per_s"] / s["decode_tokens_per_s"],
                            "recompute": s["recompute_ms_per_token"] / o["recompute_ms_per_token"]}
            if "decode_stepwise_tokens_per_s" in o:
                ratios[name]["decode_stepwise"] = o["decode_stepwise_tokens_per_s"] / s["decode_tokens_per_s"]
            for m, v in ratios[name].items():
                rec(name, f"ours_over_peer_{m}", v, "ratio")
    # fidelity vs ours
    fidelity = {}
    if "ours" in setups:
        ref = np.load(work / "ours_logits.npy")
        for name in setups:
            lg = np.load(work / f"{name}_logits.npy")
            fidelity[name] = {"max_abs_logit_diff_vs_ours": float(np.max(np.abs(lg - ref))),
                              "max_abs_logit": float(np.max(np.abs(ref))),
                              "argmax_equal": bool(np.argmax(lg) == np.argmax(ref)),
                              "check_tokens": setups[name]["check_tokens"],
                              "check_tokens_equal": setups[name]["check_tokens"] == setups["ours"]["check_tokens"]}
    targets = {}  # the project's targets (paper/reported.yaml, targets:), for the peers that ran
    for t in reported.targets("peers"):
        v = ratios.get(t["peer"], {}).get(t["ratio"])
        if v is not None:
            targets[t["id"]] = {"target": f">= {t['min']:g}", "value": v, "pass": v >= t["min"]}
    for k, v in targets.items():
        print(f"[peers] {k}: {v['value']:.2f} (target {v['target']}): {'PASS' if v['pass'] else 'MISS'}", flush=True)
    for name, s in summary.items():
        print(f"[peers] {name}: " + ", ".join(f"{k}={v:.4g}" for k, v in s.items()), flush=True)
    if not recs:
        raise RuntimeError(f"no peer produced results: {skipped}")
    label = (f"{ctx['label']}; {mcfg.name} shape, synthetic (random-init) weights, float32, batch 1; "
             f"peers alternated round-robin in one run")
    extra = {"summary": summary, "ratios": ratios, "targets": targets, "fidelity": fidelity, "skipped": skipped,
             "setups": setups, "peers": {n: PEERS[n]["desc"] for n in P.list}, "times_s": times,
             "decode_tokens": tokens, "omp_wait_policy": P.get("omp_wait_policy")}
    paths = write_results("peers", ctx["run"], recs, hardware=ctx["hardware"], config=bench.config_dict(cfg),
                                label=label, out_dir=cfg.out_dir, extra=extra)
    print(f"[peers] wrote {paths[0]}")
    return {"records": recs, "summary": summary, "ratios": ratios, "fidelity": fidelity, "skipped": skipped,
            "targets": targets, "paths": paths, "run": ctx["run"]}


@hydra.main(config_path="pkg://mamba2_jax.eval.conf", config_name="peers", version_base="1.3")
def main(cfg) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
