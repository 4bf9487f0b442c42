"""How long `make test` takes on a fresh machine (issue 29, section 6): a clean clone, nothing installed.

    python experiments/fresh_make_test.py [--out results/ci/fresh-make-test.json] [--keep DIR]

Clones HEAD (a clean, committed tree) into a temporary directory, with pip's cache off
(``PIP_NO_CACHE_DIR=1``: every wheel is downloaded again, as on a fresh machine) and nothing of this
checkout's ``.venv``, ``.venv-ref``, ``.tpu`` or ``.llama``.  Then, in that clone, as CI does:

1. ``make test-setup``: the two venvs, lint, libtpu and libllama (made in parallel, see the Makefile);
2. ``make test``: pytest (the setup is done, so this is the suite alone).

It records the wall time of each, pytest's own summary line, the llama.cpp build time
(``.llama/build/build-info.json``), the machine and its load before and after, and writes one result
document with provenance.  TeX Live is the machine's (``.ci/run`` installs it with apt as root when it
is missing; that step is not timed here).  Run it on an otherwise idle machine: it is a timing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mamba2_jax.eval.provenance import git_info, provenance
from mamba2_jax.eval.results import write_document
from mamba2_jax.paths import checkout_root, results_dir


def _run(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> tuple[int, float, str]:
    t0 = time.perf_counter()
    with log.open("w") as f:
        r = subprocess.run(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    return r.returncode, wall, log.read_text(errors="replace")


def pytest_summary(text: str) -> dict:
    """Counts from pytest's last line, e.g. '3 failed, 587 passed, 1 skipped, 1 warning in 729.52s (0:12:09)'."""
    lines = [ln for ln in text.splitlines() if re.search(r"\b(passed|failed)\b.* in [0-9.]+s", ln)]
    if not lines:
        return {"line": None}
    line = lines[-1].strip("= ")
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|warnings?|deselected)", line)}
    secs = re.search(r" in ([0-9.]+)s", line)
    return {"line": line, **counts, "pytest_reported_s": float(secs.group(1)) if secs else None}


def slowest(text: str) -> list[dict]:
    """pytest's --durations lines: [{"seconds", "when", "test"}], slowest first."""
    out = []
    for m in re.finditer(r"(?m)^([0-9.]+)s (setup|call|teardown)\s+(\S+)", text):
        out.append({"seconds": float(m.group(1)), "when": m.group(2), "test": m.group(3)})
    return out


# What each part of `make test-setup` leaves behind when it is done (the parts run in parallel, so their
# end times, not their durations, show which one was last)
SETUP_PART_FILES = {".venv": ".venv/.installed", ".venv-ref": ".venv-ref/.installed", ".tpu": ".tpu/.installed",
                    "llama sdist": ".llama/dl/*.tar.gz",
                    "libllama": ".llama/build/build-info.json"}


def setup_parts_done_at(repo: Path, t0: float) -> dict[str, float | None]:
    """Seconds after the setup started at which each part's stamp file was written (None: not made)."""
    out = {}
    for name, rel in SETUP_PART_FILES.items():
        found = sorted(repo.glob(rel))
        out[name] = round(found[0].stat().st_mtime - t0, 1) if found else None
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None, help="default: results/ci/fresh-make-test.json")
    ap.add_argument("--keep", default=None, help="clone into this directory and keep it (default: a temporary one)")
    a = ap.parse_args(argv)
    root = checkout_root()
    git = git_info()
    if root is None or not git["sha"] or git["dirty"]:
        print(f"fresh_make_test: needs a clean git checkout (dirty files: {git.get('dirty_files')}); commit first",
              file=sys.stderr)
        return 2
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="fresh-make-test-"))
    if work.exists() and any(work.iterdir()):
        print(f"fresh_make_test: {work} is not empty", file=sys.stderr)
        return 2
    repo = work / "repo"
    subprocess.run(["git", "clone", "-q", str(root), str(repo)], check=True)
    subprocess.run(["git", "checkout", "-q", git["sha"]], cwd=repo, check=True)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MAMBA2_JAX_", "VIRTUAL_ENV", "PYTHON", "XLA_", "JAX_"))}
    # the shared data is the machine's (../shared/data from the clone is not there): as CI's checkout has it
    env["MAMBA2_JAX_DATA"] = os.environ.get("MAMBA2_JAX_DATA") or str(root.parent / "shared" / "data")
    env["PIP_NO_CACHE_DIR"] = "1"
    env["CI"] = "true"
    # the clone's suite audits the committed results strictly; its results/ci/fresh-make-test.json is the
    # measurement this run replaces (stale after any numerics change), so that one file is not judged there
    env["MAMBA2_JAX_AUDIT_REPLACING"] = "results/ci/fresh-make-test.json"
    # pytest's 30 slowest tests in the log (where the suite's time goes); it changes nothing else
    env["PYTEST_ADDOPTS"] = "--durations=30"
    load0 = [round(x, 2) for x in os.getloadavg()]
    t_setup = time.time()
    rc_setup, wall_setup, setup_log = _run(["make", "test-setup"], repo, env, work / "setup.log")
    parts = setup_parts_done_at(repo, t_setup)
    rc_test, wall_test, test_log = (None, None, "")
    if rc_setup == 0:
        rc_test, wall_test, test_log = _run(["make", "test"], repo, env, work / "test.log")
    load1 = [round(x, 2) for x in os.getloadavg()]
    info_p = repo / ".llama" / "build" / "build-info.json"
    llama = json.loads(info_p.read_text()) if info_p.exists() else None
    rec = {
        "sha": git["sha"], "setup_rc": rc_setup, "setup_wall_s": round(wall_setup, 1),
        "setup_parts_done_at_s": parts,
        "test_rc": rc_test, "pytest_wall_s": round(wall_test, 1) if wall_test is not None else None,
        "total_wall_s": round(wall_setup + (wall_test or 0.0), 1),
        "pytest": pytest_summary(test_log),
        "llama_build_wall_s": (llama or {}).get("build_wall_s"), "llama_targets": (llama or {}).get("targets"),
        "load_avg_before": load0, "load_avg_after": load1, "pip_cache": "off (PIP_NO_CACHE_DIR=1)",
        "tex": shutil.which("pdflatex") is not None,
        "setup_log_tail": setup_log[-2000:], "test_log_tail": test_log[-6000:],
        "slowest_tests": slowest(test_log),
    }
    out = Path(a.out) if a.out else results_dir() / "ci" / "fresh-make-test.json"
    write_document(out, {"label": "fresh-make-test", "status": "measured",
                         "config": {"argv": sys.argv[1:], "clone": str(repo)},
                         "provenance": provenance(git=git)},
                   experiment="fresh_make_test", run="fresh-make-test", records=[rec],
                   hardware=None)
    print("setup parts done at (s): " + ", ".join(f"{k} {v}" for k, v in parts.items()))
    print(f"fresh make test: setup {wall_setup / 60:.1f} min (rc {rc_setup}), pytest "
          f"{(wall_test or 0) / 60:.1f} min (rc {rc_test}); {rec['pytest'].get('line')}; -> {out}")
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if rc_setup == 0 and rc_test == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
