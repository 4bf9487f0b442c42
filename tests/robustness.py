"""Shared machinery of the robustness tests (issue 15): hypothesis profiles, budgets and counts.

* Profiles: ``ci`` (the default; small ``max_examples``) and ``fuzz`` (selected by
  ``MAMBA2_JAX_FUZZ=1``, which ``make fuzz`` sets; ``MAMBA2_JAX_FUZZ_EXAMPLES`` scales it).
  Both have ``deadline=None`` (the machine is shared and JAX compiles on first use) and keep
  their example database under ``.cache/hypothesis``.
* Counts: every fuzzed input is recorded with :func:`record` (target, outcome class);
  :func:`check` runs one input and records it, failing on anything outside the contract
  (a *crash*).  Fault-injection tests record lost data with :func:`data_lost`.  With
  ``MAMBA2_JAX_ROBUSTNESS_OUT=DIR`` the session writes ``DIR/summary.{json,md}``.
"""

from __future__ import annotations

import collections
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

REPO = Path(__file__).resolve().parents[1]
FUZZ = os.environ.get("MAMBA2_JAX_FUZZ", "") not in ("", "0")
FUZZ_EXAMPLES = int(os.environ.get("MAMBA2_JAX_FUZZ_EXAMPLES", "400"))
_DB = DirectoryBasedExampleDatabase(str(REPO / ".cache" / "hypothesis"))
_COMMON = dict(deadline=None, database=_DB, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                      HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=25, derandomize=False, **_COMMON)
settings.register_profile("fuzz", max_examples=FUZZ_EXAMPLES, **_COMMON)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE") or ("fuzz" if FUZZ else "ci")
settings.load_profile(PROFILE)


def examples(ci: int, fuzz: int | None = None) -> settings:
    """Per-test budget: ``ci`` examples in CI, ``fuzz`` (default: the fuzz profile's) under make fuzz."""
    return settings(max_examples=(fuzz or FUZZ_EXAMPLES) if FUZZ else ci)


def budget(ci: int, fuzz: int) -> int:
    """A plain loop count (random offsets, kill seeds, decode tokens): small in CI, large under make fuzz."""
    return fuzz if FUZZ else ci


# ------------------------------------------------------------------------------ counts
_T0 = time.time()
_LOAD0 = list(os.getloadavg())   # recorded in the summary: the load when the run started
_TARGETS: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
_CRASHES: list[dict[str, str]] = []
_LOST: list[dict[str, str]] = []
_NOTES: dict[str, Any] = {}


def record(target: str, outcome: str) -> None:
    _TARGETS[target][outcome] += 1


def note(key: str, value: Any) -> None:
    """A measured number to carry into the summary (e.g. numerics error growth)."""
    _NOTES[key] = value


def data_lost(target: str, what: str) -> None:
    _LOST.append({"target": target, "what": what})


def outcome_of(e: BaseException) -> str:
    cause = getattr(e, "cause", None)
    return f"{type(e).__name__}" + (f" ({cause})" if cause and cause != type(e).__name__ else "")


def check(target: str, fn: Callable[[], Any], allowed: tuple[type[BaseException], ...],
          must_mention: tuple[str, ...] | None = None, describe: str = "") -> tuple[str, Any]:
    """Run ``fn`` on one fuzzed input.  Returns ("ok", value) or ("error", exception).

    An exception outside ``allowed`` is a crash: recorded, then re-raised as a test failure.  An
    allowed error whose message names none of ``must_mention`` fails the test too."""
    try:
        v = fn()
    except allowed as e:
        record(target, outcome_of(e))
        if must_mention and not any(m in str(e) for m in must_mention):
            _CRASHES.append({"target": target, "error": f"message names none of {must_mention}: {e}",
                             "input": describe[:300]})
            raise AssertionError(f"{target}: error does not name any of {must_mention}: {e}\ninput: {describe}") from e
        return "error", e
    except BaseException as e:
        if isinstance(e, KeyboardInterrupt):
            raise
        record(target, f"CRASH {type(e).__name__}")
        _CRASHES.append({"target": target, "error": f"{type(e).__name__}: {str(e)[:300]}", "input": describe[:300]})
        raise AssertionError(f"{target}: {type(e).__name__} outside the contract: {e}\ninput: {describe}") from e
    record(target, "ok")
    return "ok", v


# ------------------------------------------------------------------------------ pytest hooks
_FAILED_TESTS: list[str] = []


def pytest_runtest_logreport(report) -> None:
    if report.failed and "test_robust" in report.nodeid:
        _FAILED_TESTS.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus) -> None:
    out = os.environ.get("MAMBA2_JAX_ROBUSTNESS_OUT")
    if not out or not _TARGETS:
        return
    write_summary(Path(out), exitstatus)


def _git_sha() -> str | None:
    r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return r.stdout.strip() or None if r.returncode == 0 else None


def write_summary(out: Path, exitstatus: int = 0) -> dict[str, Any]:
    sys.path.insert(0, str(REPO))
    from mamba2_jax.fileio import atomic_write_text

    targets = {t: {"inputs": sum(c.values()), "outcomes": dict(sorted(c.items()))} for t, c in sorted(_TARGETS.items())}
    errors_by_class: collections.Counter = collections.Counter()
    for c in _TARGETS.values():
        for k, n in c.items():
            if k != "ok" and not k.startswith("CRASH"):
                errors_by_class[k.split(" (")[0]] += n
    # hypothesis replays a failing input while it shrinks it: count distinct inputs
    crashes = len({(c["target"], c["input"]) for c in _CRASHES})
    summary = {
        "kind": "robustness",
        "profile": PROFILE, "max_examples_per_property": FUZZ_EXAMPLES if FUZZ else 25,
        "inputs_total": sum(v["inputs"] for v in targets.values()),
        "targets": targets,
        "errors_by_class": dict(errors_by_class.most_common()),
        "crashes": crashes, "crash_details": _CRASHES, "failed_tests": _FAILED_TESTS,
        "data_lost": len(_LOST), "data_lost_details": _LOST,
        "measurements": _NOTES,
        "pytest_exitstatus": int(exitstatus),
        "wall_seconds": round(time.time() - _T0, 1),
        "load_average_1_5_15min_at_start": _LOAD0,
        "load_average_1_5_15min_at_end": list(os.getloadavg()),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0], "platform": platform.platform(),
        "git_sha": _git_sha(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    from mamba2_jax.eval.results import write_document

    records = [{"target": t, "inputs": v["inputs"], **v["outcomes"]} for t, v in targets.items()]
    write_document(out / "summary.json", summary, experiment="robustness", run="summary",
                   records=records or [{"target": None, "inputs": 0}])
    lines = [f"# Robustness summary ({summary['date_utc']}, profile `{PROFILE}`)", "",
             f"Inputs tried: **{summary['inputs_total']}**; crashes: **{crashes}**; data lost: **{len(_LOST)}**; "
             f"failed tests: **{len(_FAILED_TESTS)}**; "
             f"wall {summary['wall_seconds']} s on {os.cpu_count()} CPUs (load at end "
             f"{', '.join(f'{x:.1f}' for x in summary['load_average_1_5_15min_at_end'])}); git {summary['git_sha']}.",
             "", "| target | inputs | outcomes |", "|---|---:|---|"]
    for t, v in targets.items():
        lines.append(f"| {t} | {v['inputs']} | " + ", ".join(f"{k}: {n}" for k, n in v["outcomes"].items()) + " |")
    lines += ["", "Errors by class: " + ", ".join(f"{k} {n}" for k, n in errors_by_class.most_common()), ""]
    if _NOTES:
        lines += ["Measurements:", ""] + [f"- {k}: {json.dumps(v, default=str)}" for k, v in _NOTES.items()] + [""]
    atomic_write_text(out / "summary.md", "\n".join(lines))
    return summary
