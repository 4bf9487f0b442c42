"""Shared, cached set-up for tests/test_reference_backends.py and tests/test_parity.py: one small
parity run (tiny ngroups=2 model, both CPU references) whose golden files both test files use."""

from __future__ import annotations

import functools
import importlib.util
import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from mamba2_jax.paths import CONF_DIR

REPO = Path(__file__).resolve().parents[1]
REF_PY = Path(os.environ.get("MAMBA2_JAX_REF_PYTHON", REPO / ".venv-ref" / "bin" / "python"))
TINY_SPEC = ("{name: tiny-g2-v50k, preset: tiny-g2, init: random, seed: 3, stored_dtype: float16, perturb: true, "
             "overrides: {vocab_size: 50277, chunk_size: 8}}")
N_PROMPTS = 4   # 5, 12, 18, 24 tokens: up to 3 chunks of 8
N_NEW = 10


@functools.cache
def ref_python_or_reason() -> tuple[str | None, str]:
    if not REF_PY.exists():
        return None, (f"mamba_ssm reference venv not found at {REF_PY}: run `make install-ref` "
                      "(or set MAMBA2_JAX_REF_PYTHON)")
    r = subprocess.run([str(REF_PY), "-c", "import torch, mamba_ssm.ops.triton.ssd_chunk_scan"], cwd=REPO,
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if r.returncode and "selective_scan_cuda" not in r.stderr:
        return None, f"mamba_ssm/torch not importable with {REF_PY}: {r.stderr.strip().splitlines()[-1:]}"
    return str(REF_PY), ""


def ref_python() -> str:
    py, why = ref_python_or_reason()
    if py is None:
        pytest.skip(why)
    return py


def require_torch():
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed: the reference runners need it")


def compose(overrides: list[str]):
    from hydra import compose as hcompose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return hcompose("parity", overrides=overrides)


def load_parity_module():
    from mamba2_jax.eval import parity

    return parity


@functools.cache
def _tiny_parity_run(ref_py: str):
    parity = load_parity_module()
    root = Path(tempfile.mkdtemp(prefix="parity-test-"))
    base = [f"models=[{TINY_SPEC}]", "optional_models=[]", f"max_prompts={N_PROMPTS}", f"n_new={N_NEW}",
            f"paths.work_dir={root / 'work'}", f"paths.results_dir={root / 'results'}", "label=test",
            f"python.mamba_ssm_ref_cpu={ref_py}"]
    res = parity.run_parity(compose(base))
    return {"root": root, "base_overrides": base, "result": res, "parity": parity,
            "model_dir": root / "work" / "checkpoints" / "tiny-g2-v50k",
            "golden": {b: root / "work" / "golden" / "tiny-g2-v50k" / f"{b}.npz"
                       for b in ("mamba_ssm_ref_cpu", "transformers")}}


def tiny_parity_run():
    require_torch()
    return _tiny_parity_run(ref_python())
