"""Serving: continuous batching over fixed O(1) state slots, exact prefix-state reuse, an
OpenAI-compatible HTTP API (``mamba2-jax serve``; docs/serving.md)."""

from .engine import Engine, EngineError, QueueFull, Request, RequestParams
from .prefix_cache import PrefixCache

__all__ = ["Engine", "EngineError", "QueueFull", "Request", "RequestParams", "PrefixCache"]
