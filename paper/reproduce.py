"""`make reproduce`: the whole chain, at the scale the available JAX backend supports.

    make reproduce                               # what this script runs (MAKE is passed in by mk/reproduce.mk)
    python -m paper.reproduce --dry-run          # print the plan only

Steps (each one is an existing make target of another fragment, run as a sub-make):

  [1/7] setup          make install install-ref; JAX backend, shared data, which model
  [2/7] parity         make parity PARITY_ARGS='triton.cpu_models=[random-mamba2-130m-2l]'
                       (the Triton interpreter on the 2-layer 130m-width model only, ~2 min; `make parity`
                       also runs it on random-tiny-g2 and mamba2-tiny-wikitext, ~7 min each:
                       --triton-models all / REPRO_TRITON=all runs those here too)
  [3/7] perplexity     make perplexity-smoke PPL_LIMIT=N   (REPRO_PPL_LIMIT= empty: make perplexity, full test set)
  [4/7] throughput     make throughput    BENCH_PROFILE=P
  [5/7] sweep          make sweep         BENCH_PROFILE=P
  [6/7] cache speedup  make cache-speedup BENCH_PROFILE=P
  [7/7] figures+paper  make figures paper     (paper includes `make docs`: the numbers in the docs)

After the last step the summary is written and the docs regenerated once more, so that their
runtimes are this run's.  The run then lists the committed files under results/ it rewrote and, for
the others, the command that produces each (paper/results_map.yaml; `make regenerate` runs them
all).  A run with --only writes paper/reproduce_summary-partial.{md,json} instead and leaves the
docs alone.

P (REPRO_PROFILE=auto) is cpu_smoke on CPU and paper on TPU or GPU (on GPU with require_platform=null:
the paper profile otherwise refuses to run off-TPU).  A failed step is reported and the chain goes on
(figures and tables are built from whatever results exist); the exit status is 1 if any step failed.
Step timings and output locations go to paper/reproduce_summary.md, and the same as JSON to
paper/reproduce_summary.json (with the machine, the git commit and whether the caches were cold),
which is where the runtimes in the docs come from (paper/doc_numbers.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SUMMARY = REPO / "paper" / "reproduce_summary.md"
SUMMARY_JSON = SUMMARY.with_suffix(".json")
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


TRITON_DEFAULT = "random-mamba2-130m-2l"


def triton_override(models: str) -> str:
    """The parity override that limits the interpreted Triton backend to ``models`` (comma-separated),
    shell-quoted for the make recipe; "all" or "" keeps triton.cpu_models of the parity config."""
    names = [m.strip() for m in (models or "").split(",") if m.strip()]
    if not names or names == ["all"]:
        return ""
    return shlex.quote(f"triton.cpu_models=[{','.join(names)}]")


def results_report(start: float, root: Path = REPO) -> dict:
    """Which committed results this run rewrote (modified since ``start``) and, for the others, the
    step of paper/results_map.yaml that produces them."""
    from .results_map import committed_results, load_map

    m = load_map()
    done, rest = [], {}
    for f in committed_results(root):
        if m.is_static(f):
            continue
        try:
            fresh = (root / f).stat().st_mtime >= start
        except OSError:
            fresh = False
        if fresh:
            done.append(f)
        else:
            step = m.producer(f)
            key = f"{step.id}: {step.command}" if step else "no producer in paper/results_map.yaml"
            rest.setdefault(key, []).append(f)
    return {"regenerated": done, "not_regenerated": rest}


def print_results_report(rep: dict) -> None:
    print(f"\n[reproduce] committed results rewritten by this run: {len(rep['regenerated'])}")
    for f in rep["regenerated"]:
        print(f"    {f}")
    if rep["not_regenerated"]:
        n = sum(len(v) for v in rep["not_regenerated"].values())
        print(f"[reproduce] {n} other committed results, and the targets that produce them "
              "(`make regenerate` runs them all, ~1.5 h; `make regenerate-plan` for the estimates):")
        for step, files in rep["not_regenerated"].items():
            print(f"    {step}")
            for f in files:
                print(f"        {f}")


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
    triton = triton_override(getattr(args, "triton_models", TRITON_DEFAULT))
    parity_args = [a for a in (triton, os.environ.get("PARITY_ARGS", "")) if a]
    return [
        ("setup", [make + ["install", "install-ref"]]),
        ("parity", [make + ["parity"] + ([f"PARITY_ARGS={' '.join(parity_args)}"] if parity_args else [])]),
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
    ap.add_argument("--triton-models", default=TRITON_DEFAULT,
                    help="models the interpreted Triton parity backend runs here (comma-separated); 'all' = "
                         "triton.cpu_models of mamba2_jax/eval/conf/parity.yaml, as `make parity` runs them")
    ap.add_argument("--only", default="", help="comma-separated step numbers to run (default: all)")
    ap.add_argument("--stop-on-error", action="store_true")
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args(argv)
    flags = (os.environ.get("MAKEFLAGS", "").split() or [""])[0]
    if not flags.startswith("-") and "=" not in flags and "n" in flags:
        args.dry_run = True          # `make -n reproduce`: show the plan, run nothing

    t_all, wall_start = time.monotonic(), time.time()
    backend = jax_backend(args.python) if Path(args.python).exists() else "unknown (venv not built yet)"
    steps = plan(args, backend.split()[0] if backend else "unknown")
    only = {int(x) for x in args.only.split(",") if x.strip()}
    n = len(steps)
    data = os.environ.get("MAMBA2_JAX_DATA", str(REPO.parent / "shared" / "data"))
    model = ("checkpoints/mamba2-tiny-wikitext (trained, embedded)" if (TINY / "config.json").exists()
             else "no checkpoints/mamba2-tiny-wikitext yet: synthetic (random-init) checkpoints only")
    print(f"[reproduce] JAX backend: {backend}; shared data: {data}; model: {model}", flush=True)
    load_start = list(os.getloadavg())
    caches = {d: (REPO / d).exists() for d in ("outputs", ".cache")}   # cold run: neither exists
    print(f"[reproduce] load average at start: {tuple(load_start)}; caches present: {caches}", flush=True)
    from mamba2_jax.eval.provenance import git_info

    g = git_info(REPO)
    if g.get("dirty"):   # results record it (provenance git.dirty); the committed set must come from a clean tree
        print("[reproduce] WARNING: code differs from the commit, so every result will record dirty=true: "
              + ", ".join(g.get("dirty_files") or []), flush=True)
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
        timings.append((i, name, dt, rc, list(os.getloadavg())))
        print(f"[{i}/{n}] {name} {'done' if rc == 0 else f'FAILED (exit {rc})'} in {dt / 60:.1f} min", flush=True)
        if rc:
            failed.append(name)
            if args.stop_on_error or name == "setup":
                break
        if i == 1 and not args.dry_run:      # the venv exists now: the backend decides the profile
            backend = jax_backend(args.python)
            steps = plan(args, backend)
    total = time.monotonic() - t_all
    rep = None
    if not args.dry_run:
        try:
            rep = results_report(wall_start)
        except (OSError, ValueError, subprocess.SubprocessError) as e:   # a report: never why a run fails
            print(f"[reproduce] WARNING: could not list the rewritten results: {type(e).__name__}: {e}")
    lines = ["# make reproduce: last run", "",
             f"JAX backend {backend}; {model}; benchmark profile {args.profile}"
             f"{'' if args.profile != 'auto' else (' (cpu_smoke on CPU, paper on TPU/GPU)')}; perplexity limit "
             f"{args.ppl_limit or 'none (full test set)'}; Triton interpreter (parity) on "
             f"{args.triton_models or 'all of triton.cpu_models'}; finished {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; "
             f"load average at the end {os.getloadavg()}.", "",
             "| step | seconds | minutes | exit | 1-min load after |", "|---|---:|---:|---:|---:|"]
    lines += [f"| [{i}/{n}] {name} | {dt:.0f} | {dt / 60:.1f} | {rc} | {ld[0]:.1f} |"
              for i, name, dt, rc, ld in timings]
    lines += [f"| total | {total:.0f} | {total / 60:.1f} | {1 if failed else 0} | |", "", "Outputs:", ""]
    lines += [f"- {k}: {v}" for k, v in OUTPUTS] + [""]
    if not args.dry_run:
        from mamba2_jax.eval.provenance import cpu_model, git_info, utc_now
        from mamba2_jax.fileio import atomic_write_text

        mem = None
        with contextlib.suppress(ValueError, OSError, AttributeError):
            mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
        doc = {"kind": "reproduce_summary", "finished_utc": utc_now(), "backend": backend, "model": model,
               "profile": args.profile, "ppl_limit": args.ppl_limit or None, "only": sorted(only) or None,
               "triton_models": args.triton_models or "all",
               "results_rewritten": rep["regenerated"] if rep else None,
               "results_not_rewritten": rep["not_regenerated"] if rep else None,
               "machine": {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "mem_gib": mem},
               "git": git_info(REPO), "caches_present_at_start": caches, "load_start": load_start,
               "load_end": list(os.getloadavg()), "n_steps": n,
               "steps": [{"index": i, "name": name, "seconds": dt, "exit": rc, "load_after": ld}
                         for i, name, dt, rc, ld in timings],
               "total_seconds": total, "exit": 1 if failed else 0}
        if only:   # a partial run: its own files, so that the docs keep quoting the last whole run
            summary = SUMMARY.with_name("reproduce_summary-partial.md")
            atomic_write_text(summary, "\n".join(lines))
            atomic_write_text(summary.with_suffix(".json"), json.dumps(doc, indent=1) + "\n")
        else:
            atomic_write_text(SUMMARY, "\n".join(lines))
            atomic_write_text(SUMMARY_JSON, json.dumps(doc, indent=1) + "\n")
            from . import doc_numbers  # the docs quote these runtimes: regenerate them now

            if doc_numbers.main([]) != 0:
                failed.append("docs")
    if rep is not None:
        print_results_report(rep)
    print(f"\n[reproduce] {'FAILED steps: ' + ', '.join(failed) if failed else 'all steps done'} "
          f"in {total / 60:.1f} min. Where everything is:")
    for k, v in OUTPUTS:
        print(f"    {k:14s} {v}")
    print(f"    {'summary':14s} {SUMMARY.relative_to(REPO)} and .json (step timings; "
          f"reproduce_summary-partial.* for a run with --only)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
