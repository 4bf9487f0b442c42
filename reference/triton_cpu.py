"""Run mamba_ssm v2.2.2's Triton kernels on CPU through Triton's interpreter (``TRITON_INTERPRET=1``).

The interpreter executes each ``@triton.jit`` kernel program by program in NumPy, so the kernels'
own arithmetic (block decomposition, masking, accumulation order, ``tl.dot`` as a float32
``np.matmul``) runs unchanged; what changes is that it runs on CPU instead of being compiled for a
GPU.  ``enable_interpreter()`` must run in the reference process *before* mamba_ssm is imported
(its kernels are wrapped in ``InterpretedFunction`` when decorated).  It applies five process-local
shims -- nothing in site-packages is edited, and none of them touches mamba_ssm's SSD math:

1. **device context**: the launchers run every kernel inside ``torch.cuda.device(x.device.index)``;
   for a CPU tensor the index is None and a CPU-only torch raises.  ``torch.cuda.device`` becomes a
   no-op context for None / negative indices (other indices go to the real class).
2. **autotuner**: ``triton.autotune`` times its configs through a GPU driver, and there is none.
   Under the interpreter each autotuned kernel keeps one fixed config, chosen without timing: the
   one with the largest block (product of its ``BLOCK_SIZE*`` meta-parameters; the first such in
   list order), so that the interpreter runs as few programs as possible.  Triton then takes its own
   single-config path.  Every config in a kernel's list is one the GPU autotuner may pick; the
   block sizes only change how the work is tiled (and, for ``tl.dot`` K-blocks, the summation
   order), not what is computed.  The choice per kernel is recorded (``chosen_configs()``).
3. **NumPy 2**: Triton 3.6's interpreter implements ``tensor.__index__`` as ``int(data)`` on a
   1-element array, which NumPy 2 refuses ("only 0-dimensional arrays can be converted to Python
   scalars"; hit in ``_chunk_state_fwd``'s ``range(0, chunk_size_limit, BLOCK_SIZE_K)``).  The
   interpreter's ``_patch_lang_tensor`` is wrapped so that ``__index__`` converts through
   ``.item()`` (same value; more than one element still raises).
4. **causal conv**: mamba_ssm 2.2.2's fallback without the causal-conv1d package is broken (it
   reads ``self.dconv``, the attribute is ``d_conv``, and keeps ``[:, -(d_conv - 1):]`` where the
   causal output is ``[:, :seqlen]``).  ``mamba_ssm.modules.mamba2.causal_conv1d_fn`` is set to
   ``causal_conv1d_fn`` below (depthwise ``F.conv1d`` with left padding d_conv-1, then SiLU).
   ``causal_conv1d_update`` stays None, so the decode step uses mamba_ssm's own torch code in
   ``Mamba2.step`` (roll the (b, conv_dim, d_conv) window, multiply-sum, bias, SiLU).
5. **CUDA events**: ``generate()`` creates ``torch.cuda.Event`` objects even with timing off and a
   CPU-only torch refuses them; ``torch.cuda.Event`` becomes a no-op class.
"""

from __future__ import annotations

import contextlib
import os
import sys

DEVICE_LABEL = "cpu (Triton interpreter)"
AUTOTUNE_RULE = ("one fixed config per triton.autotune kernel, no timing: the largest block (product of "
                 "BLOCK_SIZE* meta-parameters, first in list order on ties)")
TL_DOT_PRECISION = ("numpy float32 matmul (the interpreter's tl.dot ignores input_precision: IEEE fp32, "
                    "no TF32)")
CONV_FN = ("reference.triton_cpu.causal_conv1d_fn: torch F.conv1d(groups=conv_dim, left padding d_conv-1) "
           "+ SiLU, in place of causal_conv1d.causal_conv1d_fn (no Triton kernel)")
CONV_STEP = ("mamba_ssm 2.2.2 Mamba2.step's own torch path (causal_conv1d_update is None): roll window, "
             "multiply-sum with the conv weight, bias, SiLU")

_STATE: dict = {"chosen": {}}


def _block_volume(config) -> int:
    v = 1
    for k, x in config.kwargs.items():
        if k.startswith("BLOCK_SIZE") and isinstance(x, int):
            v *= x
    return v


def largest_block_config(configs):
    """The config with the largest product of BLOCK_SIZE* meta-parameters (first one on ties)."""
    best = configs[0]
    for c in configs[1:]:
        if _block_volume(c) > _block_volume(best):
            best = c
    return best


def chosen_configs() -> dict[str, str]:
    """kernel name → the config the interpreter runs (for the result metadata)."""
    return dict(sorted(_STATE["chosen"].items()))


def causal_conv1d_fn(x, weight, bias=None, seq_idx=None, initial_states=None, return_final_states=False,
                     final_states_out=None, activation=None):
    """causal-conv1d's ``causal_conv1d_fn`` contract for what Mamba2 uses: x (b, d, l), weight (d, w),
    bias (d,) → (b, d, l), out[..., t] = act(bias + sum_k weight[:, k] * x[..., t - (w-1) + k])."""
    import torch.nn.functional as F

    if seq_idx is not None or initial_states is not None or return_final_states or final_states_out is not None:
        raise NotImplementedError("causal_conv1d_fn (torch stand-in): seq_idx / initial or final states "
                                  "are not supported (Mamba2's single-sequence path does not use them)")
    if activation not in (None, "silu", "swish"):
        raise NotImplementedError(f"causal_conv1d_fn: activation {activation!r}")
    d, w = weight.shape
    out = F.conv1d(x, weight.unsqueeze(1), bias, padding=w - 1, groups=d)[..., : x.shape[-1]]
    return F.silu(out) if activation in ("silu", "swish") else out


class _NoOpEvent:
    """Stands in for ``torch.cuda.Event`` on a CPU-only torch (generate() only creates them)."""

    def __init__(self, *args, **kwargs):
        pass

    def record(self, *args, **kwargs):
        pass

    def synchronize(self):
        pass

    def elapsed_time(self, other):  # pragma: no cover - only with enable_timing
        raise RuntimeError("no CUDA events on CPU: timing is measured with time.perf_counter instead")


def _device_context(real):
    def device(dev):
        """``torch.cuda.device`` that is a no-op for a CPU tensor's index (None)."""
        if dev is None or (isinstance(dev, int) and dev < 0) or getattr(dev, "type", None) == "cpu" or dev == "cpu":
            return contextlib.nullcontext()
        return real(dev)

    device.real = real
    return device


def enable_interpreter() -> dict[str, str]:
    """Set TRITON_INTERPRET=1 and apply the five shims (idempotent).  Must run before mamba_ssm is
    imported.  Returns a description of every shim, for the result metadata."""
    if _STATE.get("shims"):
        return dict(_STATE["shims"])
    if any(m == "mamba_ssm" or m.startswith("mamba_ssm.") for m in sys.modules if sys.modules[m] is not None):
        raise RuntimeError("enable_interpreter() must run before mamba_ssm is imported (its kernels are "
                           "bound to the interpreter when they are decorated)")
    os.environ["TRITON_INTERPRET"] = "1"
    import torch
    import triton
    from triton import knobs
    from triton.runtime import autotuner, interpreter

    if not knobs.runtime.interpret:
        raise RuntimeError("TRITON_INTERPRET=1 is set but triton.knobs.runtime.interpret is False")
    shims: dict[str, str] = {"TRITON_INTERPRET": "1 (set before mamba_ssm is imported)"}

    # 1. device context
    torch.cuda.device = _device_context(torch.cuda.device)
    shims["torch.cuda.device"] = "no-op context for CPU tensors (index None)"

    # 2. autotuner: one fixed config, no timing
    orig_init = autotuner.Autotuner.__init__

    def init_one_config(self, *args, **kwargs):
        orig_init(self, *args, **kwargs)
        best = largest_block_config(self.configs)
        self.configs = [best]
        name = getattr(getattr(self, "base_fn", None), "__name__", None) or repr(self.fn)
        _STATE["chosen"][name] = ", ".join(f"{k}={v}" for k, v in best.kwargs.items()) or "(no meta-parameters)"

    autotuner.Autotuner.__init__ = init_one_config
    shims["triton.autotune"] = AUTOTUNE_RULE

    # 3. NumPy 2: tensor.__index__ through .item()
    orig_patch = interpreter._patch_lang_tensor

    def patch_lang_tensor(tensor, scope):
        orig_patch(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.item()))

    interpreter._patch_lang_tensor = patch_lang_tensor
    shims["triton.runtime.interpreter._patch_lang_tensor"] = (
        "tensor.__index__ = int(data.item()) (Triton 3.6 uses int(data) on a 1-element array; NumPy 2 refuses)")

    # 5. CUDA events
    torch.cuda.Event = _NoOpEvent
    shims["torch.cuda.Event"] = "no-op class (generate() creates events even with timing off)"
    _STATE["shims"] = shims
    _STATE["triton"] = triton.__version__
    return dict(shims)


def patch_causal_conv(mamba2_module) -> dict[str, str]:
    """Shim 4: give ``mamba_ssm.modules.mamba2`` our torch ``causal_conv1d_fn`` (its own fallback is
    broken); ``causal_conv1d_update`` must stay None so ``Mamba2.step`` uses its own torch code."""
    if mamba2_module.causal_conv1d_fn is not None:
        raise RuntimeError("mamba_ssm.modules.mamba2.causal_conv1d_fn is already set (the causal-conv1d "
                           "package is installed): the interpreter path expects it absent")
    mamba2_module.causal_conv1d_fn = causal_conv1d_fn
    return {"mamba_ssm.modules.mamba2.causal_conv1d_fn": CONV_FN,
            "mamba_ssm.modules.mamba2.causal_conv1d_update": "None: " + CONV_STEP}
