"""The map from committed results to the commands that produce them (paper/results_map.yaml), and
`make regenerate`: every producing step, in order, from a clean tree.

    python -m paper.results_map                 # the map: each committed results file -> its producing step
    python -m paper.results_map --plan          # the plan, a time estimate per step (make regenerate-plan)
    python -m paper.results_map --regenerate    # run it (make regenerate); --only reproduce,parity / --skip fuzz
    python -m paper.results_map --regenerate --allow-dirty   # run from a modified tree (results then say dirty)

A file written by several steps is produced by the last of them in the map's order.  The time
estimate of a step is its last measured time (paper/regenerate_summary.json, written by a whole
`make regenerate` run) or else the map's ``estimate_min``.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
MAP_FILE = REPO / "paper" / "results_map.yaml"
REGEN_SUMMARY = REPO / "paper" / "regenerate_summary.json"


@dataclass
class Step:
    id: str
    make: list[str]
    writes: list[str]
    estimate_min: float | None = None
    quiet: bool = False
    code: list[str] = field(default_factory=list)
    note: str | None = None
    manual: str | None = None

    @property
    def command(self) -> str:
        """The command a reader types (`make ...`), or the manual instruction of a step regenerate skips."""
        if self.make:
            return "make " + " ".join(shlex.quote(a) for a in self.make)
        return self.manual or "(no command)"

    @property
    def runnable(self) -> bool:
        return bool(self.make)


@dataclass
class ResultsMap:
    steps: list[Step]
    static: list[str]

    def step(self, sid: str) -> Step:
        for s in self.steps:
            if s.id == sid:
                return s
        raise KeyError(f"no step {sid!r} in the results map (steps: {', '.join(s.id for s in self.steps)})")

    def writers(self, path: str) -> list[Step]:
        """Every step that writes ``path`` (repository-relative, '/'-separated), in run order."""
        return [s for s in self.steps if any(fnmatch.fnmatchcase(path, g) for g in s.writes)]

    def producer(self, path: str) -> Step | None:
        """The step whose output is the committed file: the last one in run order that writes it."""
        w = self.writers(path)
        return w[-1] if w else None

    def is_static(self, path: str) -> bool:
        return any(fnmatch.fnmatchcase(path, g) for g in self.static)


def load_map(path: Path = MAP_FILE) -> ResultsMap:
    doc = yaml.safe_load(Path(path).read_text())
    if not isinstance(doc, dict) or not isinstance(doc.get("steps"), list):
        raise ValueError(f"{path}: expected a mapping with a 'steps' list")
    steps, seen = [], set()
    for i, s in enumerate(doc["steps"]):
        if not isinstance(s, dict) or "id" not in s:
            raise ValueError(f"{path}: step {i} has no id")
        if s["id"] in seen:
            raise ValueError(f"{path}: step id {s['id']!r} appears twice")
        seen.add(s["id"])
        unknown = set(s) - {"id", "make", "writes", "estimate_min", "quiet", "code", "note", "manual"}
        if unknown:
            raise ValueError(f"{path}: step {s['id']!r}: unknown keys {sorted(unknown)}")
        steps.append(Step(id=str(s["id"]), make=[str(a) for a in s.get("make") or []],
                          writes=[str(g) for g in s.get("writes") or []], estimate_min=s.get("estimate_min"),
                          quiet=bool(s.get("quiet", False)), code=[str(c) for c in s.get("code") or []],
                          note=s.get("note"), manual=s.get("manual")))
    return ResultsMap(steps=steps, static=[str(g) for g in doc.get("static") or []])


def committed_results(root: Path = REPO) -> list[str]:
    """Tracked files under results/ (repository-relative)."""
    out = subprocess.run(["git", "ls-files", "results"], cwd=root, capture_output=True, text=True, check=True)
    return sorted(p for p in out.stdout.splitlines() if p.strip())


def last_times(path: Path = REGEN_SUMMARY) -> dict[str, float]:
    """Seconds per step id of the last recorded `make regenerate` run ({} if none)."""
    try:
        doc = json.loads(Path(path).read_text())
        return {s["id"]: float(s["seconds"]) for s in doc.get("steps", []) if s.get("exit") == 0}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def estimate(step: Step, times: dict[str, float]) -> tuple[float | None, str]:
    if step.id in times:
        return times[step.id] / 60, "measured"
    return (float(step.estimate_min), "estimate") if step.estimate_min is not None else (None, "unknown")


def print_map(m: ResultsMap, files: list[str]) -> int:
    """Each committed file with its producer; exit 1 if a file has none (or is static and written)."""
    bad = 0
    for f in files:
        p = m.producer(f)
        if m.is_static(f):
            print(f"{f:64s} (documentation, not produced)")
        elif p is None:
            bad += 1
            print(f"{f:64s} NO PRODUCER in {MAP_FILE.relative_to(REPO)}")
        else:
            print(f"{f:64s} {p.id:22s} {p.command}")
    return 1 if bad else 0


def plan_lines(m: ResultsMap, steps: list[Step], times: dict[str, float]) -> list[str]:
    lines, total = [], 0.0
    for i, s in enumerate(steps, 1):
        est, src = estimate(s, times)
        total += est or 0.0
        t = f"~{est:.1f} min ({src})" if est is not None and est < 10 else (
            f"~{est:.0f} min ({src})" if est is not None else "? min")
        flags = " [quiet machine]" if s.quiet else ""
        lines.append(f"[{i}/{len(steps)}] {s.id:22s} {t:22s} {s.command}{flags}")
    lines.append(f"total ~{total:.0f} min")
    return lines


def code_dirty(root: Path = REPO) -> list[str]:
    from mamba2_jax.eval.provenance import git_info

    g = git_info(root)
    return list(g.get("dirty_files") or []) if g.get("dirty") else []


def regenerate(m: ResultsMap, steps: list[Step], make: list[str], *, allow_dirty: bool, dry_run: bool) -> int:
    times = last_times()
    dirty = code_dirty()
    if dirty and not allow_dirty:
        print("[regenerate] refusing: the tree has uncommitted changes to code, so every result would record "
              "dirty=true:\n    " + "\n    ".join(dirty) + "\n[regenerate] commit or stash them, or pass "
              "ALLOW_DIRTY=1 (make regenerate ALLOW_DIRTY=1) to run anyway", file=sys.stderr)
        return 2
    print("[regenerate] plan (on a quiet machine: the steps marked [quiet machine] measure time):")
    for line in plan_lines(m, steps, times):
        print("    " + line)
    if dry_run:
        return 0
    load0 = list(os.getloadavg())
    if load0[0] > 1.0:
        print(f"[regenerate] WARNING: 1-min load average {load0[0]:.1f} at the start: the timing steps will "
              "record it, but a loaded machine slows them down", flush=True)
    t_all, records, failed = time.monotonic(), [], []
    for i, s in enumerate(steps, 1):
        est, src = estimate(s, times)
        eta = f" (last: ~{est:.0f} min, {src})" if est is not None else ""
        cmd = make + ["--no-print-directory"] + s.make
        print(f"\n[regenerate {i}/{len(steps)}] {s.id}{eta}\n    $ {shlex.join(cmd)}", flush=True)
        t0 = time.monotonic()
        rc = subprocess.run(cmd, cwd=REPO).returncode
        dt = time.monotonic() - t0
        records.append({"index": i, "id": s.id, "command": s.command, "seconds": round(dt, 1), "exit": rc,
                        "load_after": list(os.getloadavg())})
        print(f"[regenerate {i}/{len(steps)}] {s.id} {'done' if rc == 0 else f'FAILED (exit {rc})'} "
              f"in {dt / 60:.1f} min", flush=True)
        if rc:
            failed.append(s.id)
    total = time.monotonic() - t_all
    from mamba2_jax.eval.provenance import cpu_model, git_info, utc_now
    from mamba2_jax.fileio import atomic_write_text

    doc = {"kind": "regenerate_summary", "finished_utc": utc_now(), "git": git_info(REPO),
           "machine": {"cpu_model": cpu_model(), "cpu_count": os.cpu_count()}, "load_start": load0,
           "load_end": list(os.getloadavg()), "steps": records, "total_seconds": round(total, 1),
           "whole_run": len(steps) == len([s for s in m.steps if s.runnable]), "exit": 1 if failed else 0}
    # only a whole run replaces the recorded times; a partial one goes next to it
    out = REGEN_SUMMARY if doc["whole_run"] else REGEN_SUMMARY.with_name("regenerate_summary-partial.json")
    atomic_write_text(out, json.dumps(doc, indent=1) + "\n")
    print(f"\n[regenerate] {'FAILED: ' + ', '.join(failed) if failed else 'all steps done'} in {total / 60:.1f} min; "
          f"step times in {out.relative_to(REPO)}. Check with: python -m paper.results_audit --strict")
    return 1 if failed else 0


def select(m: ResultsMap, only: str, skip: str) -> list[Step]:
    ids = [x.strip() for x in only.split(",") if x.strip()]
    skips = {x.strip() for x in skip.split(",") if x.strip()}
    for x in [*ids, *skips]:
        m.step(x)                                   # a clear error for a misspelt id
    steps = [m.step(x) for x in ids] if ids else [s for s in m.steps if s.runnable]
    return [s for s in steps if s.id not in skips]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plan", action="store_true", help="print the regenerate plan with time estimates")
    ap.add_argument("--regenerate", action="store_true", help="run every producing step in order")
    ap.add_argument("--only", default="", help="comma-separated step ids (default: every step with a make target)")
    ap.add_argument("--skip", default="", help="comma-separated step ids to leave out")
    ap.add_argument("--allow-dirty", action="store_true", help="run even if code differs from HEAD")
    ap.add_argument("--make", default=os.environ.get("MAKE", "make"))
    args = ap.parse_args(argv)
    m = load_map()
    if args.plan or args.regenerate:
        steps = select(m, args.only, args.skip)
        return regenerate(m, steps, shlex.split(args.make), allow_dirty=args.allow_dirty or args.plan,
                          dry_run=args.plan)
    return print_map(m, committed_results())


if __name__ == "__main__":
    sys.exit(main())
