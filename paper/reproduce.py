"""`make reproduce`: the whole chain, at the scale the available JAX backend supports.

    make reproduce                               # what this script runs (MAKE is passed in by mk/reproduce.mk)
    python -m paper.reproduce --dry-run          # print the plan only

Steps (each one is an existing make target of another fragment, run as a sub-make):

  [1/7] setup          make install install-ref; JAX backend, shared data, which model
  [2/7] parity         make parity
  [3/7] perplexity     make perplexity-smoke PPL_LIMIT=N   (REPRO_PPL_LIMIT= empty: make perplexity, full test set)
  [4/7] throughput     make throughput    BENCH_PROFILE=P
  [5/7] sweep          make sweep         BENCH_PROFILE=P
  [6/7] cache speedup  make cache-speedup BENCH_PROFILE=P
  [7/7] figures+paper  make figures paper

P (REPRO_PROFILE=auto) is cpu_smoke on CPU and paper on TPU or GPU (on GPU with require_platform=null:
the paper profile otherwise refuses to run off-TPU).  A failed step is reported and the chain goes on
(figures and tables are built from whatever results exist); the exit status is 1 if any step failed.
Step timings and output locations go to paper/reproduce_summary.md.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SUMMARY = REPO / "paper" / "reproduce_summary.md"
TINY = REPO / "checkpoints" / "mamba2-tiny-wikitext"

OUTPUTS = [
    ("parity", "results/parity/ (one JSON per model x reference, summary__<label>.csv); paper/tables/parity.*"),
    ("perplexity", "results/perplexity/<model>/<protocol>[-limitN].json; paper/tables/perplexity.*"),
    ("throughput", "results/throughput/<profile>-<device>.json/.csv"),
    ("sweep", "results/sweep/<profile>-<device>.json/.csv"),
    ("cache speedup", "results/cache_speedup/<profile>-<device>.json/.csv"),
    ("figures", "figures/out/fig*.png, .pdf, .caption.md"),
    ("tables", "paper/tables/*.tex and *.md (comparison.md: reported vs reproduced)"),
    ("paper", "paper/main.pdf (when pdflatex/latexmk is installed)"),
]


def jax_backend(py: str) -> str:
    try:
        out = subprocess.run([py, "-c", "import jax; print(jax.default_backend())"], cwd=REPO, capture_output=True,
                             text=True, timeout=300)
        return out.stdout.strip().splitlines()[-1] if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def plan(args, backend: str) -> list[tuple[str, list[list[str]]]]:
    make = shlex.split(args.make) + ["--no-print-directory"]
    prof = args.profile
    bench_args = []
    if prof == "auto":
        prof = "cpu_smoke" if backend == "cpu" else "paper"
        if backend == "gpu":
            bench_args = ["require_platform=null"]
    extra = " ".join(bench_args + ([os.environ["BENCH_ARGS"]] if os.environ.get("BENCH_ARGS") else []))
    bench = [f"BENCH_PROFILE={prof}"] + ([f"BENCH_ARGS={extra}"] if extra else [])
    ppl = (make + ["perplexity-smoke", f"PPL_LIMIT={args.ppl_limit}"]) if args.ppl_limit else (make + ["perplexity"])
    return [
        ("setup", [make + ["install", "install-ref"]]),
        ("parity", [make + ["parity"]]),
        ("perplexity", [ppl]),
        ("throughput", [make + ["throughput"] + bench]),
        ("sweep", [make + ["sweep"] + bench]),
        ("cache speedup", [make + ["cache-speedup"] + bench]),
        ("figures + paper", [make + ["figures", "paper"]]),
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--make", default=os.environ.get("MAKE", "make"))
    ap.add_argument("--python", default=str(REPO / ".venv" / "bin" / "python"))
    ap.add_argument("--profile", default="auto", help="benchmark profile: auto | cpu_smoke | cpu_bench | paper | tiny")
    ap.add_argument("--ppl-limit", default="3", help="perplexity smoke limit; empty = the full test set")
    ap.add_argument("--only", default="", help="comma-separated step numbers to run (default: all)")
    ap.add_argument("--stop-on-error", action="store_true")
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args(argv)
    flags = (os.environ.get("MAKEFLAGS", "").split() or [""])[0]
    if not flags.startswith("-") and "=" not in flags and "n" in flags:
        args.dry_run = True          # `make -n reproduce`: show the plan, run nothing

    t_all = time.monotonic()
    backend = jax_backend(args.python) if Path(args.python).exists() else "unknown (venv not built yet)"
    steps = plan(args, backend.split()[0] if backend else "unknown")
    only = {int(x) for x in args.only.split(",") if x.strip()}
    n = len(steps)
    data = os.environ.get("MAMBA2_JAX_DATA", str(REPO.parent / "shared" / "data"))
    model = ("checkpoints/mamba2-tiny-wikitext (trained, embedded)" if (TINY / "config.json").exists()
             else "no checkpoints/mamba2-tiny-wikitext yet: synthetic (random-init) checkpoints only")
    print(f"[reproduce] JAX backend: {backend}; shared data: {data}; model: {model}", flush=True)
    print(f"[reproduce] load average at start: {os.getloadavg()}", flush=True)
    timings, failed = [], []
    for i, (name, cmds) in enumerate(steps, 1):
        if only and i not in only:
            continue
        print(f"\n[{i}/{n}] {name} ...", flush=True)
        t0 = time.monotonic()
        rc = 0
        for cmd in cmds:
            print("    $ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
            if args.dry_run:
                continue
            rc = subprocess.run(cmd, cwd=REPO).returncode
            if rc:
                break
        dt = time.monotonic() - t0
        timings.append((i, name, dt, rc, os.getloadavg()[0]))
        print(f"[{i}/{n}] {name} {'done' if rc == 0 else f'FAILED (exit {rc})'} in {dt / 60:.1f} min", flush=True)
        if rc:
            failed.append(name)
            if args.stop_on_error or name == "setup":
                break
        if i == 1 and not args.dry_run:      # the venv exists now: the backend decides the profile
            backend = jax_backend(args.python)
            steps = plan(args, backend)
    total = time.monotonic() - t_all
    lines = ["# make reproduce: last run", "",
             f"JAX backend {backend}; {model}; benchmark profile {args.profile}"
             f"{'' if args.profile != 'auto' else (' (cpu_smoke on CPU, paper on TPU/GPU)')}; perplexity limit "
             f"{args.ppl_limit or 'none (full test set)'}; finished {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; "
             f"load average at the end {os.getloadavg()}.", "",
             "| step | seconds | minutes | exit | 1-min load after |", "|---|---:|---:|---:|---:|"]
    lines += [f"| [{i}/{n}] {name} | {dt:.0f} | {dt / 60:.1f} | {rc} | {ld:.1f} |" for i, name, dt, rc, ld in timings]
    lines += [f"| total | {total:.0f} | {total / 60:.1f} | {1 if failed else 0} | |", "", "Outputs:", ""]
    lines += [f"- {k}: {v}" for k, v in OUTPUTS] + [""]
    if not args.dry_run:
        SUMMARY.write_text("\n".join(lines))
    print(f"\n[reproduce] {'FAILED steps: ' + ', '.join(failed) if failed else 'all steps done'} "
          f"in {total / 60:.1f} min. Where everything is:")
    for k, v in OUTPUTS:
        print(f"    {k:14s} {v}")
    print(f"    {'summary':14s} {SUMMARY.relative_to(REPO)} (step timings)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
