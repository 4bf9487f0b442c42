"""Build llama.cpp's ``llama-server`` (issue 27, section 7) next to the tools ``make llama-cpp`` built.

Run by ``make llama-server`` with the system Python (stdlib only), after ``make llama-cpp``: it
reconfigures the same build directory with ``-DLLAMA_BUILD_SERVER=ON`` (every other flag as the test
build has it, so ggml and libllama are reused, not recompiled) and builds only the ``llama-server``
target.  ``make test`` never builds it.  Writes ``BUILD/server-build-info.json`` (the flags, the wall
time, the vendored commit, ``llama-server --version``); ``BUILD/build-info.json`` stays the test build's.
On failure it writes ``BUILD/server-build-failed.txt`` with the reason and exits 1; the serving
benchmark then skips llama-server with it.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from llama_build import _atomic_write, cpu_features, system_info, vendored_commit


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", type=Path, required=True)
    ap.add_argument("--build", type=Path, required=True)
    ap.add_argument("--sdist", required=True)
    ap.add_argument("--sdist-sha256", required=True)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("cmake_flags", nargs="*")
    a = ap.parse_args(argv)
    failed = a.build / "server-build-failed.txt"
    a.build.mkdir(parents=True, exist_ok=True)

    def fail(reason: str) -> int:
        _atomic_write(failed, reason.strip() + "\n")
        print(f"llama-server build failed: {reason.strip()}", file=sys.stderr)
        return 1

    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            return fail(f"no `{tool}` on PATH: llama-server cannot be built here")
    t0 = time.perf_counter()
    steps = [
        ["cmake", "-S", str(a.src), "-B", str(a.build), *a.cmake_flags],
        ["cmake", "--build", str(a.build), "-j", str(a.jobs), "--target", "llama-server"],
    ]
    for cmd in steps:
        print("+", " ".join(cmd), flush=True)
        r = subprocess.run(cmd)
        if r.returncode != 0:
            return fail(f"`{' '.join(cmd)}` exited {r.returncode}")
    wall = time.perf_counter() - t0
    binary = a.build / "bin" / "llama-server"
    if not binary.exists():
        return fail(f"the build finished but {binary} does not exist")
    ver = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=60)
    info = system_info(a.build)
    cxx = subprocess.run(["c++", "--version"], capture_output=True, text=True).stdout.splitlines()
    record = {
        "llama_cpp_commit": vendored_commit(a.src),
        "sdist": Path(a.sdist).name,
        "sdist_sha256": a.sdist_sha256,
        "cmake_flags": a.cmake_flags,
        "targets": ["llama-server"],
        "jobs": a.jobs,
        "build_wall_s": round(wall, 1),
        "compiler": cxx[0] if cxx else None,
        "machine": platform.machine(),
        "version": (ver.stdout + ver.stderr).strip().splitlines(),
        "system_info": info,
        "cpu_features": cpu_features(info),
        "binary": "bin/llama-server",
    }
    failed.unlink(missing_ok=True)
    _atomic_write(a.build / "server-build-info.json", json.dumps(record, indent=2) + "\n")
    print(f"llama-server built in {wall:.0f}s: {binary}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
