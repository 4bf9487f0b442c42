"""Shared, cached set-up for tests/test_reference_backends.py and tests/test_parity.py: one small
parity run (tiny ngroups=2 model, both CPU references) whose golden files both test files use."""

from __future__ import annotations

import functools
import importlib.util
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
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


# ------------------------------------------------------------------------------ small checkpoints and fakes
def tiny_mlp_state_dict(seed: int, rng: np.random.Generator, padded_rows_scale: float | None = None):
    """(cfg, state dict) of preset tiny-mlp (gated-MLP side branch, ngroups=2) with D and the norms
    moved away from 1, so that bugs in them show.  ``padded_rows_scale`` makes the padded
    vocabulary rows large, so that greedy over the padded vocabulary would pick a padding id."""
    from mamba2_jax.config import get_preset
    from mamba2_jax.params import init_state_dict

    cfg = get_preset("tiny-mlp")
    sd = init_state_dict(cfg, seed=seed)
    for k in sd:
        if k.endswith("mixer.D") or k.endswith("norm.weight"):
            sd[k] = (1.0 + 0.5 * rng.standard_normal(sd[k].shape)).astype(np.float32)
    emb = sd["backbone.embedding.weight"]
    if padded_rows_scale is not None:
        emb[cfg.vocab_size:] = padded_rows_scale * rng.standard_normal(emb[cfg.vocab_size:].shape)
    sd["lm_head.weight"] = emb
    return cfg, sd


def fake_reference_package(root: Path, name: str, source: str, monkeypatch) -> Path:
    """A package ``<name>`` with ``score.py`` = ``source`` on the PYTHONPATH of child processes
    (stands in for ``reference.score`` in the subprocess contract tests); returns a model dir."""
    pkg = root / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "score.py").write_text(source)
    monkeypatch.setenv("PYTHONPATH", str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    model_dir = root / "model"
    model_dir.mkdir()
    return model_dir


def check_golden_prefill(g: dict, oracle, tol: float):
    """One prompt of a golden file against the float64 oracle: hidden states and the stored logits
    within ``tol`` (max-relative).  Returns the oracle's last-position logits (V,) and its state after
    the prompt, for checking the greedy steps."""
    from mamba2_jax.eval.oracle import rel_err

    logits, hidden, state = oracle.run(g["input_ids"][None])
    assert rel_err(g["hidden"], hidden[:, 0]) < tol
    assert rel_err(g["logits"], logits[0][g["logits_pos"]]) < tol
    return logits[0, -1], state
