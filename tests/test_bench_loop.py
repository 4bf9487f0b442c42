"""The benchmarked code paths are the ones users run (issue 20, item 4).

* ``model(ids)`` called eagerly runs one cached ``jax.jit`` of the split graph: the same logits and
  cache as ``nnx.jit`` / ``jax.jit`` around the model and as the float64 oracle, compiled once.
* provenance records the command line and, under Hydra, every override.
"""

from __future__ import annotations

import sys

import jax
import numpy as np
from flax import nnx

from mamba2_jax.config import get_preset
from mamba2_jax.eval.oracle import OracleModel, rel_err
from mamba2_jax.loading import model_from_state_dict
from mamba2_jax.params import init_state_dict


def _tiny():
    cfg = get_preset("tiny")
    sd = init_state_dict(cfg, seed=3)
    return cfg, sd, model_from_state_dict(cfg, sd, dtype="float32")


def test_model_call_eager_compiled_and_equal():
    cfg, sd, model = _tiny()
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 21)).astype(np.int32)
    eager_logits, eager_cache = model(ids)
    g, st = nnx.split(model)
    jit_logits, jit_cache = jax.jit(lambda s, x: nnx.merge(g, s)(x))(st, ids)
    nnx_logits, _ = nnx.jit(lambda m, x: m(x))(model, ids)
    # the same program: bit-identical to the jax.jit / nnx.jit paths
    assert np.array_equal(np.asarray(eager_logits), np.asarray(jit_logits))
    assert np.array_equal(np.asarray(eager_logits), np.asarray(nnx_logits))
    for a, c in zip(jax.tree.leaves(eager_cache), jax.tree.leaves(jit_cache)):
        assert np.array_equal(np.asarray(a), np.asarray(c))
    # and right: the float64 oracle
    ref, _, _ = OracleModel(cfg, sd).run(ids)
    assert rel_err(eager_logits, ref) < 1e-5
    # compiled once per shape: a second call reuses the cached program (no retrace)
    from mamba2_jax.model import _CALL_JIT

    fn = _CALL_JIT[model][1]
    size = fn._cache_size()
    model(ids)
    assert fn._cache_size() == size
    # with a cache: continuing from the state equals one pass over the concatenation
    more = np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 7)).astype(np.int32)
    cont, _ = model(more, eager_cache)
    full, _ = model(np.concatenate([ids, more], 1))
    assert rel_err(cont, np.asarray(full)[:, 21:]) < 1e-5


def test_provenance_records_command_line_and_hydra_overrides(monkeypatch):
    from hydra import compose, initialize_config_module
    from hydra.core.hydra_config import HydraConfig

    from mamba2_jax.eval.provenance import provenance

    monkeypatch.setattr(sys, "argv", ["experiments/peers.py", "profile=tiny", "peers.rounds=2"])
    assert provenance()["command_line"]["argv"] == ["experiments/peers.py", "profile=tiny", "peers.rounds=2"]
    with initialize_config_module(config_module="mamba2_jax.eval.conf", version_base="1.3"):
        cfg = compose("peers", overrides=["profile=tiny", "peers.rounds=2"], return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        try:
            over = provenance()["hydra_overrides"]
        finally:
            HydraConfig.instance().cfg = None
    assert over == ["profile=tiny", "peers.rounds=2"]
