"""Import shims for running mamba_ssm v2.2.2 and transformers 5.x side by side.

* ``prepare_mamba_ssm_import()``: mamba_ssm's package ``__init__`` imports
  ``selective_scan_cuda`` (a CUDA extension that a ``MAMBA_SKIP_CUDA_BUILD=TRUE`` install does
  not build) and ``mamba_ssm/utils/generation.py`` imports ``GreedySearchDecoderOnlyOutput`` /
  ``SampleDecoderOnlyOutput`` from ``transformers.generation`` (removed in transformers 5, where
  the class is ``GenerateDecoderOnlyOutput``).  We install a stub for the first (only when the
  real extension is absent; any use of it raises) and aliases for the second.
* ``block_mamba_ssm()``: transformers 5.x's Mamba2 binds mamba_ssm's Triton kernels at import time
  whenever ``import mamba_ssm`` succeeds, even for CPU tensors.  The HF backend calls this before
  importing transformers so that the pure-PyTorch ``torch_forward`` path is used.
"""

from __future__ import annotations

import importlib.util
import sys
import types

__all__ = ["prepare_mamba_ssm_import", "block_mamba_ssm", "mamba_ssm_blocked"]

_BLOCKED = ("mamba_ssm", "causal_conv1d", "causal_conv1d_cuda", "selective_scan_cuda")


class _MissingExtension(types.ModuleType):
    """Stands in for a CUDA extension module that was not built; any attribute access fails."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        raise RuntimeError(
            f"{self.__name__}.{name}: this CUDA extension is a stub (mamba_ssm was installed with "
            "MAMBA_SKIP_CUDA_BUILD=TRUE). The mamba_ssm_ref_cpu backend never calls it; use the "
            "mamba_ssm_triton backend in a CUDA environment for the real kernels.")


def prepare_mamba_ssm_import() -> dict:
    """Make ``import mamba_ssm`` work without its CUDA extension and with transformers 5.

    Returns a dict describing what was shimmed (recorded in golden-file metadata)."""
    shims = {}
    if "selective_scan_cuda" not in sys.modules and importlib.util.find_spec("selective_scan_cuda") is None:
        sys.modules["selective_scan_cuda"] = _MissingExtension("selective_scan_cuda")
        shims["selective_scan_cuda"] = "stub (not built)"
    try:
        import transformers.generation as tg
    except ImportError:
        tg = None
    if tg is not None:
        for old, new in (("GreedySearchDecoderOnlyOutput", "GenerateDecoderOnlyOutput"),
                         ("SampleDecoderOnlyOutput", "GenerateDecoderOnlyOutput")):
            try:
                getattr(tg, old)
            except (AttributeError, ImportError):
                setattr(tg, old, getattr(tg, new))
                shims[f"transformers.generation.{old}"] = f"alias of {new}"
    return shims


def block_mamba_ssm() -> None:
    """Make mamba_ssm / causal_conv1d unimportable in this process (before transformers loads)."""
    already = [m for m in _BLOCKED if m in sys.modules and sys.modules[m] is not None]
    if already:
        raise RuntimeError(
            f"{already} already imported in this process: the transformers backend must run in a "
            "process where mamba_ssm is not importable (HF Mamba2 would bind its Triton kernels).")
    for m in _BLOCKED:
        sys.modules[m] = None  # `import m` now raises ImportError


def mamba_ssm_blocked() -> bool:
    return all(sys.modules.get(m, 0) is None for m in _BLOCKED[:2])
