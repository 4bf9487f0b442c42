"""Where the llama.cpp build lives and whether it is usable (issue 20).

Only files are read here: llama.cpp itself is driven from its own processes (``reference/``,
``experiments/peers_runners/llama_cpp.py``), never imported into this package.  ``make llama-cpp``
(mk/llama.mk) builds it into ``<repo>/.llama`` (or ``$MAMBA2_JAX_LLAMA_DIR``) and writes
``build/build-info.json``, or ``build/build-failed.txt`` with the reason.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..paths import checkout_root

__all__ = ["llama_dir", "unavailable", "build_info"]


def llama_dir() -> Path:
    env = os.environ.get("MAMBA2_JAX_LLAMA_DIR")
    return Path(env) if env else (checkout_root() or Path.cwd()) / ".llama"


def unavailable() -> str | None:
    """Why llama.cpp cannot run here (not built, or its build failed, with the recorded reason), or None."""
    d = llama_dir() / "build"
    if (d / "build-info.json").exists():
        return None
    if (d / "build-failed.txt").exists():
        return f"llama.cpp build failed: {(d / 'build-failed.txt').read_text().strip()} (make llama-cpp)"
    return f"llama.cpp is not built in {d.parent} (make llama-cpp)"


def build_info() -> dict[str, Any] | None:
    p = llama_dir() / "build" / "build-info.json"
    return json.loads(p.read_text()) if p.exists() else None
