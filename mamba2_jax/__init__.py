"""mamba2_jax: pure-JAX Mamba-2 inference (chunked SSD prefill, O(1) cached decode).

The public names are imported lazily (PEP 562), so that light modules such as
:mod:`mamba2_jax.fileio` and :mod:`mamba2_jax.paths` can be used without importing JAX (the
reference processes, which run without JAX, use them)."""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "Mamba2Cache": "cache",
    "CheckpointError": "checkpoint",
    "load_pretrained": "loading",
    "save_pretrained": "loading",
    "ConfigError": "config",
    "Mamba2Config": "config",
    "get_preset": "config",
    "Mamba2LMHeadModel": "model",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
