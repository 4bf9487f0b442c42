"""Provenance of a run: code version, package versions, machine and precision settings.

``provenance()`` returns a flat-ish, JSON-serialisable dict that every experiment writes next to
its results.  Nothing here raises: a field that cannot be determined is ``None``.  JAX is only
queried if it is already importable; the function never initialises an accelerator that the
caller has not asked for beyond what ``jax.devices()`` does.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata as _md
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["provenance", "command_line", "hydra_overrides", "git_info", "package_versions", "cpu_model", "utc_now"]

from ..hardware import cpu_model
from ..paths import checkout_root

DEFAULT_PACKAGES = ("jax", "jaxlib", "flax", "numpy", "torch", "transformers", "tokenizers", "safetensors",
                    "mamba-ssm", "triton", "einops", "hydra-core", "mamba2-jax-artifact")


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def _git(*args: str, cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


# What the experiments themselves write (and the report's text, Markdown and the paper's LaTeX and number
# registry, which no number is computed from): a change there does not make the code differ from the
# commit.  Without this, the second step of a chain (`make reproduce`, `make regenerate`) would record
# "dirty" because the first one wrote its results.
OUTPUT_PATHSPECS = ("results", "figures/out", "paper/tables", "paper/reproduce_summary*",
                    "paper/regenerate_summary*", "paper/main.pdf", "paper/main.inputs.json", "paper/numbers.tex",
                    "*.md", "paper/main.tex", "paper/doc_numbers.yaml")


def code_files(files) -> list[str]:
    """The files of a recorded ``dirty_files`` list that are code: not under OUTPUT_PATHSPECS (as git
    matches them: a directory prefix, or a glob on the path)."""
    import fnmatch

    def output(f: str) -> bool:
        return any(f == p or f.startswith(p.rstrip("/") + "/") or fnmatch.fnmatch(f, p)
                   or fnmatch.fnmatch(Path(f).name, p) for p in OUTPUT_PATHSPECS)

    return [f for f in files if not output(f)]


def git_info(cwd: str | Path | None = None) -> dict[str, Any]:
    """{"sha": full sha or None, "dirty": bool or None, "branch": name or None, "dirty_files": [...]}
    of the checkout the package runs from (or of ``cwd``); all None from an installed wheel.
    ``dirty``: a tracked file outside OUTPUT_PATHSPECS differs from the commit (``dirty_files``
    lists the first 20 of them)."""
    cwd = Path(cwd) if cwd is not None else checkout_root()
    if cwd is None:
        return {"sha": None, "dirty": None, "branch": None, "dirty_files": None}
    sha = _git("rev-parse", "HEAD", cwd=cwd)
    # tracked files that differ from HEAD, staged or not (untracked files are not code the run used
    # unless imported; `git status --untracked-files=no` did not count them either)
    changed = _git("diff", "--name-only", "HEAD", "--", ".", *(f":(exclude){p}" for p in OUTPUT_PATHSPECS),
                   cwd=cwd) if sha else None
    branch = _git("rev-parse", "--abbrev-ref", "HEAD", cwd=cwd)
    files = None if changed is None else changed.splitlines()
    return {"sha": sha, "dirty": None if files is None else bool(files), "branch": branch,
            "dirty_files": None if files is None else files[:20]}


def package_versions(names=DEFAULT_PACKAGES) -> dict[str, str | None]:
    """Installed distribution versions (``None`` when not installed); no package is imported."""
    out: dict[str, str | None] = {}
    for n in names:
        try:
            out[n] = _md.version(n)
        except _md.PackageNotFoundError:
            out[n] = None
    return out


def _jax_info() -> dict[str, Any]:
    try:
        import jax
    except Exception:
        return {"available": False}
    info: dict[str, Any] = {"available": True}
    try:
        info["backend"] = jax.default_backend()
        devs = jax.devices()
        info["devices"] = [str(d) for d in devs]
        info["device_kinds"] = sorted({getattr(d, "device_kind", "?") for d in devs})
    except Exception as e:
        info["error"] = f"{type(e).__name__}: {e}"
    try:
        info["default_matmul_precision"] = jax.config.jax_default_matmul_precision
        info["enable_x64"] = bool(jax.config.jax_enable_x64)
    except Exception:
        pass
    return info


def _torch_info() -> dict[str, Any] | None:
    if "torch" not in sys.modules:  # report torch flags only where the run actually uses torch
        return None
    import torch

    info: dict[str, Any] = {"cuda_available": torch.cuda.is_available(),
                            "float32_matmul_precision": torch.get_float32_matmul_precision(),
                            "num_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
        info["cuda_version"] = torch.version.cuda
        info["tf32_matmul"] = bool(torch.backends.cuda.matmul.allow_tf32)
        info["tf32_cudnn"] = bool(torch.backends.cudnn.allow_tf32)
    return info


def hydra_overrides() -> list[str] | None:
    """The full Hydra override list of the running task (``HydraConfig.get().overrides.task``: every
    override given on the command line, in order), or ``None`` outside a Hydra app.  Hydra is only
    queried if it is already imported."""
    if "hydra" not in sys.modules:
        return None
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else None
    except Exception:
        return None


def command_line() -> dict[str, Any]:
    """How this process was started: ``argv`` (``sys.argv``) and ``command`` (the interpreter and its
    arguments, ``sys.orig_argv``, shell-quoted), so that a run can be repeated exactly."""
    orig = list(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])
    return {"argv": list(sys.argv), "command": shlex.join(orig), "cwd": os.getcwd()}


def provenance(packages=DEFAULT_PACKAGES, **extra: Any) -> dict[str, Any]:
    """Everything needed to say where a number came from, and how to run it again: the command line
    and (in a Hydra app) the full override list.  ``extra`` keys are merged in."""
    out: dict[str, Any] = {
        "date_utc": utc_now(),
        "git": git_info(),
        "command_line": command_line(),
        "hydra_overrides": hydra_overrides(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "packages": package_versions(packages),
        "jax": _jax_info(),
    }
    t = _torch_info()
    if t is not None:
        out["torch"] = t
    out.update(extra)
    return out


if __name__ == "__main__":  # pragma: no cover
    import json

    print(json.dumps(provenance(), indent=2))
