"""Checkpoint I/O: random initialisation, state-spaces and HF formats, hub access.

Formats
-------
* **state-spaces** (mamba_ssm ``MambaLMHeadModel.save_pretrained``): ``config.json`` in mamba_ssm
  format plus ``pytorch_model.bin`` (the published files are fp16), keyed
  ``backbone.embedding.weight``, ``backbone.layers.{i}.norm.weight``,
  ``backbone.layers.{i}.mixer.{in_proj.weight, conv1d.weight, conv1d.bias, dt_bias, A_log, D,
  norm.weight, out_proj.weight}``, ``backbone.norm_f.weight``, ``lm_head.weight`` (tied).
  ``model.safetensors`` with the same keys is read too.
* **hf** (transformers ``Mamba2ForCausalLM``): ``config.json`` is a ``Mamba2Config``,
  ``model.safetensors`` uses ``backbone.embeddings.weight`` and otherwise the same names.

Pickles are only ever opened with ``torch.load(weights_only=True, mmap=True)``: a file whose
unpickling would construct anything but tensors is refused before any code runs.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from .config import ConfigError, Mamba2Config, get_preset
from .fileio import atomic_write, atomic_write_text
from .params import expected_shapes, init_state_dict

__all__ = [
    "CheckpointError", "init_state_dict", "expected_shapes", "validate_state_dict", "read_state_dict",
    "write_checkpoint", "load_pretrained", "save_pretrained", "resolve_model_dir", "convert", "precision_policy",
]

WEIGHT_FILES = ("pytorch_model.bin", "model.safetensors")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read: missing files, bad keys or shapes, unsafe pickles."""


def validate_state_dict(cfg: Mamba2Config, sd: dict[str, Any], source: str = "checkpoint") -> None:
    """Strict key/shape check; raises one CheckpointError listing every problem."""
    exp = expected_shapes(cfg)
    if cfg.tie_embeddings and "lm_head.weight" not in sd:
        exp = {k: v for k, v in exp.items() if k != "lm_head.weight"}
    missing = sorted(set(exp) - set(sd))
    unexpected = sorted(set(sd) - set(exp))
    wrong = [f"{k}: expected {exp[k]}, got {tuple(sd[k].shape)}"
             for k in sorted(set(exp) & set(sd)) if tuple(sd[k].shape) != exp[k]]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: " + ", ".join(missing[:12]) + (" ..." if len(missing) > 12 else ""))
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: " + ", ".join(unexpected[:12])
                        + (" ..." if len(unexpected) > 12 else ""))
    if wrong:
        problems.append(f"{len(wrong)} mis-shaped: " + "; ".join(wrong[:12]) + (" ..." if len(wrong) > 12 else ""))
    if problems:
        raise CheckpointError(f"{source} does not match config ({cfg.name}, n_layer={cfg.n_layer}, "
                              f"d_model={cfg.d_model}):\n  " + "\n  ".join(problems))


# ------------------------------------------------------------------------------ reading
_HF_RENAME = {"backbone.embeddings.weight": "backbone.embedding.weight"}


def _to_numpy(t) -> np.ndarray:
    import torch

    if t.dtype == torch.bfloat16:
        return t.float().numpy()  # numpy has no bfloat16; widen (exact)
    return t.numpy()


def _read_bin(path: Path) -> dict[str, np.ndarray]:
    import pickle
    import zipfile

    import torch

    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not a torch zip checkpoint (truncated or corrupt file?)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused to unpickle (weights_only=True allows tensors only; the file tries "
            f"to construct something else, which may be malicious): {str(e).splitlines()[0]}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read torch checkpoint (truncated or corrupt?): {e}") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a flat dict of tensors")
    return {k: _to_numpy(v) for k, v in obj.items()}


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return dict(load_file(str(path)))
    except (SafetensorError, OSError, ValueError) as e:
        if "bfloat16" in str(e) or "BF16" in str(e):
            from safetensors.torch import load_file as tload

            return {k: _to_numpy(v) for k, v in tload(str(path)).items()}
        raise CheckpointError(f"{path}: cannot read safetensors file (truncated or corrupt?): {e}") from None


def read_state_dict(model_dir: str | Path) -> tuple[Mamba2Config, dict[str, np.ndarray], str]:
    """Read config and tensors from a local directory → (config, state-spaces-named dict, format)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise CheckpointError(f"{model_dir}: not a directory")
    try:
        cfg = Mamba2Config.from_json(model_dir / "config.json")
    except ConfigError as e:
        raise CheckpointError(f"{model_dir}: {e}") from None
    raw = json.loads((model_dir / "config.json").read_text())
    fmt = "hf" if "hidden_size" in raw else "state-spaces"
    if (model_dir / "model.safetensors").exists():
        sd = _read_safetensors(model_dir / "model.safetensors")
    elif (model_dir / "pytorch_model.bin").exists():
        sd = _read_bin(model_dir / "pytorch_model.bin")
    else:
        raise CheckpointError(f"{model_dir}: no weights file (expected one of {WEIGHT_FILES})")
    sd = {_HF_RENAME.get(k, k): v for k, v in sd.items()}
    validate_state_dict(cfg, sd, source=str(model_dir))
    if "lm_head.weight" not in sd:
        sd["lm_head.weight"] = sd["backbone.embedding.weight"]
    return cfg, sd, fmt


# ------------------------------------------------------------------------------ writing
def write_checkpoint(cfg: Mamba2Config, sd: dict[str, np.ndarray], out_dir: str | Path,
                     fmt: str = "state-spaces", dtype: str | None = None, weights: str | None = None) -> Path:
    """Write ``sd`` (state-spaces names) as a checkpoint directory.

    fmt="state-spaces": mamba_ssm config.json + pytorch_model.bin (or model.safetensors if
    ``weights="safetensors"``); fmt="hf": transformers Mamba2Config + model.safetensors.
    Tied embeddings share one storage in the .bin, as torch.save of a tied model does.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    validate_state_dict(cfg, sd, source="state dict to write")
    arrs = {k: (np.asarray(v).astype(dtype) if dtype else np.asarray(v)) for k, v in sd.items()}
    if fmt == "state-spaces":
        # json.dumps, not the strict results encoder: a finite-lower, infinite-upper dt_limit is
        # written as mamba_ssm itself writes it (Python's JSON ``Infinity``)
        atomic_write_text(out_dir / "config.json", json.dumps(cfg.to_state_spaces(), indent=4))
        weights = weights or "bin"
    elif fmt == "hf":
        atomic_write_text(out_dir / "config.json", json.dumps(cfg.to_hf(), indent=2))
        arrs = {("backbone.embeddings.weight" if k == "backbone.embedding.weight" else k): v for k, v in arrs.items()}
        weights = "safetensors"
    else:
        raise ValueError(f"unknown checkpoint format {fmt!r} (state-spaces | hf)")
    if weights == "bin":
        import torch

        tensors = {k: torch.from_numpy(np.array(v, copy=True, order="C")) for k, v in arrs.items()}
        if cfg.tie_embeddings:
            tensors["lm_head.weight"] = tensors["backbone.embedding.weight"]
        atomic_write(out_dir / "pytorch_model.bin", lambda f: torch.save(tensors, f))
        stale = out_dir / "model.safetensors"
    else:
        from safetensors.numpy import save_file

        if cfg.tie_embeddings:
            arrs.pop("lm_head.weight", None)  # safetensors cannot alias; tied head is implied
        atomic_write(out_dir / "model.safetensors",
                     lambda p: save_file({k: np.ascontiguousarray(v) for k, v in arrs.items()}, p,
                                         metadata={"format": "pt"}), binary=None)
        stale = out_dir / "pytorch_model.bin"
    if stale.exists():
        stale.unlink()
    return out_dir


# ------------------------------------------------------------------------------ hub
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_model_dir(path_or_hub_id: str | Path, revision: str | None = None) -> Path:
    """A local directory as is; otherwise a hub id downloaded with huggingface_hub.

    Offline (``HF_HUB_OFFLINE``, or the hub does not answer within ``hub.PROBE_TIMEOUT_S``), only
    the local HF cache is consulted and a miss fails at once, without huggingface_hub's retries."""
    p = Path(path_or_hub_id).expanduser()
    if p.is_dir():
        return p
    s = str(path_or_hub_id)
    if not _HUB_ID.match(s) or p.exists():
        raise CheckpointError(f"{s}: no such local checkpoint directory, and not a hub id (owner/name)")
    from huggingface_hub import snapshot_download

    from .hub import offline_reason

    offline = offline_reason()
    try:
        local = snapshot_download(repo_id=s, revision=revision, local_files_only=offline is not None,
                                  allow_patterns=["config.json", "*.bin", "*.safetensors"])
    except Exception as e:  # noqa: BLE001 - offline / unreachable / missing repo all end here
        why = (f"offline: {offline}, and it is not in the local HF cache" if offline
               else f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}")
        raise CheckpointError(
            f"could not fetch {s!r} from the Hugging Face hub ({why}).\n"
            f"Download it elsewhere (`huggingface-cli download {s} --local-dir DIR`) and pass the local directory "
            f"instead: --model DIR or load_pretrained('DIR'), where DIR holds config.json and pytorch_model.bin "
            f"or model.safetensors."
        ) from None
    return Path(local)


# ------------------------------------------------------------------------------ public API
def precision_policy(dtype) -> dict[str, str]:
    """The precision policy in effect for a param dtype (recorded by every run)."""
    import jax.numpy as jnp

    name = jnp.dtype(dtype).name
    if name == "float32":
        return {"mode": "parity", "param_dtype": name, "state_dtype": "float32", "accum_dtype": "float32",
                "matmul_precision": "highest"}
    if name in ("bfloat16", "float16"):
        return {"mode": "fast", "param_dtype": name, "state_dtype": "float32", "accum_dtype": "float32",
                "matmul_precision": "default"}
    raise ValueError(f"unsupported param dtype {name!r} (float32 | bfloat16 | float16)")


def model_from_state_dict(cfg: Mamba2Config, sd: dict[str, np.ndarray], dtype="float32", precision=None,
                          scan_chunk_size=None, mesh=None):
    import jax.numpy as jnp

    from .model import Mamba2LMHeadModel
    from .params import jax_params_from_state_dict

    pol = precision_policy(dtype)
    prec = precision if precision is not None else pol["matmul_precision"]
    if mesh is None:
        params = jax_params_from_state_dict(cfg, sd, jnp.dtype(dtype))
    else:
        from . import sharding

        params = sharding.shard_params(cfg, sharding.host_params(cfg, sd, dtype), mesh)
    model = Mamba2LMHeadModel(cfg, params, precision=prec, scan_chunk_size=scan_chunk_size)
    model.policy = {**pol, "matmul_precision": str(prec), "scan_chunk_size": model.scan_chunk_size}
    if mesh is not None:
        model.mesh = mesh
        model.policy["mesh"] = sharding.describe_mesh(mesh)
    return model


def load_pretrained(path_or_hub_id: str | Path, dtype="float32", revision: str | None = None, precision=None,
                    scan_chunk_size=None, mesh=None):
    """Load a Mamba-2 checkpoint (local dir in either format, or a hub id) as a JAX model.

    dtype "float32" is the parity mode (matmul precision "highest"); "bfloat16"/"float16" is the
    fast mode (low-precision params, float32 SSM state and accumulation).  The policy in effect is
    recorded on ``model.policy``.  ``mesh`` (a ``jax.sharding.Mesh`` with axes ("data", "model"),
    or a string such as "data=2,model=4") shards the parameters over devices, each device
    receiving only its own shards; see :mod:`mamba2_jax.sharding`.
    """
    model_dir = resolve_model_dir(path_or_hub_id, revision)
    cfg, sd, fmt = read_state_dict(model_dir)
    if mesh is not None and not hasattr(mesh, "devices"):
        from .sharding import make_mesh

        mesh = make_mesh(mesh)
    model = model_from_state_dict(cfg, sd, dtype=dtype, precision=precision, scan_chunk_size=scan_chunk_size,
                                  mesh=mesh)
    model.source = {"path": str(model_dir), "format": fmt,
                    "stored_dtype": str(np.asarray(sd["backbone.embedding.weight"]).dtype)}
    return model


def save_pretrained(model, out_dir: str | Path, format: str = "state-spaces", dtype: str | None = None,
                    weights: str | None = None) -> Path:
    from .params import state_dict_from_model

    sd = state_dict_from_model(model)
    return write_checkpoint(model.cfg, sd, out_dir, fmt=format, dtype=dtype, weights=weights)


def convert(src: str | Path, dst: str | Path, fmt: str, dtype: str | None = None) -> Path:
    """Convert a checkpoint between the state-spaces and HF layouts, without going through JAX."""
    cfg, sd, _ = read_state_dict(resolve_model_dir(src))
    return write_checkpoint(cfg, sd, dst, fmt=fmt, dtype=dtype)


def config_from_arg(arg: str) -> Mamba2Config:
    """A preset name or a path to a config.json."""
    p = Path(arg)
    if p.exists():
        return Mamba2Config.from_json(p)
    return get_preset(arg)
