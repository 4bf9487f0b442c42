"""``mamba_ssm_triton``: mamba_ssm v2.2.2 ``MambaLMHeadModel`` on CUDA -- the paper's reference.

Needs the GPU environment of ``reference/requirements-gpu.txt`` (mamba_ssm 2.2.2 built with its
CUDA extensions, causal-conv1d, Triton).  Without CUDA it fails at once with a clear message.

Precision knobs, all recorded in the golden file's metadata:

* ``--tf32 on|off`` sets ``torch.backends.cuda.matmul.allow_tf32`` / ``cudnn.allow_tf32`` (cuBLAS:
  in_proj, out_proj, LM head).  Default ``off`` (IEEE fp32 matmuls).
* Triton ``tl.dot`` on fp32 inputs uses TF32 by default on Ampere/Hopper; mamba_ssm 2.2.2's SSD
  kernels pass no ``allow_tf32``/``input_precision``, so their in-kernel matmuls are TF32 whatever
  ``--tf32`` says.  ``--triton-f32 ieee`` exports ``TRITON_F32_DEFAULT=ieee`` before Triton is
  imported; whether the installed Triton honours that variable is recorded, not assumed.
* ``--cuda-graph on|off``: the greedy run uses ``model.generate(..., cg=True|False)``; with ``on``
  the decode step replays a captured CUDA graph (mamba_ssm's ``update_graph_cache``).

Hidden states and prompt logits come from one full forward (``inference_params=None``, i.e. the
fused ``mamba_split_conv1d_scan_combined`` path); the greedy run's step-0 logits come from
``generate``'s prefill (``mamba_chunk_scan_combined`` + ``causal_conv1d_fn``), later steps from
``Mamba2.step`` (``selective_state_update`` + ``causal_conv1d_update``).
"""

from __future__ import annotations

import os


def check_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError(
            "backend mamba_ssm_triton needs a CUDA GPU (torch.cuda.is_available() is False on this machine). "
            "Use --backend mamba_ssm_ref_cpu or --backend transformers on CPU, or run this backend in the "
            "GPU environment described in reference/requirements-gpu.txt.")


class TritonAdapter:
    def __init__(self, model, n_layer: int, cuda_graph: bool):
        self.model = model
        self.n_layer = n_layer
        self.cuda_graph = cuda_graph

    def _forward_with_hidden(self, ids):
        import torch

        streams = []

        def hook(_mod, _inp, out):
            hs, res = out
            streams.append((hs.float() + res.float()) if res is not None else hs.float())

        handles = [blk.register_forward_hook(hook) for blk in self.model.backbone.layers]
        try:
            logits = self.model(ids).logits.float()
        finally:
            for h in handles:
                h.remove()
        return logits, torch.stack(streams)

    def prefill(self, ids):
        import torch

        with torch.no_grad():
            logits, hidden = self._forward_with_hidden(ids)
        return logits, hidden, None

    def step(self, tok, cache):  # pragma: no cover - greedy() is used instead
        raise NotImplementedError("mamba_ssm_triton decodes through model.generate (see greedy())")

    def greedy(self, ids, n_new: int):
        """→ list of n_new logits rows (V,), from mamba_ssm's own generate (top_k=1)."""
        import torch

        with torch.no_grad():
            out = self.model.generate(ids, max_length=ids.shape[1] + n_new, top_k=1, cg=self.cuda_graph,
                                      return_dict_in_generate=True, output_scores=True, eos_token_id=None)
        return [s[0].float() for s in out.scores]

    def logits(self, ids):
        import torch

        with torch.no_grad():
            return self.model(ids).logits.float()


def load(model_dir, device: str = "cuda", tf32: bool = False, triton_f32: str = "default",
         cuda_graph: bool = True):
    if triton_f32 == "ieee":
        os.environ["TRITON_F32_DEFAULT"] = "ieee"
    import torch

    check_cuda()
    torch.backends.cuda.matmul.allow_tf32 = bool(tf32)
    torch.backends.cudnn.allow_tf32 = bool(tf32)
    from ._compat import prepare_mamba_ssm_import

    shims = prepare_mamba_ssm_import()
    if "selective_scan_cuda" in shims:
        raise RuntimeError("mamba_ssm was installed without its CUDA extensions (MAMBA_SKIP_CUDA_BUILD); "
                           "mamba_ssm_triton needs the GPU environment of reference/requirements-gpu.txt")
    import triton
    from mamba_ssm.models.config_mamba import MambaConfig
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

    from .common import read_config, read_weights

    cfg = read_config(model_dir)
    raw = {k: v for k, v in cfg["raw"].items() if k in MambaConfig.__dataclass_fields__}
    model = MambaLMHeadModel(MambaConfig(**raw), device=device, dtype=torch.float32).eval()
    sd, stored = read_weights(model_dir, "float32")
    model.load_state_dict({k: v.to(device) for k, v in sd.items()}, strict=True)
    env_f32 = os.environ.get("TRITON_F32_DEFAULT")
    meta = {"compute_dtype": "float32", "stored_dtype": stored, "triton": triton.__version__, "shims": shims,
            "tf32_cublas": bool(tf32),
            "triton_tl_dot_fp32": env_f32 or "tf32 (Triton default; mamba_ssm 2.2.2 kernels set no precision)",
            "TRITON_F32_DEFAULT": env_f32,
            "cuda_graph_decode": bool(cuda_graph),
            "prefill_path": "fused mamba_split_conv1d_scan_combined (hidden/logits); generate: "
                            "mamba_chunk_scan_combined + causal_conv1d_fn, then Mamba2.step"}
    return TritonAdapter(model, cfg["n_layer"], cuda_graph), meta
