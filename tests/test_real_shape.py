"""Real-shape checks (mamba2-130m width and depth, random weights).  Marked slow: `make test-slow`."""

import jax.numpy as jnp
import numpy as np
import pytest

from mamba2_jax.config import get_preset
from mamba2_jax.eval.oracle import OracleModel, perturbed_sd, rel_err
from mamba2_jax.loading import model_from_state_dict

pytestmark = pytest.mark.slow


def test_130m_prefill_and_step_match_float64_oracle():
    cfg = get_preset("mamba2-130m").replace(chunk_size=8)  # 3 chunks + tail for a 29-token prompt
    sd = perturbed_sd(cfg, seed=0)
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (1, 32))
    ref_logits, ref_hidden, _ = OracleModel(cfg, sd).run(ids)
    model = model_from_state_dict(cfg, sd)
    logits, cache, hidden = model.prefill(jnp.asarray(ids[:, :29]), collect_hidden=True)
    assert rel_err(logits, ref_logits[:, :29]) <= 1e-5
    assert max(rel_err(hidden[i], ref_hidden[i, :, :29]) for i in range(cfg.n_layer)) <= 1e-5
    for t in range(29, 32):
        lg, cache = model.step(jnp.asarray(ids[:, t]), cache)
        assert rel_err(lg, ref_logits[:, t]) <= 1e-5
