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



# ------------------------------------------------------------------------------ parallel runs (pytest-xdist)
# `make test` / `make test-fast` run `pytest -n 2 --dist loadscope --no-loadscope-reorder`, scheduled here
# (pytest_xdist_make_scheduler).  Each test module is one work unit, run in its file order by one worker,
# so module fixtures, the functools caches of tests/helpers.py and JAX's per-shape op caches are built
# once, as in a serial run.  Exceptions: test_parity.py and test_reference_backends.py share one unit
# (both read the tiny parity run of tests/helpers.py), test_oracle.py is split by chunk size (its
# cases share nothing across chunk sizes), and test_sharding.py's two-process test is a unit of its own.
# Units are handed out heaviest first (measured with
# `--durations`), so that the last ones to finish are short.  (xdist's own `loadgroup` cannot be used:
# it renames node ids, which pytest 9 no longer allows.)  Without xdist none of this has any effect.
_SHARED_UNIT = {"test_reference_backends.py": "test_parity.py"}
# test_sharding.py: its two-process test (~35 s, two subprocesses of its own) shares nothing with the
# 8-device worker of the module fixture (~160 s), so another worker can run it meanwhile
_OWN_UNIT = {"test_sharding.py::test_two_processes_match_one_process": "test_sharding.py-processes"}
_HEAVY_FIRST = ("test_sharding.py", "test_serve_http.py", "test_generate.py", "test_serve_engine.py", "test_ssd.py",
                "test_oracle.py-chunk8", "test_oracle.py-chunk64", "test_oracle.py-chunk16", "test_train.py",
                "test_parity.py", "test_serve_bench.py", "test_experiments_throughput.py", "test_compile.py",
                "test_sharding.py-processes", "test_robust_generate.py",
                "test_perplexity.py", "test_llama_cpp.py", "test_cli.py", "test_train_checkpoint.py",
                "test_reference_triton.py", "test_robust_faults.py", "test_robust_numerics.py", "test_layering.py")


def _work_unit(nodeid: str) -> str:
    module = nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
    own = _OWN_UNIT.get(module + "::" + nodeid.partition("::")[2])
    if own:
        return own
    if module == "test_oracle.py":
        params = nodeid.partition("[")[2]
        chunk = params.split("-", 1)[0] if nodeid.split("::")[1].startswith("test_prefill_") else "8"
        return f"{module}-chunk{chunk}"  # test_final_state / test_step run chunk 8
    return _SHARED_UNIT.get(module, module)


def pytest_collection_modifyitems(config, items):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        rank = {u: i for i, u in enumerate(_HEAVY_FIRST)}
        items.sort(key=lambda it: rank.get(_work_unit(it.nodeid), len(rank)))  # stable: file order within a unit


def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleUnits(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _work_unit(nodeid)

    return ModuleUnits(config, log)


# Hypothesis profiles (ci / fuzz) and the robustness counts of `make fuzz` (tests/robustness.py).
from robustness import pytest_runtest_logreport, pytest_sessionfinish  # noqa: E402, F401
