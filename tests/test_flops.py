"""Analytic FLOP and byte counters (mamba2_jax/eval/flops.py) against hand-computed values.

Tiny preset: d=64, n_layer=2, vocab 250 (padded 256), d_state n=16, headdim p=16, chunk q=16,
expand 2 → d_inner 128, h=8 heads, g=1, conv_dim 160, d_in_proj 296, d_conv 4.
"""

import pytest

from mamba2_jax.config import get_preset
from mamba2_jax.eval import flops

TINY = get_preset("tiny")


def test_tiny_shapes_used_by_hand_counts():
    c = TINY
    assert (c.d_model, c.n_layer, c.padded_vocab_size, c.d_inner, c.nheads, c.conv_dim, c.d_in_proj) == \
        (64, 2, 256, 128, 8, 160, 296)


def test_prefill_flops_tiny_L40():
    f = flops.prefill_flops(TINY, 40, batch=1, last_only=True)
    # c = ceil(40/16) = 3 chunks
    assert f["in_proj"] == 2 * 2 * 40 * 64 * 296 == 3_031_040
    assert f["conv"] == 2 * 2 * 40 * 160 * 4 == 102_400
    assert f["out_proj"] == 2 * 2 * 40 * 128 * 64 == 1_310_720
    assert f["lm_head"] == 2 * 64 * 256 == 32_768
    assert f["ssd_cb"] == 2 * 2 * 3 * 1 * 16 * 16 * 16 == 49_152
    assert f["ssd_diag"] == 2 * 2 * 3 * 8 * 16 * 16 * 16 == 393_216
    assert f["ssd_states"] == f["ssd_off"] == 393_216
    assert f["ssd_inter"] == 2 * 2 * 8 * 3 * 3 * 16 * 16 == 73_728  # one block of k = 3 chunks
    assert f["ssd"] == 1_302_528
    assert f["matmul"] == 3_031_040 + 1_310_720 + 32_768
    assert f["total"] == 5_779_456


def test_prefill_flops_full_logits_and_batch():
    one = flops.prefill_flops(TINY, 40, 1, last_only=False)
    assert one["lm_head"] == 2 * 40 * 64 * 256
    two = flops.prefill_flops(TINY, 40, 2, last_only=False)
    assert two["total"] == 2 * one["total"]
    # padding: 33..48 tokens all run 3 chunks of SSD
    assert flops.prefill_flops(TINY, 33)["ssd"] == flops.prefill_flops(TINY, 48)["ssd"]


def test_decode_flops_tiny():
    f = flops.decode_flops(TINY, 1)
    assert f["in_proj"] == 75_776
    assert f["conv"] == 2_560
    assert f["ssd_step"] == 2 * 5 * 8 * 16 * 16 == 20_480
    assert f["out_proj"] == 32_768
    assert f["lm_head"] == 32_768
    assert f["total"] == 164_352
    assert flops.decode_flops(TINY, 3)["total"] == 3 * 164_352


def test_param_and_decode_bytes_fp32():
    assert TINY.num_params() == 72_752
    pb = flops.param_bytes(TINY, "float32")
    assert pb["total"] == 72_752 * 4 == 291_008
    sb = flops.state_bytes(TINY, 1, "float32")
    assert sb["ssm"] == 2 * 8 * 16 * 16 * 4 == 16_384
    assert sb["conv"] == 2 * 3 * 160 * 4 == 3_840
    db = flops.decode_bytes(TINY, 1, "float32")
    assert db["total"] == 291_008 + 2 * 20_224 == 331_456
    assert db["logits_write"] == 256 * 4


def test_param_and_decode_bytes_bf16():
    # A_log, dt_bias, D (2 layers x 3 x 8 heads = 48 values) stay float32
    pb = flops.param_bytes(TINY, "bfloat16")
    assert pb["ssm_fp32"] == 48 * 4
    assert pb["total"] == (72_752 - 48) * 2 + 48 * 4 == 145_600
    db = flops.decode_bytes(TINY, 1, "bfloat16")
    assert db["conv_state"] == 2 * 3 * 160 * 2
    assert db["total"] == 145_600 + 2 * (16_384 + 1_920) == 182_208
    # a bfloat16 SSM state (storage only) halves the SSM bytes: 2 layers x 8 heads x 16 x 16 x 2
    db16 = flops.decode_bytes(TINY, 1, "bfloat16", "bfloat16")
    assert db16["ssm_state"] == 2 * 8 * 16 * 16 * 2 == 8_192
    assert db16["total"] == 145_600 + 2 * (8_192 + 1_920)


def test_param_bytes_match_the_model():
    import jax
    import numpy as np
    from flax import nnx

    from mamba2_jax.checkpoint import init_state_dict
    from mamba2_jax.loading import model_from_state_dict

    for dt in ("float32", "bfloat16"):
        m = model_from_state_dict(TINY, init_state_dict(TINY, 0), dtype=dt)
        _, state = nnx.split(m)
        nbytes = sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(state))
        assert nbytes == flops.param_bytes(TINY, dt)["total"]
        cache_bytes = sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(m.init_cache(1)))
        assert cache_bytes - 4 == flops.state_bytes(TINY, 1, dt)["total"]  # minus seqlen
    for dt, sdt in (("float32", "bfloat16"), ("bfloat16", "float16")):
        m = model_from_state_dict(TINY, init_state_dict(TINY, 0), dtype=dt, state_dtype=sdt)
        cache = m.init_cache(3)
        cache_bytes = sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(cache))
        assert cache_bytes - 3 * 4 == flops.state_bytes(TINY, 3, dt, sdt)["total"]
        assert sum(int(x.size) * x.dtype.itemsize for x in cache.ssm) == flops.state_bytes(TINY, 3, dt, sdt)["ssm"]


@pytest.mark.parametrize("name", ["mamba2-130m", "mamba2-2.7b"])
def test_real_shapes_are_dominated_by_projections(name):
    cfg = get_preset(name)
    f = flops.prefill_flops(cfg, 4096)
    # 2 x params x tokens is the textbook estimate for the projections (embedding gather excluded)
    layer_params = cfg.n_layer * (cfg.d_model * cfg.d_in_proj + cfg.d_inner * cfg.d_model)
    assert f["in_proj"] + f["out_proj"] == 2 * layer_params * 4096
    assert 0 < f["ssd"] < f["matmul"]


def test_prefill_flops_count_the_chunk_and_blocks_the_model_runs():
    """The SSD terms use the chunk the model scans with and its prefill blocks, not cfg.chunk_size: on
    CPU a chunk-256 config scans 64-token chunks (c = ceil(L/64)) and prefills L = 1024 as 2 blocks of 512
    (each with its own inter-chunk recurrence of k = 8 chunks)."""
    from mamba2_jax.checkpoint import init_state_dict
    from mamba2_jax.loading import model_from_state_dict

    cfg = TINY.replace(chunk_size=256)
    model = model_from_state_dict(cfg, init_state_dict(cfg, 0))
    assert (model.scan_chunk_size, model.prefill_block) == (64, 512)  # the CPU policy
    f = flops.model_prefill_flops(model, 200)  # c = 4 chunks of 64, one block of k = 4
    assert f["ssd_cb"] == 2 * 2 * 4 * 1 * 64 * 64 * 16 == 1_048_576
    assert f["ssd_diag"] == 2 * 2 * 4 * 8 * 64 * 64 * 16 == 8_388_608
    assert f["ssd_states"] == f["ssd_off"] == 2 * 2 * 4 * 8 * 64 * 16 * 16 == 2_097_152
    assert f["ssd_inter"] == 2 * 2 * 8 * 4 * 4 * 16 * 16 == 131_072
    assert f == flops.prefill_flops(cfg, 200, chunk_size=64)
    assert flops.prefill_flops(cfg, 200)["ssd_cb"] == 2 * 2 * 1 * 1 * 256 * 256 * 16  # cfg.chunk_size: not what runs
    g = flops.model_prefill_flops(model, 1024)  # 2 blocks × (8 chunks, k = 8)
    assert g["ssd_cb"] == 2 * 2 * 16 * 1 * 64 * 64 * 16
    assert g["ssd_inter"] == 2 * 2 * 2 * 8 * 8 * 8 * 16 * 16 == 1_048_576
    assert flops.prefill_flops(cfg, 1024, chunk_size=64)["ssd_inter"] == 2 * 2 * 8 * 16 * 16 * 16 * 16  # one pass
    assert flops.model_prefill_flops(model, 1000)["ssd_inter"] == 2 * 2 * 8 * 16 * 16 * 16 * 16  # not a multiple
    assert flops.recompute_flops(model, 1024) == g["total"]


def test_decode_roofline_takes_the_lower_of_the_bytes_and_matmul_bounds():
    """Counts from the checkpoint's own tensors, not from decode_flops: a decode token multiplies every
    in_proj / out_proj matrix and the (tied) embedding once, 2 FLOPs per weight element."""
    import numpy as np

    from mamba2_jax.checkpoint import init_state_dict

    sd = init_state_dict(TINY, 0)
    mm_weights = sum(int(np.prod(v.shape)) for k, v in sd.items()
                     if k.endswith(("in_proj.weight", "out_proj.weight")) or k == "backbone.embedding.weight")
    assert mm_weights > 0
    bw, rate = 1.0e10, 1.0e11
    small = flops.decode_roofline(TINY, 1, bw, rate)
    assert small["matmul_bound_tokens_per_s"] == pytest.approx(rate / (2 * mm_weights))
    assert small["bandwidth_bound_tokens_per_s"] == pytest.approx(bw / flops.decode_bytes(TINY, 1)["total"])
    assert small["limited_by"] == "bandwidth"
    assert small["roofline_tokens_per_s"] == small["bandwidth_bound_tokens_per_s"]
    # a batch large enough that the weights' bytes are shared by many rows: the matmuls bind
    big = flops.decode_roofline(TINY, 4096, bw, rate * 1e-3)
    assert big["limited_by"] == "matmul"
    assert big["roofline_tokens_per_s"] == pytest.approx(rate * 1e-3 / (2 * mm_weights))


def test_batch_curve_roofline_reads_the_documents_own_rates():
    rec = {"metric": "decode_batch_tokens_per_s", "dtype": "float32", "batch": 4, "value": 50.0,
           "stream_bandwidth": 2.0e10, "state_dtype": "float32"}
    doc = {"models": {"float32": {"model": "tiny", "dtype": "float32"}},
           "records": [rec, {"metric": "matmul_flops_per_s", "value": 5.0e10}]}
    ro = flops.batch_curve_roofline(doc, rec)
    want = flops.decode_roofline(TINY, 4, 2.0e10, 5.0e10)
    assert ro["roofline_tokens_per_s"] == pytest.approx(want["roofline_tokens_per_s"])
    assert ro["roofline_fraction"] == pytest.approx(50.0 / want["roofline_tokens_per_s"])
    assert flops.batch_curve_roofline({"models": doc["models"], "records": [rec]}, rec) is None  # no matmul rate
