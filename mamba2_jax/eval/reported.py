"""The paper's claims and the project's targets: the one reader of ``paper/reported.yaml``.

Every number the artifact compares against (the paper's 27x-36x, ~15% MFU, 64% HBU, +-0.0005, 64
greedy steps, its five checkpoints; the project's peer-speedup targets) is written once, in
``paper/reported.yaml`` with its source, and read here by the figures, the paper tables
(``paper/compare.py``) and ``experiments/peers.py``.

Where the file lives: ``paper/reported.yaml`` of the source checkout.  It is paper data, not part
of the installed package (the figures, tables and peer runs that read it need a checkout anyway);
outside a checkout pass ``path=`` explicitly, or a ``FileNotFoundError`` says so.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from ..paths import checkout_root

__all__ = ["default_path", "load_reported", "claim", "targets", "paper_models", "cite", "device_name",
           "count_word", "DEVICE_NAMES"]

# display names of the hardware profiles the claims are stated on (mamba2_jax/eval/conf/hardware)
DEVICE_NAMES = {"tpu_v6e": "TPU v6e", "l40s": "NVIDIA L40S", "h100_sxm": "NVIDIA H100 SXM", "cpu": "CPU",
                "unknown": "unknown device"}
_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def default_path() -> Path:
    """``<checkout>/paper/reported.yaml``; FileNotFoundError outside a source checkout."""
    root = checkout_root()
    p = root / "paper" / "reported.yaml" if root is not None else None
    if p is None or not p.is_file():
        raise FileNotFoundError("paper/reported.yaml not found: it ships with the source checkout, not the "
                                "package; pass its path explicitly")
    return p


@functools.lru_cache(maxsize=8)
def _load(path: str, mtime_ns: int) -> dict[str, Any]:
    import yaml

    doc = yaml.safe_load(Path(path).read_text())
    if not isinstance(doc, dict) or not isinstance(doc.get("claims"), list) or "paper" not in doc:
        raise ValueError(f"{path}: not a reported-claims file (needs 'paper' and a 'claims' list)")
    return doc


def load_reported(path: str | os.PathLike | dict | None = None) -> dict[str, Any]:
    """The parsed file (``path`` defaults to :func:`default_path`; an already parsed dict passes through)."""
    if isinstance(path, dict):
        return path
    p = Path(path) if path is not None else default_path()
    return _load(str(p.resolve()), p.stat().st_mtime_ns)


def claim(claim_id: str, reported: str | os.PathLike | dict | None = None) -> dict[str, Any]:
    """One claim by its ``id``; KeyError naming the known ids otherwise."""
    claims = load_reported(reported)["claims"]
    for c in claims:
        if c.get("id") == claim_id:
            return c
    raise KeyError(f"no claim {claim_id!r} in reported.yaml (have {[c.get('id') for c in claims]})")


def targets(experiment: str, reported: str | os.PathLike | dict | None = None) -> list[dict[str, Any]]:
    """The project's own targets for ``experiment`` (the ``targets:`` section), in file order."""
    return [t for t in load_reported(reported).get("targets") or [] if t.get("experiment") == experiment]


def paper_models(reported: str | os.PathLike | dict | None = None) -> tuple[str, ...]:
    """The paper's checkpoints (``paper.models``), smallest first."""
    return tuple(load_reported(reported)["paper"]["models"])


def cite(c: dict[str, Any]) -> str:
    """The claim's source without its parenthesised details: 'arXiv 2603.09555 v2 abstract'."""
    return str(c.get("source", "?")).split(" (", 1)[0]


def device_name(c: dict[str, Any]) -> str:
    """Display name of the device the claim is stated on (its ``comparable_when.device``)."""
    dev = (c.get("comparable_when") or {}).get("device")
    return DEVICE_NAMES.get(dev, str(dev)) if dev else "any device"


def count_word(n: int) -> str:
    return _WORDS[n] if 0 <= n < len(_WORDS) else str(n)
