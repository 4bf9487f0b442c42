"""Regression guard on the compiled decode step: it counts ops, it does not time them.

Decode is memory-bound and, on XLA:CPU, every top-level op of the compiled step costs a dispatch,
so the number of ops per layer, copies of weights and custom fusions are what can silently regress
(e.g. a reduction that becomes a YNNPACK custom fusion, or a stacked parameter that XLA copies
out per layer).  The step is compiled as the generation loop uses it (cache donated) for the
130m width at two depths; the difference gives the ops per layer.
"""

import re
from collections import Counter

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from mamba2_jax.checkpoint import init_state_dict
from mamba2_jax.config import get_preset
from mamba2_jax.loading import model_from_state_dict

# Measured with jax 0.10.2 on XLA:CPU after issue 12: 21 ops per layer (3 dots, 17 loop fusions and
# one small copy: the shifted conv window).  Before: 22 ops, one of them a YNNPACK custom fusion
# (slower than the dot that replaced it) and one a copy of the whole SSM state.
MAX_OPS_PER_LAYER = 22
_FREE = {"parameter", "get-tuple-element", "tuple", "bitcast", "constant"}


def _entry_ops(hlo: str) -> list[tuple[str, str, str]]:
    """(opcode, result shape, line) of every instruction of the ENTRY computation."""
    entry = re.search(r"\nENTRY [^\n]*\{\n(.*?)\n\}", hlo, re.S).group(1)
    out = []
    for line in entry.splitlines():
        m = re.match(r"\s*(?:ROOT )?%\S+ = (\S+(?: \S+)*?) ([a-z][\w-]*)\(", line)
        if m:
            out.append((m.group(2), m.group(1), line))
    return out


def _compiled_step(n_layer: int):
    cfg = get_preset("mamba2-130m").replace(n_layer=n_layer, vocab_size=256)
    model = model_from_state_dict(cfg, init_state_dict(cfg, seed=0))
    graphdef, state = nnx.split(model)
    step = jax.jit(lambda st, c, t: nnx.merge(graphdef, st).step(t, c), donate_argnums=(1,))
    cache = model.init_cache(1)
    comp = step.lower(state, cache, jnp.zeros((1,), jnp.int32)).compile()
    weights = {tuple(x.shape) for x in jax.tree.leaves(state) if x.ndim == 2}
    return _entry_ops(comp.as_text()), weights


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="op budget measured for XLA:CPU")
def test_decode_step_ops_per_layer_and_no_weight_copies():
    (ops2, weights), (ops4, _) = _compiled_step(2), _compiled_step(4)
    real2 = Counter(op for op, _, _ in ops2 if op not in _FREE)
    real4 = Counter(op for op, _, _ in ops4 if op not in _FREE)
    per_layer = (sum(real4.values()) - sum(real2.values())) / 2
    assert per_layer == int(per_layer)
    assert 0 < per_layer <= MAX_OPS_PER_LAYER, (per_layer, real4)
    # two GEMVs per layer (in_proj, out_proj) + the SSM read-out; the LM head once
    assert (real4["dot"] - real2["dot"]) / 2 == 3, real4
    # no custom (library) fusions, and nothing weight-shaped is copied
    customs = [ln for op, _, ln in ops4 if op == "custom-call" or "kind=kCustom" in ln]
    assert not customs, customs
    copied = [shape for op, shape, _ in ops4 if op == "copy"]
    # the SSM state is updated in place: the only copy per layer is the (small) shifted conv window
    assert (len(copied) - sum(op == "copy" for op, _, _ in ops2)) / 2 <= 1, copied
    for shape in copied:
        dims = tuple(int(d) for d in re.findall(r"\d+", shape.split("{")[0].split("[", 1)[1]))
        assert dims not in weights, f"a weight of shape {dims} is copied in the decode step"
