"""Chunked JAX prefill and recurrent step vs an independent float64 sequential oracle.

The model runs as compiled programs (``jax.jit`` over the ``nnx.split`` state, the programs users
run), not op by op.  The programs are built once per config (the structure: variant, chunk size) with
the parameters and the cache as inputs, so every case with the same config and shapes reuses them.
The zero-state prefill passes an explicit zero cache (``model.init_cache``, exactly what ``prefill``
builds for ``cache=None``) so that it shares its programs with the init-state case; ``cache=None``
itself is run by ``test_final_state_matches_oracle`` and ``test_step_matches_oracle``.
"""

import jax
import numpy as np
import pytest
from flax import nnx

from mamba2_jax.eval.oracle import CHUNKS, VARIANTS, jax_cache_from_oracle, oracle_run, rel_err
from mamba2_jax.generate import program_key
from mamba2_jax.loading import model_from_state_dict

TOL = 1e-5

_PROGRAMS: dict = {}


def _model(cfg, sd):
    """The float32 model of ``sd``, its parameters (``nnx.split`` state) and the compiled programs
    for its structure, built once per structure (:func:`~mamba2_jax.generate.program_key`): (model,
    params, prefill with hidden states, prefill, step with hidden states).  The parameters are program
    inputs, so models of one structure share programs, and only they."""
    model = model_from_state_dict(cfg, sd, dtype="float32")
    graphdef, params = nnx.split(model)
    key = program_key(graphdef)
    if key not in _PROGRAMS:
        _PROGRAMS[key] = (
            jax.jit(lambda st, ids, c: nnx.merge(graphdef, st).prefill(ids, c, collect_hidden=True)),
            jax.jit(lambda st, ids: nnx.merge(graphdef, st).prefill(ids)),
            jax.jit(lambda st, t, c: nnx.merge(graphdef, st).step(t, c, collect_hidden=True)),
        )
    return (model, params, *_PROGRAMS[key])


@pytest.mark.parametrize("with_init", [False, True], ids=["zero-state", "init-state"])
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("chunk", CHUNKS)
def test_prefill_matches_oracle(variant, chunk, with_init):
    cfg0, sd, orc, ids, state, ref_logits, ref_hidden = oracle_run(variant, with_init)
    cfg = cfg0.replace(chunk_size=chunk)
    model, params, prefill_hidden, _, _ = _model(cfg, sd)
    for L in sorted({1, chunk - 1, chunk, chunk + 1, 3 * chunk + 5}):
        cache = jax_cache_from_oracle(cfg, state) if with_init else model.init_cache(ids.shape[0])
        logits, new_cache, hidden = prefill_hidden(params, ids[:, :L], cache)
        hidden = np.asarray(hidden)  # (host) indexing below, not one eager slicing program per shape
        e_log = rel_err(logits, ref_logits[:, :L])
        e_hid = max(rel_err(hidden[i], ref_hidden[i, :, :L]) for i in range(cfg.n_layer))
        assert e_log <= TOL, (L, e_log)
        assert e_hid <= TOL, (L, e_hid)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_final_state_matches_oracle(variant):
    cfg, sd, orc, ids, _, _, _ = oracle_run(variant, False)
    L = 2 * cfg.chunk_size + 3
    _, _, (o_conv, o_ssm) = orc.run(ids[:, :L])
    _, params, _, prefill, _ = _model(cfg, sd)
    _, cache = prefill(params, ids[:, :L])  # cache=None
    for i in range(cfg.n_layer):
        assert rel_err(cache.ssm[i], o_ssm[i]) <= TOL
        assert rel_err(cache.conv[i], o_conv[i][:, :, 1:].transpose(0, 2, 1)) <= TOL


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_step_matches_oracle(variant):
    """prefill(L) then k recurrent steps == oracle at positions L..L+k-1."""
    cfg, sd, orc, ids, _, ref_logits, ref_hidden = oracle_run(variant, False)
    _, params, _, prefill, step_hidden = _model(cfg, sd)
    L, k = 11, 9
    _, cache = prefill(params, ids[:, :L])  # cache=None
    for t in range(L, L + k):
        logits, cache, hidden = step_hidden(params, ids[:, t], cache)
        hidden = np.asarray(hidden)
        assert rel_err(logits, ref_logits[:, t]) <= TOL
        assert max(rel_err(hidden[i], ref_hidden[i, :, t]) for i in range(cfg.n_layer)) <= TOL


_DEFAULT_LEVEL_CHECK = """
import sys, numpy as np, jax
from mamba2_jax.eval.oracle import VARIANTS, oracle_run, rel_err
from mamba2_jax.loading import model_from_state_dict
worst = 0.0
for variant in VARIANTS:
    cfg, sd, orc, ids, _, ref_logits, _ = oracle_run(variant, False)
    m = model_from_state_dict(cfg, sd, dtype="float32")
    L = 2 * cfg.chunk_size + 3
    logits, cache = jax.jit(lambda i: m.prefill(i))(ids[:, :L])
    worst = max(worst, rel_err(logits, ref_logits[:, :L]))
    step = jax.jit(lambda t, c: m.step(t, c))
    for t in range(L, L + 4):
        logits, cache = step(ids[:, t], cache)
        worst = max(worst, rel_err(logits, ref_logits[:, t]))
print(worst)
"""


@pytest.mark.integration
def test_default_backend_level_matches_oracle():
    """``make test`` compiles with XLA:CPU's LLVM backend passes off (``TEST_XLA_FLAGS`` in the
    Makefile: the same optimised HLO, half the compile time).  The machine code users run comes from
    the default level: in a process at that level, the prefill and the step of every oracle variant
    match the float64 oracle at TOL."""
    import os
    import re
    import subprocess
    import sys

    env = dict(os.environ)
    flags = re.sub(r"--xla_backend_optimization_level=\d+", "", env.get("XLA_FLAGS", "")).strip()
    env["XLA_FLAGS"] = flags
    if not flags:
        env.pop("XLA_FLAGS")
    r = subprocess.run([sys.executable, "-c", _DEFAULT_LEVEL_CHECK], env=env, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    worst = float(r.stdout.strip().splitlines()[-1])
    assert worst <= TOL, worst
