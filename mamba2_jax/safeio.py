"""Crash-safe file writes and supervised subprocesses (issue 15).

* ``atomic_write`` / ``atomic_write_text`` / ``atomic_write_json``: write to a uniquely named
  temporary file in the target's directory, ``fsync``, then ``os.replace``.  A reader (or a
  concurrent writer of the same path) sees either the previous file or the complete new one,
  never a mix; a failed write (ENOSPC, a kill) leaves the previous file untouched and removes its
  temporary file (a SIGKILL can leave a stray ``.<name>.*.tmp``, never a half-written result).
* ``run_supervised``: run a command with a timeout, echo its stderr live and keep its tail, so a
  crash or a hang is reported with what the process said.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "atomic_write_text", "atomic_write_json", "run_supervised", "SupervisedResult"]


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """``write(tmp_path)`` fills a temporary file next to ``path``, which then replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    data = text.encode(encoding)

    def w(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    return atomic_write(path, w)


def atomic_write_json(path: str | Path, obj: Any, **kw: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, **kw) + "\n")


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
