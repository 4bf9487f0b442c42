"""Regression guard on the compiled decode step: it counts ops, it does not time them.

Decode is memory-bound and, on XLA:CPU, every top-level op of the compiled step costs a dispatch,
so the number of ops per layer, copies of weights and custom fusions are what can silently regress
(e.g. a reduction that becomes a YNNPACK custom fusion, or a stacked parameter that XLA copies
out per layer).  The step is compiled as the generation loop uses it (cache donated) for the
130m width at two depths; the difference gives the ops per layer.

The passes over the cache are counted too (``state_traffic``): how many ops of the compiled step
read the SSM state as it came in (from memory), write it, copy it, or read again an array of
state values produced in the step (the update's output, whole or a block of it), and how big
that array is.  The step reads and writes the SSM state once per layer, in blocks whose
read-out re-read stays in cache (``ssd.ssd_step``), at batch 1, 4 and 64, with float32 and
bfloat16 params and states.
"""

import re
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
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


def _step_hlo(n_layer: int, batch: int = 1, dtype="float32", state_dtype="float32", **kw):
    """The optimised HLO of the decode step (cache donated) and the model."""
    cfg = get_preset("mamba2-130m").replace(n_layer=n_layer, vocab_size=256)
    model = model_from_state_dict(cfg, init_state_dict(cfg, seed=0), dtype=dtype, state_dtype=state_dtype, **kw)
    graphdef, state = nnx.split(model)
    step = jax.jit(lambda st, c, t: nnx.merge(graphdef, st).step(t, c), donate_argnums=(1,))
    cache = model.init_cache(batch)
    return step.lower(state, cache, jnp.zeros((batch,), jnp.int32)).compile().as_text(), model, state


def _compiled_step(n_layer: int):
    hlo, _, state = _step_hlo(n_layer)
    weights = {tuple(x.shape) for x in jax.tree.leaves(state) if x.ndim == 2}
    return _entry_ops(hlo), weights


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


# ------------------------------------------------------------------------------ passes over the state
_INSTR = re.compile(r"\s*(?:ROOT )?%(\S+) = (\S+(?: \S+)*?) ([a-z][\w-]*)\(([^)]*)\)(.*)")
_NOT_A_PASS = {"parameter", "get-tuple-element", "tuple", "bitcast", "constant", "while"}


def _dims(shape: str) -> tuple[int, ...] | None:
    m = re.fullmatch(r"[a-z]+\d*\[([\d,]*)\](?:\{[^}]*\})?", shape)
    return None if m is None else tuple(int(d) for d in m.group(1).split(",") if d)


def _bytes(shape: str) -> int:
    itemsize = {"pred": 1, "bf16": 2, "f16": 2, "f32": 4, "f64": 8, "s32": 4, "u32": 4}
    return itemsize[shape.split("[")[0]] * int(np.prod(_dims(shape)))


def _source(instrs: dict, n: str) -> dict:
    """The instruction behind ``n``, through bitcasts."""
    while instrs[n]["op"] == "bitcast":
        n = instrs[n]["args"][0]
    return instrs[n]


def _computations(hlo: str) -> dict[str, list[dict]]:
    """name → its instructions: name, shape (text), opcode, operand names, attributes."""
    comps, cur = {}, None
    for line in hlo.splitlines():
        head = re.match(r"(?:ENTRY )?%(\S+) .*\{$", line)
        if head and not line.startswith(" "):
            cur = comps.setdefault("ENTRY" if line.startswith("ENTRY") else head.group(1), [])
            continue
        m = _INSTR.match(line) if cur is not None else None
        if m:
            cur.append({"name": m.group(1), "shape": m.group(2), "op": m.group(3),
                        "args": re.findall(r"%([\w.\-]+)", m.group(4)), "attrs": m.group(5)})
    return comps


def state_traffic(hlo: str, like, size: int) -> dict[str, object]:
    """Passes over an array of ``size`` elements (the state) and its blocks (``like``: a predicate
    on dims, true for both) in the top level of the compiled step and in the bodies of its while
    loops:

    * ``reads``: ops reading it as it came in (an entry parameter or a loop-carried value, whole
      or through a dynamic slice: from memory);
    * ``writes``: ops producing the whole of it (an in-place dynamic-update-slice writes it);
    * ``copies``: ``copy`` ops of it, whole or a block;
    * ``rereads``: (op, bytes) for each op reading it, or a block of it, produced in the step (a
      second read).
    """
    comps = _computations(hlo)
    bodies = {re.search(r"body=%([\w.\-]+)", i["attrs"]).group(1)
              for c in comps.values() for i in c if i["op"] == "while"}
    out = {"reads": 0, "writes": 0, "copies": 0, "rereads": []}
    for name in ["ENTRY", *sorted(bodies)]:
        instrs = {i["name"]: i for i in comps[name]}
        for i in comps[name]:
            if i["op"] in _NOT_A_PASS:
                continue
            dims = _dims(i["shape"])
            if dims is not None and like(dims):
                out["writes"] += int(np.prod(dims)) == size
                out["copies"] += i["op"] == "copy"
            for k, a in enumerate(i["args"]):
                if a not in instrs:
                    continue
                src = _source(instrs, a)
                d = _dims(instrs[a]["shape"])
                if d is None or not like(d) or (k == 0 and i["op"] == "dynamic-update-slice"):
                    continue
                if src["op"] in ("parameter", "get-tuple-element"):
                    out["reads"] += 1
                else:
                    out["rereads"].append((i["op"], _bytes(instrs[a]["shape"])))
    return out


BATCHES = (1, 4, 64)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="passes counted for XLA:CPU")
@pytest.mark.parametrize("dtype,state_dtype", [("float32", "float32"), ("bfloat16", "float32"),
                                               ("float32", "bfloat16"), ("bfloat16", "bfloat16")])
@pytest.mark.parametrize("batch", BATCHES)
def test_one_pass_over_the_ssm_state(batch, dtype, state_dtype):
    """Per layer, the SSM state is read from memory once and written once (in place), never copied.
    A float32 state: the read-out's second read is of a block of at most ``step_block_bytes`` that
    the update has just written (in cache), whatever the batch; before issue 28, at b = 4 and 64,
    the update wrote the whole state and the read-out dot read all of it again.  A 16-bit state is
    one block, read out once more, in its 16 bits (see ``ssd.ssd_step``)."""
    from mamba2_jax.loading import STEP_BLOCK_BYTES_CPU

    hlo, model, _ = _step_hlo(1, batch, dtype, state_dtype)
    cfg = model.cfg
    assert model.step_block_bytes == STEP_BLOCK_BYTES_CPU
    h, n = cfg.nheads, cfg.d_state
    size = batch * h * cfg.headdim * n
    t = state_traffic(hlo, lambda d: len(d) >= 3 and d[-3] == h and d[-1] == n and d[-2] > 1, size)
    assert (t["reads"], t["writes"], t["copies"]) == (1, 1, 0), t
    if state_dtype == "float32":
        # the read-out dot (and, in a loop, the in-place write of the block), of blocks in cache
        assert sorted(op for op, _ in t["rereads"]) == (["dot"] if batch == 1 else ["dot", "dynamic-update-slice"]), t
        assert all(nb <= STEP_BLOCK_BYTES_CPU for _, nb in t["rereads"]), t
        assert ("while(" in hlo) == (batch > 2), batch  # 130m: 0.75 MiB a row; b <= 2 one block, then blocks of 2 rows
    else:  # one block: the read-out (a YNNPACK reduction) reads the stored 16-bit state once more
        assert t["rereads"] == [("fusion", size * 2)], t


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="passes counted for XLA:CPU")
@pytest.mark.parametrize("batch", BATCHES)
def test_conv_state_passes(batch):
    """The conv state's rolling window: read once from memory, by a copy, and read twice from that
    copy (the conv output, the shifted window written back in place).  Not one pass: the shifted
    in-place write makes XLA copy the donated buffer first, and XLA:CPU has no multi-output fusion
    to compute the conv output in the same pass.  Guarded so that it does not grow."""
    hlo, model, _ = _step_hlo(1, batch)
    cfg = model.cfg
    shape = (batch, cfg.d_conv - 1, cfg.conv_dim)
    t = state_traffic(hlo, lambda d: d == shape, int(np.prod(shape)))
    assert t["reads"] == 1 and t["writes"] <= 2 and t["copies"] <= 1 and len(t["rereads"]) <= 2, t


def test_blocks_are_named_in_the_hlo_metadata():
    """Each block of the mixer, the SSD scan and the LM head runs under a ``jax.named_scope``, so the
    compiled programs' metadata (and profiles) name them: every name appears in some op's op_name."""
    cfg = get_preset("tiny")
    model = model_from_state_dict(cfg, init_state_dict(cfg, seed=0), dtype="float32", prefill_block=None)
    graphdef, state = nnx.split(model)
    step = jax.jit(lambda st, c, t: nnx.merge(graphdef, st).step(t, c))
    prefill = jax.jit(lambda st, ids: nnx.merge(graphdef, st).prefill(ids)[0])
    cache = model.init_cache(1)
    step_hlo = step.lower(state, cache, jnp.zeros((1,), jnp.int32)).compile().as_text()
    prefill_hlo = prefill.lower(state, jnp.zeros((1, 32), jnp.int32)).compile().as_text()

    def scopes(hlo):
        return {part for name in re.findall(r'op_name="([^"]*)"', hlo) for part in name.split("/")}

    common = {"in_proj", "conv", "gate_norm", "out_proj", "lm_head"}
    assert common | {"ssd_step", "state_update", "readout"} <= scopes(step_hlo)
    ssd = {"ssd_chunk_scan", "intra_chunk", "chunk_states", "inter_chunk", "state_output"}
    assert common | ssd <= scopes(prefill_hlo)
