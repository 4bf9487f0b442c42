import os
from pathlib import Path

import jax
import pytest

# Parity mode for every test: float32 with full-precision matmuls.
jax.config.update("jax_default_matmul_precision", "highest")

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("MAMBA2_JAX_DATA", REPO.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA_DIR.is_dir():
        pytest.skip(f"shared data not found at {DATA_DIR} (set MAMBA2_JAX_DATA)")
    return DATA_DIR


@pytest.fixture(autouse=True)
def _offline_hub(monkeypatch):
    # Tests never touch the network.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


# Hypothesis profiles (ci / fuzz) and the robustness counts of `make fuzz` (tests/robustness.py).
from robustness import pytest_runtest_logreport, pytest_sessionfinish  # noqa: E402, F401
