"""Golden files: what a reference process writes and the parity experiment reads (format golden-v1).

One ``.npz`` per (model, reference backend) with, per prompt ``p{i}.``: the input ids, the per-layer
hidden states, the logits at up to ``MAX_LOGIT_POSITIONS`` positions, and the greedy continuation
with the reference's top-k ids and values and top-1/top-2 margin at every step; plus ``meta_json``
(and the same metadata as a ``.json`` beside it).  NumPy only: the reference processes, which run
without JAX, write it with :class:`GoldenWriter`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import atomic_savez, atomic_write_text

__all__ = ["MAX_LOGIT_POSITIONS", "GoldenWriter", "logit_positions", "read_golden"]

MAX_LOGIT_POSITIONS = 64


def logit_positions(T: int, max_positions: int = MAX_LOGIT_POSITIONS) -> np.ndarray:
    """Prompt positions whose full logits are stored: all if few, else evenly spaced incl. the last."""
    if T <= max_positions:
        return np.arange(T, dtype=np.int32)
    return np.unique(np.round(np.linspace(0, T - 1, max_positions)).astype(np.int32))


class GoldenWriter:
    def __init__(self):
        self.arrays: dict[str, np.ndarray] = {}
        self.prompt_ids: list[str] = []

    def add(self, i: int, pid: str, input_ids, hidden, logits_all, steps: list[dict]) -> None:
        """hidden (n_layer, T, d) or None (a backend without hidden states: stored as (0, T, 0)),
        logits_all (T, V) (numpy or torch), steps from step_record."""
        T = len(input_ids)
        pos = logit_positions(T)
        to_np = lambda a: (a.detach().cpu().float().numpy() if hasattr(a, "detach") else np.asarray(a)
                           ).astype(np.float32)
        pre = f"p{i}."
        self.arrays[pre + "input_ids"] = np.asarray(input_ids, np.int32)
        self.arrays[pre + "hidden"] = np.zeros((0, T, 0), np.float32) if hidden is None else to_np(hidden)
        self.arrays[pre + "logits_pos"] = pos
        self.arrays[pre + "logits"] = to_np(logits_all)[pos]
        self.arrays[pre + "greedy_tokens"] = np.array([s["token"] for s in steps], np.int32)
        self.arrays[pre + "greedy_margin"] = np.array([s["margin"] for s in steps], np.float32)
        self.arrays[pre + "greedy_absmax"] = np.array([s["absmax"] for s in steps], np.float32)
        self.arrays[pre + "greedy_top_ids"] = np.stack([s["top_ids"] for s in steps]).astype(np.int32)
        self.arrays[pre + "greedy_top_vals"] = np.stack([s["top_vals"] for s in steps]).astype(np.float32)
        self.prompt_ids.append(pid)

    def write(self, out: str | Path, meta: dict[str, Any]) -> Path:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        meta = {**meta, "prompt_ids": self.prompt_ids, "n_prompts": len(self.prompt_ids), "format": "golden-v1"}
        text = json.dumps(meta, indent=2, default=str)
        atomic_savez(out, meta_json=np.array(text), **self.arrays)
        atomic_write_text(out.with_suffix(".json"), text)
        return out


def read_golden(path: str | Path) -> tuple[dict[str, Any], list[dict[str, np.ndarray]]]:
    """→ (metadata, [per-prompt dict of arrays without the 'p{i}.' prefix])."""
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta_json"]))
        prompts = []
        for i in range(meta["n_prompts"]):
            pre = f"p{i}."
            prompts.append({k[len(pre):]: z[k] for k in z.files if k.startswith(pre)})
    return meta, prompts
