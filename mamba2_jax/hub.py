"""Fast offline detection for Hugging Face hub access (models and the tokenizer).

huggingface_hub retries a failed request with exponential backoff (about 25 s in all when the
network is down), and has no setting to switch that off.  Before any real hub call this module
asks once, with a short timeout and no retry, whether the hub can be reached:

* ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) set: offline, without touching the network;
* otherwise one ``HEAD`` on the hub endpoint (``HF_ENDPOINT``), ``timeout`` seconds at most.

Callers then use the real huggingface_hub functions online, or ``local_files_only=True``
(the local HF cache only, no network) offline.
"""

from __future__ import annotations

import os

__all__ = ["offline_reason", "PROBE_TIMEOUT_S"]

PROBE_TIMEOUT_S = 1.5


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")


def offline_reason(timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when the hub answers; otherwise why it cannot be used (one short sentence)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE"):
        return "HF_HUB_OFFLINE is set"
    endpoint = constants.ENDPOINT  # what huggingface_hub itself will call (HF_ENDPOINT, read at its import)
    try:
        from huggingface_hub.utils import get_session

        get_session().head(endpoint, timeout=timeout, follow_redirects=False)
    except Exception as e:  # any failure to connect means: do not use the hub
        return f"the hub ({endpoint}) is unreachable: {type(e).__name__}"
    return None
