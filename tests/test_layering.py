"""The core's import graph (issue 21): one chain with no cycle, in the documented order, and the
structure policy chosen for the target platform rather than the host."""

import ast
from pathlib import Path

import numpy as np
import pytest

from mamba2_jax.config import get_preset
from mamba2_jax.loading import model_from_state_dict, structure_policy
from mamba2_jax.params import init_state_dict

CORE = Path(__file__).resolve().parents[1] / "mamba2_jax"
# docs/design.md: each module may import only modules of an earlier rank
RANK = {"params": 0, "config": 1, "fileio": 1, "paths": 1, "hub": 1, "gpu_targets": 1, "ops": 2, "ssd": 2, "cache": 2,
        "sharding": 3, "model": 4, "checkpoint": 4, "loading": 5, "generate": 6, "tokenizer": 6, "compile": 7,
        "cli": 8}


def _imports(path: Path) -> set[str]:
    """Sibling core modules imported anywhere in ``path`` (deferred imports included), except under
    ``if TYPE_CHECKING``."""
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and id(node) not in typing_only:
            out.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
    return out


def test_core_imports_follow_the_documented_order():
    mods = sorted(p.stem for p in CORE.glob("*.py") if p.stem != "__init__")
    assert set(mods) <= set(RANK), f"a new core module needs a rank: {sorted(set(mods) - set(RANK))}"
    bad = [f"{m} imports {d}" for m in mods for d in sorted(_imports(CORE / f"{m}.py"))
           if d in RANK and d != m and RANK[d] >= RANK[m]]
    assert not bad, bad


def test_checkpoint_does_not_import_jax():
    src = (CORE / "checkpoint.py").read_text()
    tree = ast.parse(src)
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree)
              if isinstance(n, ast.ImportFrom) and n.module and not n.level}
    assert not names & {"jax", "jaxlib", "flax"}, names


@pytest.mark.parametrize("platform,chunk,block", [("cpu", 64, 512), ("tpu", 256, None), ("cuda", 256, None)])
def test_structure_policy_is_the_target_platforms(platform, chunk, block):
    """The 130m config (chunk_size 256): CPU runs chunk min(256, 64) with prefill blocks of 512;
    TPU and GPU run the checkpoint's chunk in one pass, whatever the host is."""
    cfg = get_preset("mamba2-130m")
    assert cfg.chunk_size == 256
    pol = structure_policy(cfg, platform)
    assert (pol["scan_chunk_size"], pol["prefill_block"], pol["prefill_layers"]) == (chunk, block, "unrolled")


def test_model_built_for_another_platform_carries_its_policy():
    """A model built on this CPU host for "tpu" gets the TPU structure (and records it); its outputs
    agree with the CPU-structured model to fp32 rounding (the structure is not the math)."""
    cfg = get_preset("tiny").replace(chunk_size=128)
    sd = init_state_dict(cfg, seed=1)
    cpu = model_from_state_dict(cfg, sd, platform="cpu")
    tpu = model_from_state_dict(cfg, sd, platform="tpu")
    assert (cpu.scan_chunk_size, cpu.prefill_block) == (64, 512)
    assert (tpu.scan_chunk_size, tpu.prefill_block) == (128, None)
    assert tpu.policy["platform"] == "tpu" and tpu.policy["scan_chunk_size"] == 128
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (1, 200))
    a, _ = cpu(ids)  # each model's prefill as one compiled program (op by op, every primitive compiles alone)
    b, _ = tpu(ids)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-4)


def test_unknown_platform_is_an_error():
    with pytest.raises(ValueError, match="unknown platform"):
        structure_policy(get_preset("tiny"), "quantum")
