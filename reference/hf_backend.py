"""``transformers``: HF ``Mamba2ForCausalLM`` in float32 through its pure-PyTorch ``torch_forward`` path.

transformers 5.x binds mamba_ssm's Triton kernels at import time whenever ``import mamba_ssm``
succeeds (``use_kernel_func_from_hub_with_fallback(..., "mamba_ssm")``), and those kernels fail on
CPU.  This backend therefore (1) is run with the project venv, where mamba_ssm is not installed,
and (2) blocks ``mamba_ssm``/``causal_conv1d`` in ``sys.modules`` before importing transformers, so
that even an environment that has mamba_ssm gets the torch path.  The metadata records this.

transformers 5.23's gated norm (``MambaRMSNormGated``) normalises per group of
``intermediate_size // n_groups`` channels, like mamba_ssm's ``RMSNormGated(group_size=d_ssm //
ngroups)``, so HF is a valid reference for ngroups > 1 too (checked by tests/test_reference_backends.py).

A state-spaces checkpoint directory is converted to the HF layout with
``mamba2_jax.checkpoint.convert(src, tmp, fmt="hf")`` first (renames ``embedding`` →
``embeddings`` and writes a ``Mamba2Config``).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from ._compat import block_mamba_ssm, mamba_ssm_blocked

block_mamba_ssm()

import torch


class HFAdapter:
    def __init__(self, model, n_layer: int):
        self.model = model
        self.n_layer = n_layer

    @torch.no_grad()
    def prefill(self, ids):
        out = self.model(ids, use_cache=True, output_hidden_states=True, return_dict=True)
        hidden = torch.stack([h.float() for h in out.hidden_states[: self.n_layer]])
        return out.logits.float(), hidden, out.cache_params

    @torch.no_grad()
    def step(self, tok, cache):
        out = self.model(tok[:, None], cache_params=cache, use_cache=True, return_dict=True)
        return out.logits[:, -1].float()

    @torch.no_grad()
    def logits(self, ids):
        return self.model(ids, use_cache=False, return_dict=True).logits.float()


def _hf_dir(model_dir: Path, tmp: Path) -> tuple[Path, str]:
    raw = json.loads((model_dir / "config.json").read_text())
    if "hidden_size" in raw:
        return model_dir, "hf"
    ssm = raw.get("ssm_cfg") or {}
    if ssm.get("d_ssm") is not None and ssm["d_ssm"] != ssm.get("expand", 2) * raw["d_model"]:
        from .common import ReferenceError_

        raise ReferenceError_(f"{model_dir}: d_ssm={ssm['d_ssm']} != expand*d_model; transformers' Mamba2 has no "
                              "gated-MLP side branch (d_ssm < d_inner), so it cannot serve as a reference here")
    try:
        from mamba2_jax.checkpoint import convert
    except ImportError as e:  # pragma: no cover - the project venv always has it
        raise RuntimeError("converting a state-spaces checkpoint for transformers needs mamba2_jax "
                           f"(run this backend with the project venv): {e}") from None
    convert(model_dir, tmp, fmt="hf")
    return tmp, "state-spaces (converted with mamba2_jax.checkpoint.convert)"


def load(model_dir, device: str = "cpu"):
    import shutil

    model_dir = Path(model_dir)
    tmp = Path(tempfile.mkdtemp(prefix="hf-mamba2-"))
    try:
        hf_dir, src_fmt = _hf_dir(model_dir, tmp)
        import transformers
        import transformers.models.mamba2.modeling_mamba2 as mm
        from transformers import Mamba2ForCausalLM

        assert mamba_ssm_blocked()
        model = Mamba2ForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).to(device).eval()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    meta = {"compute_dtype": "float32", "source_format": src_fmt, "transformers": transformers.__version__,
            "path": "Mamba2Mixer.forward torch path (no mamba_ssm / causal_conv1d kernels)",
            "mamba_ssm_blocked_in_process": mamba_ssm_blocked(),
            "gated_norm_group_size": int(model.backbone.layers[0].mixer.norm.group_size),
            "modeling_file": Path(mm.__file__).name}
    return HFAdapter(model, model.config.num_hidden_layers), meta
