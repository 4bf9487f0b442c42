"""The shipped default model checkpoints/mamba2-tiny-wikitext (issue 7): state-spaces format,
documented shapes, fp16 on disk, loads with load_pretrained, greedy generation is deterministic."""

import json
from pathlib import Path

import numpy as np
import pytest

from mamba2_jax import load_pretrained
from mamba2_jax.checkpoint import expected_shapes
from mamba2_jax.config import Mamba2Config
from mamba2_jax.generate import Generator, stepwise_greedy

REPO = Path(__file__).resolve().parents[1]
CKPT = REPO / "checkpoints" / "mamba2-tiny-wikitext"
# "The history of" in the GPT-NeoX-20B tokenizer (checked against the tokenizer when it is available)
PROMPT, PROMPT_IDS = "The history of", [510, 2892, 273]


@pytest.fixture(scope="module")
def model():
    return load_pretrained(str(CKPT))


def test_config_is_state_spaces_format():
    raw = json.loads((CKPT / "config.json").read_text())
    assert raw["d_model"] == 128 and raw["n_layer"] == 4 and raw["vocab_size"] == 50277
    assert raw["pad_vocab_size_multiple"] == 16 and raw["tie_embeddings"] is True
    ssm = raw["ssm_cfg"]
    assert ssm["layer"] == "Mamba2"
    assert (ssm["d_state"], ssm["headdim"], ssm["ngroups"], ssm["chunk_size"]) == (64, 32, 2, 64)
    cfg = Mamba2Config.from_json(CKPT)
    assert (cfg.padded_vocab_size, cfg.nheads, cfg.d_inner, cfg.conv_dim, cfg.d_in_proj) == (50288, 8, 256, 512, 776)


def test_weights_are_fp16_and_keyed_like_state_spaces():
    import torch

    path = CKPT / "pytorch_model.bin"
    assert path.stat().st_size <= 16 * 1024 * 1024
    sd = torch.load(path, map_location="cpu", weights_only=True)
    cfg = Mamba2Config.from_json(CKPT)
    exp = expected_shapes(cfg)
    assert set(sd) == set(exp)
    for k, v in sd.items():
        assert v.dtype == torch.float16, k
        assert tuple(v.shape) == exp[k], k
    # tied head: one storage, as torch.save of a tied mamba_ssm model writes it
    ptr = lambda k: sd[k].untyped_storage().data_ptr()
    assert ptr("lm_head.weight") == ptr("backbone.embedding.weight")
    for k, v in sd.items():
        assert torch.isfinite(v.float()).all(), k


def test_model_card():
    card = (CKPT / "README.md").read_text()
    for s in ("wiki.valid.raw", "never used for training", "CC BY-SA 3.0", "Apache-2.0", "strided", "lm_eval_rolling"):
        assert s in card, s


def test_loads_and_generates_deterministically(model, data_dir):
    from mamba2_jax.tokenizer import load_tokenizer

    assert model.source["format"] == "state-spaces" and model.source["stored_dtype"] == "float16"
    assert model.cfg.n_layer == 4 and model.cfg.ngroups == 2
    tok = load_tokenizer(data_dir / "gpt-neox-20b")
    assert tok.encode(PROMPT) == PROMPT_IDS
    out1 = stepwise_greedy(model, PROMPT_IDS, 16)["tokens"].tolist()
    out2 = Generator(model, eos_id=None).generate([PROMPT_IDS], 16).sequences()[0]
    assert out1 == out2 and len(out1) == 16  # the host-driven loop and the compiled loop agree
    assert all(0 <= t < 50277 for t in out1)
    text = tok.decode(out1)
    assert sum(ch.isalpha() for ch in text) >= 10, text  # words, not punctuation/padding


def test_prefill_matches_step(model):
    """Cached decode reproduces the chunked prefill on the trained weights (both paths used above): the
    jitted prefill and step programs of ``stepwise_greedy`` (the prompt's prefill and the step are the
    ones it compiled for the test above)."""
    import jax.numpy as jnp
    from flax import nnx

    from mamba2_jax.generate import _stepwise_programs

    ids = jnp.asarray([PROMPT_IDS + [11, 253, 806, 273, 253]], jnp.int32)
    graphdef, state = nnx.split(model)
    prefill, step = _stepwise_programs(graphdef)
    full, _, _ = prefill(state, ids)
    _, cache, _ = prefill(state, ids[:, :3])
    for t in range(3, ids.shape[1]):
        lg, cache = step(state, ids[:, t], cache)
        np.testing.assert_allclose(np.asarray(lg[0]), np.asarray(full[0, t]), rtol=1e-4, atol=1e-4)
