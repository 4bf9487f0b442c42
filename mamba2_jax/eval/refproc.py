"""Reference implementations as subprocesses, for parity and perplexity alike.

Each reference backend runs in its own process and interpreter (``.venv-ref`` for mamba_ssm):
``python -m reference.golden`` writes a parity golden file (:func:`run_golden`), ``python -m
reference.score`` scores perplexity windows (:func:`run_reference`).  :func:`reference_python`
picks the interpreter of a backend for both.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..fileio import atomic_write_json, atomic_write_text
from ..paths import checkout_root, repo_path
from .supervise import run_supervised
from .windows import Windows, WindowScores

REPO = checkout_root() or Path.cwd()


REFERENCE_MODULE = "reference.score"


REFERENCE_BACKENDS = ("mamba_ssm_ref_cpu", "transformers", "mamba_ssm_triton", "llama_cpp")


class ReferenceUnavailable(RuntimeError):
    """The reference scorer module (``python -m reference.score``) cannot be found."""


class ReferenceFailed(RuntimeError):
    """The reference scorer ran but failed or returned something that breaks the contract."""


def reference_available(module: str = REFERENCE_MODULE, cwd: str | Path | None = None, python: str = sys.executable,
                        env: dict[str, str] | None = None) -> str | None:
    """None if ``python -m module`` can be found from ``cwd`` (default: the checkout), else the reason why not."""
    cwd = cwd if cwd is not None else checkout_root()
    code = ("import importlib.util, sys\n"
            "try:\n    s = importlib.util.find_spec(sys.argv[1])\nexcept Exception:\n    s = None\n"
            "sys.exit(0 if s is not None else 3)")
    r = subprocess.run([python, "-c", code, module], cwd=None if cwd is None else str(cwd), capture_output=True,
                       text=True,
                       env=env)
    if r.returncode == 0:
        return None
    return (f"reference scorer `python -m {module}` not found (looked from {cwd}). It is the subprocess "
            f"contract `python -m {module} --backend B --model DIR --windows W.npz --out OUT.npz`; until it "
            f"exists only the JAX backends run. Install/add the `reference` package, or drop the reference "
            f"backends (Hydra: backends=[jax_fp32,jax_bf16]).")


def run_reference(backend: str, model_dir: str | Path, windows_path: str | Path, out_path: str | Path,
                  windows: Windows | None = None, *, module: str = REFERENCE_MODULE, python: str = sys.executable,
                  cwd: str | Path | None = None, env: dict[str, str] | None = None, timeout: float | None = None,
                  log_path: str | Path | None = None, extra_args: Sequence[str] = (),
                  reuse: bool = True) -> WindowScores:
    """Run one reference backend on a windows file and read back its scores.

    With ``reuse`` an existing ``out_path`` made from the same windows file (checked through a
    ``.meta.json`` sidecar holding the windows hash) is read instead of recomputed.
    """
    windows = windows if windows is not None else Windows.load(windows_path)
    out_path = Path(out_path)
    sidecar = out_path.with_name(out_path.name + ".meta.json")
    want = {"backend": backend, "model": str(model_dir), "windows_sha256": windows.sha256(),
            "extra_args": [str(a) for a in extra_args]}
    if reuse and out_path.exists() and sidecar.exists():
        try:
            if json.loads(sidecar.read_text()) == want:
                sc = _read_reference_out(out_path, windows, backend)
                sc.info["reused"] = True
                return sc
        except (ReferenceFailed, ValueError, OSError):
            pass
    cwd = cwd if cwd is not None else checkout_root()
    why = reference_available(module, cwd, python, env)
    if why is not None:
        raise ReferenceUnavailable(why)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    from .supervise import run_supervised

    # a unique name per run: two concurrent runs never write into each other's output
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".partial.npz", dir=out_path.parent)
    os.close(fd)
    tmp_out = Path(tmp_name)
    cmd = [python, "-m", module, "--backend", backend, "--model", str(model_dir), "--windows", str(windows_path),
           "--out", str(tmp_out), *map(str, extra_args)]
    t0 = time.perf_counter()
    try:
        r = run_supervised(cmd, cwd=cwd, env=env, timeout=timeout, echo_stderr=False, tail_lines=200)
        wall = time.perf_counter() - t0
        if log_path is not None:
            atomic_write_text(log_path, f"$ {' '.join(cmd)}\n# rc={r.returncode} timed_out={r.timed_out}\n"
                                        f"--- stdout\n{r.stdout}\n--- stderr (tail)\n{r.stderr_tail}")
        tail = "\n".join((r.stderr_tail or r.stdout).strip().splitlines()[-15:])
        if r.timed_out:
            raise ReferenceFailed(f"reference backend {backend!r} timed out after {timeout} s and was killed; "
                                  f"its stderr ended with:\n{tail}")
        if r.returncode != 0:
            raise ReferenceFailed(f"reference backend {backend!r} failed (exit {r.returncode}):\n{tail}")
        sc = _read_reference_out(tmp_out, windows, backend)
        os.replace(tmp_out, out_path)
    finally:
        tmp_out.unlink(missing_ok=True)
    atomic_write_json(sidecar, want, indent=None)
    sc.info.update({"wall_seconds": wall, "command": cmd, "reused": False})
    return sc


def _read_reference_out(path: Path, windows: Windows, backend: str) -> WindowScores:
    try:
        with np.load(path, allow_pickle=False) as z:
            ll = np.asarray(z["loglik"], np.float64)
            ns = np.asarray(z["n_scored"], np.int64)
            extra = {k: z[k].tolist() for k in z.files
                     if k not in ("loglik", "n_scored", "meta_json") and z[k].size <= 64}
            if "meta_json" in z.files:
                try:
                    extra["meta"] = json.loads(str(z["meta_json"]))
                except ValueError:
                    extra["meta"] = str(z["meta_json"])
    except (OSError, KeyError, ValueError) as e:
        raise ReferenceFailed(f"{backend}: cannot read {path}: {e}") from None
    n = len(windows)
    if ll.shape != (n,) or ns.shape != (n,):
        raise ReferenceFailed(f"{backend}: expected loglik/n_scored of shape ({n},), got {ll.shape}/{ns.shape}")
    if not np.array_equal(ns, windows.n_targets):
        bad = int(np.sum(ns != windows.n_targets))
        raise ReferenceFailed(f"{backend}: n_scored disagrees with lengths - score_from in {bad} windows")
    return WindowScores(ll, ns, {"backend_extra": extra})


_TRITON_DEVICE: dict[str, str] = {}


def triton_device(cfg, python: str) -> str:
    """``triton.device`` (cpu | cuda), or for ``auto`` whether the Triton backend's interpreter sees
    CUDA (cuda) or not (cpu: the Triton interpreter).  Probed once per interpreter."""
    want = str((cfg.get("triton") or {}).get("device") or "auto")
    if want != "auto":
        return want
    if python not in _TRITON_DEVICE:
        r = subprocess.run([python, "-c", "import torch; print(torch.cuda.is_available())"], cwd=REPO,
                           capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        _TRITON_DEVICE[python] = "cuda" if r.returncode == 0 and r.stdout.strip().endswith("True") else "cpu"
    return _TRITON_DEVICE[python]


def backend_runs(cfg, backend: str, tag: str, device: str | None) -> bool:
    """The interpreted Triton backend runs only on ``triton.cpu_models`` (null: every model)."""
    if backend != "mamba_ssm_triton" or device != "cpu":
        return True
    only = (cfg.get("triton") or {}).get("cpu_models")
    return only is None or tag in list(only)


def run_golden(backend: str, python: str, model_dir: Path, prompts_json: Path, out: Path, n_new: int,
               extra: list[str] | None = None, regenerate: bool = False, expect: dict | None = None,
               timeout: float | None = None) -> Path:
    """Run ``python -m reference.golden`` in a subprocess (its own process, its own environment).

    A crash or a hang (``timeout`` seconds) raises with the tail of the reference's stderr."""
    if out.exists() and not regenerate and expect is not None:
        try:
            meta = json.loads(out.with_suffix(".json").read_text())
            if all(meta.get(k) == v for k, v in expect.items()):
                return out
        except (OSError, json.JSONDecodeError):
            pass
    if not Path(python).exists() and "/" in python:
        raise RuntimeError(f"backend {backend}: interpreter {python} not found (for mamba_ssm_ref_cpu run "
                           "`make install-ref`, which creates .venv-ref)")
    cmd = [python, "-m", "reference.golden", "--backend", backend, "--model", str(model_dir),
           "--prompts", str(prompts_json), "--out", str(out), "--n-new", str(n_new), *(extra or [])]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if "--threads" in (extra or []):  # also numpy's BLAS (the Triton interpreter's tl.dot) and OpenMP
        n = extra[extra.index("--threads") + 1]
        env.update({"OMP_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n, "MKL_NUM_THREADS": n})
    t0 = time.time()
    print(f"[parity] running {' '.join(cmd)}", flush=True)
    # stderr (progress, errors) is echoed live and its tail kept; stdout (the output path) is captured
    r = run_supervised(cmd, cwd=REPO, env=env, timeout=timeout)
    if r.timed_out or r.returncode != 0:
        why = f"timed out after {timeout} s and was killed" if r.timed_out else f"failed (exit {r.returncode})"
        tail = "\n".join(r.stderr_tail.strip().splitlines()[-15:])
        raise RuntimeError(f"reference backend {backend} {why}: {' '.join(cmd)}\n--- its stderr ended with:\n{tail}")
    # stamp the expectations so a later run can reuse the file
    meta = json.loads(out.with_suffix(".json").read_text())
    meta.update(expect or {})
    meta["wall_seconds_subprocess"] = round(time.time() - t0, 2)
    atomic_write_json(out.with_suffix(".json"), meta, indent=2)
    return out


def reference_python(py, backend: str) -> str:
    """The interpreter of a reference backend, from a config's ``{backend: interpreter}`` map (a
    single string applies to every backend; a missing or null entry → this interpreter).  A path
    relative to the checkout that does not exist raises :class:`ReferenceUnavailable`."""
    if isinstance(py, str):
        py = {backend: py}
    p = (py or {}).get(backend)
    if not p:
        return sys.executable
    path = repo_path(p)
    if not path.exists():
        raise ReferenceUnavailable(
            f"interpreter {path} for reference backend {backend!r} does not exist (for mamba_ssm_ref_cpu: "
            f"`make install-ref` creates .venv-ref with mamba_ssm); set reference.python.{backend}=null to use "
            f"this interpreter")
    return str(path)
