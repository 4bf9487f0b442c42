"""Build llama.cpp from the llama-cpp-python sdist and record the build (issue 20, item 1).

Run with the system Python (stdlib only: the project venv may not exist yet) by

* ``make llama-cpp`` (``make test``): only ``libllama`` (``--targets llama``), all that the tests, the
  parity / perplexity backend and the C-API peer load; record ``BUILD/build-info.json``;
* ``make llama-tools``: llama.cpp's own ``llama-bench``, ``llama-batched-bench`` and ``llama-perplexity``
  in the same build directory (``--record tools-build-info.json``);
* ``make llama-server``: ``llama-server``, reconfigured with ``-DLLAMA_BUILD_SERVER=ON``
  (``--record server-build-info.json --binary bin/llama-server``).

Each later build reuses the objects of the first (the same flags but the server switch), so ggml and
libllama are not recompiled.  Configures with the flags after ``--``, builds only ``--targets``, and
writes the record: the llama.cpp commit the sdist vendors (its CHANGELOG names it; the sdist has no git
metadata), the sdist and its sha256, the cmake flags, the targets, the compiler, the build's wall time
and the CPU features ggml compiled in (``llama_print_system_info`` from the built libllama); with
``--binary``, that binary's ``--version``.  On failure it writes the record's ``*-failed.txt`` twin
(``build-failed.txt`` for the first) with the reason (the peers / parity / tests / benchmarks print it
when they skip) and exits 1.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def vendored_commit(src: Path) -> str | None:
    """The llama.cpp commit named by the sdist's CHANGELOG entry for its own version."""
    root = src.parent.parent  # vendor/llama.cpp -> sdist root
    changelog = root / "CHANGELOG.md"
    m = re.search(r"llama_cpp_python-([0-9.]+)$", root.name)
    if not changelog.exists() or not m:
        return None
    text = changelog.read_text()
    head = text.find(f"## [{m.group(1)}]")
    if head < 0:
        return None
    nxt = text.find("\n## [", head + 1)
    hit = re.search(r"ggml-org/llama\.cpp@([0-9a-f]{7,40})", text[head: nxt if nxt > 0 else None])
    return hit.group(1) if hit else None


def find_lib(build: Path, stem: str) -> Path | None:
    for d in (build / "bin", build / "src", build / "ggml" / "src", build):
        for ext in (".so", ".dylib", ".dll"):
            p = d / f"lib{stem}{ext}"
            if p.exists():
                return p
    return None


def system_info(build: Path) -> str | None:
    lib = find_lib(build, "llama")
    if lib is None:
        return None
    dll = ctypes.CDLL(str(lib))
    dll.llama_print_system_info.restype = ctypes.c_char_p
    return dll.llama_print_system_info().decode()


def cpu_features(info: str | None) -> list[str]:
    """``AVX = 1 | AVX2 = 1 | ...`` -> the features ggml reports as on."""
    if not info:
        return []
    return sorted({k.strip() for k, v in re.findall(r"([A-Z0-9_]+) = (\w+)", info) if v == "1"})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", type=Path, required=True)
    ap.add_argument("--build", type=Path, required=True)
    ap.add_argument("--sdist", required=True)
    ap.add_argument("--sdist-sha256", required=True)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--targets", required=True)
    ap.add_argument("--record", default="build-info.json", help="the record's file name in BUILD")
    ap.add_argument("--binary", default=None, help="a built binary (relative to BUILD) to check and --version")
    ap.add_argument("cmake_flags", nargs="*")
    a = ap.parse_args(argv)
    failed = a.build / a.record.replace("-info.json", "-failed.txt")
    a.build.mkdir(parents=True, exist_ok=True)
    targets = a.targets.split()

    def fail(reason: str) -> int:
        _atomic_write(failed, reason.strip() + "\n")
        print(f"llama.cpp build failed: {reason.strip()}", file=sys.stderr)
        return 1

    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            return fail(f"no `{tool}` on PATH: llama.cpp cannot be built here")
    t0 = time.perf_counter()
    steps = [
        ["cmake", "-S", str(a.src), "-B", str(a.build), *a.cmake_flags],
        ["cmake", "--build", str(a.build), "-j", str(a.jobs), "--target", *targets],
    ]
    for cmd in steps:
        print("+", " ".join(cmd), flush=True)
        r = subprocess.run(cmd)
        if r.returncode != 0:
            return fail(f"`{' '.join(cmd)}` exited {r.returncode}")
    wall = time.perf_counter() - t0
    version = None
    if a.binary:
        binary = a.build / a.binary
        if not binary.exists():
            return fail(f"the build finished but {binary} does not exist")
        ver = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=60)
        version = (ver.stdout + ver.stderr).strip().splitlines()
    info = system_info(a.build)
    cxx = subprocess.run(["c++", "--version"], capture_output=True, text=True).stdout.splitlines()
    record = {
        "llama_cpp_commit": vendored_commit(a.src),
        "llama_cpp_commit_source": "the sdist's CHANGELOG.md entry for its version (the sdist has no git metadata)",
        "sdist": os.path.basename(a.sdist),
        "sdist_sha256": a.sdist_sha256,
        "cmake_flags": a.cmake_flags,
        "targets": targets,
        "jobs": a.jobs,
        "build_wall_s": round(wall, 1),
        "compiler": cxx[0] if cxx else None,
        "machine": platform.machine(),
        "system_info": info,
        "cpu_features": cpu_features(info),
        "bin_dir": "bin",
    }
    if a.binary:
        record.update(binary=a.binary, version=version)
    failed.unlink(missing_ok=True)
    _atomic_write(a.build / a.record, json.dumps(record, indent=2) + "\n")
    print(f"llama.cpp {' '.join(targets)} built in {wall:.0f}s; ggml CPU features: "
          f"{', '.join(record['cpu_features'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
