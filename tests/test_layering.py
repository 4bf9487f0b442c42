"""The core's import graph (issue 21): one chain with no cycle, in the documented order, nothing
from the evaluation package (issue 29), JAX deferred at the JAX-free boundary, and the structure
policy chosen for the target platform rather than the host."""

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mamba2_jax.config import get_preset
from mamba2_jax.loading import model_from_state_dict, structure_policy
from mamba2_jax.params import init_state_dict

CORE = Path(__file__).resolve().parents[1] / "mamba2_jax"
# docs/design.md: each module may import only modules of an earlier rank
RANK = {"params": 0, "config": 1, "fileio": 1, "paths": 1, "hub": 1, "gpu_targets": 1, "hardware": 1, "ops": 2,
        "ssd": 2, "cache": 2, "sharding": 3, "model": 4, "checkpoint": 4, "loading": 5, "generate": 6, "tokenizer": 6,
        "compile": 7, "train": 7, "cli": 8}
# the core: the package's own modules and the server (mamba2_jax/eval/ builds on it, never the reverse)
CORE_FILES = sorted([*CORE.glob("*.py"), *(CORE / "serve").glob("*.py")])


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


def _absolute_imports(path: Path, text: str | None = None) -> set[str]:
    """Every module ``path`` imports, anywhere (deferred and ``TYPE_CHECKING`` imports included), as an
    absolute dotted name: relative imports resolved against the file's package, ``from P import n``
    giving both ``P`` and ``P.n`` (n may be a submodule)."""
    package = ".".join(path.relative_to(CORE.parent).with_suffix("").parts[:-1])
    out = set()
    for node in ast.walk(ast.parse(path.read_text() if text is None else text)):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
        elif (isinstance(node, ast.Call) and ast.unparse(node.func).endswith("import_module") and node.args
              and isinstance(node.args[0], ast.Constant)):
            out.add(str(node.args[0].value))
    return out


def test_absolute_imports_resolve_relative_ones():
    """The resolver the next test relies on, deferred imports included: ``..eval`` from serve/ and
    ``.eval`` from the package name mamba2_jax.eval; ``.eval`` from serve/ is mamba2_jax.serve.eval."""
    src = ("from ..eval.data import x\nimport mamba2_jax.eval.bench\ndef f():\n    from .eval import y\n"
           "    from . import eval\n    importlib.import_module('mamba2_jax.eval.oracle')\n")
    serve = _absolute_imports(CORE / "serve" / "m.py", src)
    assert {"mamba2_jax.eval.data", "mamba2_jax.eval.bench", "mamba2_jax.serve.eval", "mamba2_jax.serve.eval.y",
            "mamba2_jax.eval.oracle"} <= serve
    assert "mamba2_jax.eval.y" not in serve
    core = _absolute_imports(CORE / "m.py", src)
    assert {"mamba2_jax.eval", "mamba2_jax.eval.y"} <= core
    assert "mamba2_jax.hardware" in _absolute_imports(CORE / "compile.py")


def test_core_imports_nothing_from_eval():
    """No core module (mamba2_jax/*.py, mamba2_jax/serve/*.py) imports the evaluation package, not
    even in a function body: device profiles are ``hardware``, training is ``train`` (issue 29)."""
    assert len(CORE_FILES) > len(RANK)  # serve/ included
    bad = {str(p.relative_to(CORE.parent)): sorted(m for m in _absolute_imports(p)
                                                   if m == "mamba2_jax.eval" or m.startswith("mamba2_jax.eval."))
           for p in CORE_FILES}
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, bad


def test_cli_import_and_jax_free_commands_do_not_import_jax(tmp_path):
    """The JAX-free boundary (docs/design.md): importing the command line, ``--help``, and the
    checkpoint commands (init-random, info, convert) leave jax, jaxlib and flax unimported."""
    code = (
        "import sys, contextlib, io\n"
        "import mamba2_jax.cli as cli\n"
        "heavy = lambda: sorted(m for m in ('jax', 'jaxlib', 'flax', 'optax') if m in sys.modules)\n"
        "assert not heavy(), ('import', heavy())\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    cli.main(['--help'])\n"
        "assert not heavy(), ('--help', heavy())\n"
        "d = sys.argv[1]\n"
        "for argv in (['init-random', '--config', 'tiny', '--out', d + '/a'], ['info', d + '/a'],\n"
        "             ['convert', d + '/a', d + '/b', '--format', 'hf'], ['info', d + '/missing']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
        "        rc = cli.main(argv)\n"
        "    assert rc == (2 if 'missing' in argv[-1] else 0), (argv, rc)\n"
        "    assert not heavy(), (argv, heavy())\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=CORE.parent, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]


def test_checkpoint_does_not_import_jax():
    src = (CORE / "checkpoint.py").read_text()
    tree = ast.parse(src)
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree)
              if isinstance(n, ast.ImportFrom) and n.module and not n.level}
    assert not names & {"jax", "jaxlib", "flax"}, names


@pytest.mark.parametrize("platform,chunk,block,layers,chunks", [("cpu", 64, 512, "unrolled", "parallel"),
                                                                 ("tpu", 256, None, "scan", "scan"),
                                                                 ("cuda", 256, None, "scan", "scan")])
def test_structure_policy_is_the_target_platforms(platform, chunk, block, layers, chunks):
    """The 130m config (chunk_size 256): CPU runs chunk min(256, 64) with prefill blocks of 512,
    unrolled layers and all SSD chunks at once; TPU and GPU run the checkpoint's chunk in one pass,
    scanning the layers and the SSD chunks, whatever the host is."""
    cfg = get_preset("mamba2-130m")
    assert cfg.chunk_size == 256
    pol = structure_policy(cfg, platform)
    assert (pol.scan_chunk_size, pol.prefill_block, pol.prefill_layers, pol.ssd_chunks) == (
        chunk, block, layers, chunks)


def test_policies_are_frozen_and_hashable_and_record_the_same_dict(tmp_path):
    """``structure_policy`` and ``model.policy`` / ``model.source`` are frozen dataclasses: a loaded
    model's graph definition hashes (``program_key`` keys on it, no text fallback), and the records
    results keep (``as_dict``) have the keys and values the policy dicts had: the precision policy,
    then the structure (the model's own values), "mesh" only with a mesh."""
    import dataclasses

    from flax import nnx

    from mamba2_jax.generate import program_key
    from mamba2_jax.loading import load_pretrained, precision_policy, save_pretrained

    cfg = get_preset("tiny")
    pol = structure_policy(cfg, "cpu")
    with pytest.raises(dataclasses.FrozenInstanceError):
        pol.scan_chunk_size = 8
    assert pol.as_dict() == {"platform": "cpu", "scan_chunk_size": 16, "prefill_block": 512,
                             "prefill_layers": "unrolled", "ssd_chunks": "parallel", "param_layout": "layers",
                             "step_block_bytes": 2 << 20}
    save_pretrained(model_from_state_dict(cfg, init_state_dict(cfg, seed=0)), tmp_path / "m")
    m = load_pretrained(tmp_path / "m", state_dtype="bfloat16", prefill_block=8)
    assert m.source["format"] == "state-spaces" and m.source.stored_dtype == "float32"
    graphdef, _ = nnx.split(m)
    assert program_key(graphdef) is graphdef and hash(graphdef) == hash(nnx.split(m)[0])
    rec = m.policy.as_dict()
    assert list(rec) == ["mode", "param_dtype", "state_dtype", "accum_dtype", "matmul_precision", "platform",
                         "scan_chunk_size", "prefill_layers", "ssd_chunks", "prefill_block", "step_block_bytes",
                         "param_layout"]
    assert rec == {**precision_policy("float32", "bfloat16"), "platform": "cpu", "scan_chunk_size": 16,
                   "prefill_layers": "unrolled", "ssd_chunks": "parallel", "prefill_block": 8,
                   "step_block_bytes": 2 << 20, "param_layout": "layers"}
    assert rec["mode"] == "fast" and m.policy["state_dtype"] == "bfloat16" and dict(m.policy) == rec


def test_model_built_for_another_platform_carries_its_policy():
    """A model built on this CPU host for "tpu" gets the TPU structure (and records it); its outputs
    agree with the CPU-structured model to fp32 rounding (the structure is not the math)."""
    cfg = get_preset("tiny").replace(chunk_size=128)
    sd = init_state_dict(cfg, seed=1)
    cpu = model_from_state_dict(cfg, sd, platform="cpu")
    tpu = model_from_state_dict(cfg, sd, platform="tpu")
    assert (cpu.scan_chunk_size, cpu.prefill_block) == (64, 512)
    assert (tpu.scan_chunk_size, tpu.prefill_block) == (128, None)
    assert tpu.policy.platform == "tpu" and tpu.policy.scan_chunk_size == 128
    assert (cpu.backbone.scan_layers, cpu.ssd_chunk_loop) == (False, False)
    assert (tpu.backbone.scan_layers, tpu.ssd_chunk_loop) == (True, True)
    assert (tpu.policy.prefill_layers, tpu.policy.ssd_chunks) == ("scan", "scan")
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (1, 200))
    a, _ = cpu(ids)  # each model's prefill as one compiled program (op by op, every primitive compiles alone)
    b, _ = tpu(ids)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-4)


def test_stacked_parameter_layout_round_trips():
    """The TPU/GPU policy stores each layer parameter as one (n_layer, ...) array: the abstract shapes
    (``sharding._param_shapes``) are the loaded ones, the state dict round-trips bit for bit, and the
    decode step (static slices of the stacked arrays) agrees with the per-layer CPU model."""
    import jax
    import jax.numpy as jnp

    from mamba2_jax.loading import jax_params_from_state_dict, state_dict_from_model
    from mamba2_jax.sharding import _param_shapes

    cfg = get_preset("tiny").replace(chunk_size=32)
    sd = init_state_dict(cfg, seed=3)
    params = jax_params_from_state_dict(cfg, sd, stacked=True)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), params) == jax.tree.map(
        lambda a: (a.shape, a.dtype), _param_shapes(cfg, "float32", stacked=True))
    cpu = model_from_state_dict(cfg, sd, platform="cpu")
    tpu = model_from_state_dict(cfg, sd, platform="tpu")
    assert cpu.policy["param_layout"] == "layers" and tpu.policy["param_layout"] == "stacked"
    assert tpu.backbone.stacked and tpu.backbone.layers is None and not cpu.backbone.stacked
    assert tpu.backbone.stack.mixer.in_proj[...].shape[0] == cfg.n_layer
    back = state_dict_from_model(tpu)
    assert set(back) == set(sd) and all(np.array_equal(np.asarray(sd[k]), back[k]) for k in sd)
    ids = np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 40))
    (a, ca), (b, cb) = cpu(ids), tpu(ids)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-4)
    tok = jnp.asarray([3, 5])
    step = jax.jit(lambda m, t, c: m.step(t, c))
    (la, _), (lb, _) = step(cpu, tok, ca), step(tpu, tok, cb)
    np.testing.assert_allclose(np.asarray(la), np.asarray(lb), rtol=2e-4, atol=2e-4)


def test_unknown_platform_is_an_error():
    with pytest.raises(ValueError, match="unknown platform"):
        structure_policy(get_preset("tiny"), "quantum")
