"""Supervised subprocesses: run a command with a timeout, echo its stderr live and keep its tail,
so that a reference process that crashes or hangs is reported with what it said."""

from __future__ import annotations

import collections
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

__all__ = ["run_supervised", "SupervisedResult"]


class SupervisedResult:
    def __init__(self, returncode: int | None, stdout: str, stderr_tail: str, timed_out: bool):
        self.returncode, self.stdout, self.stderr_tail, self.timed_out = returncode, stdout, stderr_tail, timed_out


def run_supervised(cmd: Sequence[str], *, timeout: float | None, cwd: str | Path | None = None,
                   env: dict[str, str] | None = None, echo_stderr: bool = True, tail_lines: int = 40,
                   capture_stdout: bool = True) -> SupervisedResult:
    """Run ``cmd``; stderr is echoed line by line (live progress) and its last ``tail_lines`` kept.

    On timeout the process is killed (SIGKILL after SIGTERM) and ``timed_out`` is set; the caller
    reports ``stderr_tail`` either way."""
    p = subprocess.Popen(list(cmd), cwd=None if cwd is None else str(cwd), env=env, text=True, errors="replace",
                         stdout=subprocess.PIPE if capture_stdout else None, stderr=subprocess.PIPE)
    tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
    out_chunks: list[str] = []

    def pump_err() -> None:
        for line in p.stderr:
            tail.append(line.rstrip("\n"))
            if echo_stderr:
                sys.stderr.write(line)
                sys.stderr.flush()

    def pump_out() -> None:
        out_chunks.append(p.stdout.read())

    threads = [threading.Thread(target=pump_err, daemon=True)]
    if capture_stdout:
        threads.append(threading.Thread(target=pump_out, daemon=True))
    for t in threads:
        t.start()
    timed_out = False
    try:
        p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        p.terminate()
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    except BaseException:
        p.kill()
        p.wait()
        raise
    for t in threads:
        t.join(timeout=5)
    return SupervisedResult(p.returncode, "".join(out_chunks), "\n".join(tail), timed_out)
