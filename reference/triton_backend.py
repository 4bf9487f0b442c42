"""``mamba_ssm_triton``: mamba_ssm v2.2.2 ``MambaLMHeadModel`` -- the paper's reference.

On CUDA (``--device cuda``) it needs the GPU environment of ``reference/requirements-gpu.txt``
(mamba_ssm 2.2.2 built with its CUDA extensions, causal-conv1d, Triton); asked for CUDA on a machine
without it, it fails at once with a clear message.  On CPU (``--device cpu``, the default without
CUDA) the same Triton kernels run through Triton's interpreter in ``.venv-ref`` (see
``reference/triton_cpu.py`` for the five process-local shims); the result's device is
"cpu (Triton interpreter)".  On CPU the model uses the unfused path (``use_mem_eff_path=False``):
the fused ``mamba_split_conv1d_scan_combined`` needs the causal_conv1d CUDA extension; the unfused
path calls the same Triton SSD kernel (``mamba_chunk_scan_combined``), the Triton gated RMSNorm and
the Triton fused add+RMSNorm.

Precision knobs, all recorded in the golden file's metadata:

* ``--tf32 on|off`` sets ``torch.backends.cuda.matmul.allow_tf32`` / ``cudnn.allow_tf32`` (cuBLAS:
  in_proj, out_proj, LM head).  Default ``off`` (IEEE fp32 matmuls).
* Triton ``tl.dot`` on fp32 inputs uses TF32 by default on Ampere/Hopper; mamba_ssm 2.2.2's SSD
  kernels pass no ``allow_tf32``/``input_precision``, so their in-kernel matmuls are TF32 whatever
  ``--tf32`` says.  ``--triton-f32 ieee`` exports ``TRITON_F32_DEFAULT=ieee`` before Triton is
  imported; whether the installed Triton honours that variable is recorded, not assumed.
* ``--cuda-graph on|off``: the greedy run uses ``model.generate(..., cg=True|False)``; with ``on``
  the decode step replays a captured CUDA graph (mamba_ssm's ``update_graph_cache``).

Hidden states and prompt logits come from one full forward (``inference_params=None``: on CUDA
the fused ``mamba_split_conv1d_scan_combined`` path, on CPU the unfused one); the greedy run's
step-0 logits come from ``generate``'s prefill (``mamba_chunk_scan_combined`` +
``causal_conv1d_fn``), later steps from ``Mamba2.step`` (``selective_state_update`` +
``causal_conv1d_update``, on CPU mamba_ssm's own torch conv step).  ``generate`` gets
``vocab_size`` so greedy picks from the real vocabulary (the padded rows are sliced off), as ours
does.  Timings: every ``model.forward`` call of ``generate`` is timed (``time.perf_counter``): the
first is its prefill, the rest are decode steps.
"""

from __future__ import annotations

import os
import statistics
import time


def check_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError(
            "backend mamba_ssm_triton needs a CUDA GPU (torch.cuda.is_available() is False on this machine). "
            "Without CUDA use --device cpu (the same Triton kernels through Triton's interpreter, in .venv-ref), "
            "or run this backend in the GPU environment described in reference/requirements-gpu.txt.")


class TritonAdapter:
    def __init__(self, model, n_layer: int, cuda_graph: bool, vocab_size: int | None = None):
        self.model = model
        self.n_layer = n_layer
        self.cuda_graph = cuda_graph
        self.vocab_size = vocab_size
        self.decode_step_seconds: list[float] = []   # every decode step of every greedy() call
        self.greedy_prefill_seconds: list[float] = []

    def _sync(self):
        import torch

        if torch.cuda.is_available() and next(self.model.parameters()).is_cuda:
            torch.cuda.synchronize()

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

        calls: list[float] = []
        fwd = self.model.forward

        def timed_forward(*a, **k):
            self._sync()
            t0 = time.perf_counter()
            out = fwd(*a, **k)
            self._sync()
            calls.append(time.perf_counter() - t0)
            return out

        self.model.forward = timed_forward  # instance attribute: nn.Module.__call__ dispatches to it
        try:
            with torch.no_grad():
                out = self.model.generate(ids, max_length=ids.shape[1] + n_new, top_k=1, cg=self.cuda_graph,
                                          return_dict_in_generate=True, output_scores=True, eos_token_id=None,
                                          vocab_size=self.vocab_size)
        finally:
            del self.model.forward
        if calls:  # with CUDA graphs the decode steps replay a graph and do not call forward
            self.greedy_prefill_seconds.append(calls[0])
            self.decode_step_seconds.extend(calls[1:])
        return [s[0].float() for s in out.scores]

    def timing_summary(self) -> dict:
        d = self.decode_step_seconds
        return {"decode_step_seconds_median": statistics.median(d) if d else None,
                "decode_steps_timed": len(d),
                "generate_prefill_seconds": [round(x, 4) for x in self.greedy_prefill_seconds],
                "timer": "time.perf_counter around each model.forward call of generate()"
                         + (" (CUDA synchronized)" if self.model.lm_head.weight.is_cuda else "")}

    def logits(self, ids):
        import torch

        with torch.no_grad():
            return self.model(ids).logits.float()


def load(model_dir, device: str = "cuda", tf32: bool = False, triton_f32: str = "default",
         cuda_graph: bool = True):
    interpreted = device == "cpu"
    if interpreted:
        if tf32 or triton_f32 != "default" or cuda_graph:
            raise RuntimeError("--tf32 / --triton-f32 / --cuda-graph on apply to CUDA only (on CPU the Triton "
                               "interpreter computes tl.dot as a float32 numpy matmul)")
        from .triton_cpu import enable_interpreter

        interp_shims = enable_interpreter()  # TRITON_INTERPRET=1 before triton / mamba_ssm are imported
    elif triton_f32 == "ieee":
        os.environ["TRITON_F32_DEFAULT"] = "ieee"
    import torch

    if not interpreted:
        check_cuda()
        torch.backends.cuda.matmul.allow_tf32 = bool(tf32)
        torch.backends.cudnn.allow_tf32 = bool(tf32)
    from ._compat import prepare_mamba_ssm_import

    shims = prepare_mamba_ssm_import()
    if "selective_scan_cuda" in shims and not interpreted:
        raise RuntimeError("mamba_ssm was installed without its CUDA extensions (MAMBA_SKIP_CUDA_BUILD); "
                           "mamba_ssm_triton needs the GPU environment of reference/requirements-gpu.txt")
    import warnings

    # mamba_ssm 2.2.2 decorates with torch.cuda.amp.custom_fwd, deprecated in recent torch: noise only.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"mamba_ssm\.")
    import triton
    from mamba_ssm.models.config_mamba import MambaConfig
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

    from .common import read_config, read_weights

    if interpreted:
        import mamba_ssm.modules.mamba2 as mamba2_module

        from .triton_cpu import patch_causal_conv

        shims.update(interp_shims)
        shims.update(patch_causal_conv(mamba2_module))
    cfg = read_config(model_dir)
    raw = {k: v for k, v in cfg["raw"].items() if k in MambaConfig.__dataclass_fields__}
    if interpreted:
        raw["ssm_cfg"] = {**(raw.get("ssm_cfg") or {}), "use_mem_eff_path": False}
    model = MambaLMHeadModel(MambaConfig(**raw), device=device, dtype=torch.float32).eval()
    sd, stored = read_weights(model_dir, "float32")
    model.load_state_dict({k: v.to(device) for k, v in sd.items()}, strict=True)
    meta = {"compute_dtype": "float32", "stored_dtype": stored, "triton": triton.__version__, "shims": shims,
            "cuda_graph_decode": bool(cuda_graph), "greedy_vocab_size": cfg["vocab_size"],
            "greedy": f"mamba_ssm generate(top_k=1, cg={bool(cuda_graph)}, vocab_size={cfg['vocab_size']})"}
    if interpreted:
        from . import triton_cpu

        meta.update({
            "device_label": triton_cpu.DEVICE_LABEL, "triton_interpret": True, "use_mem_eff_path": False,
            "tf32_cublas": False, "triton_tl_dot_fp32": triton_cpu.TL_DOT_PRECISION, "TRITON_F32_DEFAULT": None,
            "autotune": triton_cpu.AUTOTUNE_RULE, "autotune_configs": triton_cpu.chosen_configs(),
            "prefill_path": "unfused (use_mem_eff_path=False; the fused mamba_split_conv1d_scan_combined needs the "
                            "causal_conv1d CUDA extension): Triton fused add+RMSNorm (layer_norm_fn), "
                            "causal_conv1d_fn (torch stand-in), Triton SSD mamba_chunk_scan_combined, Triton gated "
                            "RMSNorm; generate: the same prefill, then Mamba2.step",
            "decode_path": "Mamba2.step: Triton selective_state_update, Triton gated RMSNorm, Triton fused "
                           "add+RMSNorm; conv step in torch (" + triton_cpu.CONV_STEP + ")",
            "no_triton_kernel": {"causal_conv1d": triton_cpu.CONV_FN, "conv_step": triton_cpu.CONV_STEP,
                                 "in_proj/out_proj/lm_head/embedding": "torch (nn.Linear / nn.Embedding)"}})
    else:
        env_f32 = os.environ.get("TRITON_F32_DEFAULT")
        meta.update({
            "device_label": device, "triton_interpret": False, "use_mem_eff_path": True, "tf32_cublas": bool(tf32),
            "triton_tl_dot_fp32": env_f32 or "tf32 (Triton default; mamba_ssm 2.2.2 kernels set no precision)",
            "TRITON_F32_DEFAULT": env_f32,
            "prefill_path": "fused mamba_split_conv1d_scan_combined (hidden/logits); generate: "
                            "mamba_chunk_scan_combined + causal_conv1d_fn, then Mamba2.step"})
    return TritonAdapter(model, cfg["n_layer"], cuda_graph, cfg["vocab_size"]), meta
