"""Checkpoint files: the state-spaces and HF formats, read and written as numpy, and hub access.

No JAX here: building a model from these tensors is :mod:`mamba2_jax.loading`.

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
from .fileio import current_umask
from .params import expected_shapes, init_state_dict

__all__ = [
    "CheckpointError", "init_state_dict", "expected_shapes", "validate_state_dict", "read_state_dict",
    "write_checkpoint", "resolve_model_dir", "convert", "config_from_arg", "check_finite",
]

WEIGHT_FILES = ("pytorch_model.bin", "model.safetensors")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read: missing files, bad keys or shapes, unsafe pickles.

    ``cause`` names the underlying error class (for the robustness counts)."""

    cause = "CheckpointError"


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


_ST_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4, "I16": 2,
              "I8": 1, "U8": 1, "U16": 2, "U32": 4, "U64": 8, "BOOL": 1}
_MAX_HEADER = 100 << 20  # safetensors' own limit on the JSON header


def _cause(path: Path, what: str, e: BaseException) -> CheckpointError:
    msg = str(e).splitlines()[0][:300] if str(e) else ""
    err = CheckpointError(f"{path}: {what} ({type(e).__name__}: {msg})")
    err.cause = type(e).__name__
    return err


def safetensors_header(path: Path, expected: dict[str, tuple[int, ...]] | None = None) -> dict[str, Any]:
    """Read and check a safetensors header against the file size before any tensor is read.

    Every claim (header length, dtype, shape, data offsets) is checked against the file's real
    size, so a header that claims a terabyte is refused without allocating anything.  With
    ``expected`` (name -> shape, HF names mapped) mis-shaped tensors are refused here too."""
    size = path.stat().st_size
    if size < 8:
        raise CheckpointError(f"{path}: {size}-byte file is not a safetensors file (truncated or empty)")
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n > min(size - 8, _MAX_HEADER):
            raise CheckpointError(f"{path}: header claims {n} bytes but the file has {size} "
                                  f"(truncated or corrupt safetensors file)")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as e:
        raise _cause(path, "safetensors header is not valid JSON (truncated or corrupt?)", e) from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: safetensors header is not a JSON object (corrupt file)")
    data_len = size - 8 - n
    spans = []
    for name, t in header.items():
        if name == "__metadata__":
            continue
        if not (isinstance(t, dict) and isinstance(t.get("dtype"), str) and isinstance(t.get("shape"), list)
                and isinstance(t.get("data_offsets"), list) and len(t["data_offsets"]) == 2):
            raise CheckpointError(f"{path}: tensor {name!r}: malformed header entry {str(t)[:200]} (corrupt file)")
        if t["dtype"] not in _ST_DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r}: unknown dtype {t['dtype']!r} (corrupt file)")
        shape, (b, e) = t["shape"], t["data_offsets"]
        if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in [*shape, b, e]):
            raise CheckpointError(f"{path}: tensor {name!r}: shape {shape} / offsets {[b, e]} are not "
                                  f"non-negative integers (corrupt file)")
        nbytes = math.prod(shape) * _ST_DTYPES[t["dtype"]]
        if not b <= e <= data_len or e - b != nbytes:
            raise CheckpointError(f"{path}: tensor {name!r} ({t['dtype']}{shape}, {nbytes} bytes) claims bytes "
                                  f"[{b}, {e}) but the data section has {data_len} (truncated or corrupt file)")
        spans.append((b, e))
    spans.sort()
    if any(e0 > b1 for (_, e0), (b1, _) in zip(spans, spans[1:])):
        raise CheckpointError(f"{path}: tensors overlap in the data section (corrupt file)")
    if expected is not None:
        wrong = [f"{k}: expected {expected[_HF_RENAME.get(k, k)]}, got {tuple(t['shape'])}"
                 for k, t in header.items() if k != "__metadata__" and _HF_RENAME.get(k, k) in expected
                 and tuple(t["shape"]) != expected[_HF_RENAME.get(k, k)]]
        if wrong:
            raise CheckpointError(f"{path}: {len(wrong)} mis-shaped: " + "; ".join(wrong[:12]))
    return header


def _check_zip(path: Path) -> None:
    """Refuse zip records that claim more bytes than the file holds (before torch reads them)."""
    import zipfile

    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if info.compress_type != zipfile.ZIP_STORED or info.file_size > size or info.header_offset > size:
                    raise CheckpointError(f"{path}: zip record {info.filename!r} claims {info.file_size} bytes "
                                          f"(method {info.compress_type}) in a {size}-byte file (corrupt checkpoint)")
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as e:
        raise _cause(path, "not a readable torch zip checkpoint (truncated or corrupt?)", e) from None


def _read_bin(path: Path) -> dict[str, np.ndarray]:
    import pickle
    import zipfile

    import torch

    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: 0-byte weights file (truncated or interrupted download?)")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not a torch zip checkpoint (truncated or corrupt file?)")
    _check_zip(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        err = CheckpointError(
            f"{path}: refused to unpickle (weights_only=True allows tensors only; the file tries "
            f"to construct something else, which may be malicious): {str(e).splitlines()[0] if str(e) else ''}")
        err.cause = "UnpicklingError"
        raise err from None
    except MemoryError as e:
        raise _cause(path, "cannot read torch checkpoint (it claims more memory than is available: corrupt?)", e) \
            from None
    except Exception as e:
        raise _cause(path, "cannot read torch checkpoint (truncated or corrupt?)", e) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                            for k, v in obj.items()):
        raise CheckpointError(f"{path}: expected a flat dict of name -> tensor, got {type(obj).__name__}")
    try:
        return {k: _to_numpy(v) for k, v in obj.items()}
    except Exception as e:
        raise _cause(path, "cannot read torch checkpoint tensors (corrupt?)", e) from None


def _read_safetensors(path: Path, expected: dict[str, tuple[int, ...]] | None = None) -> dict[str, np.ndarray]:
    header = safetensors_header(path, expected)
    try:
        if any(isinstance(t, dict) and t.get("dtype") == "BF16" for t in header.values()):
            from safetensors.torch import load_file as tload

            return {k: _to_numpy(v) for k, v in tload(str(path)).items()}
        from safetensors.numpy import load_file

        return dict(load_file(str(path)))
    except MemoryError as e:
        raise _cause(path, "cannot read safetensors file (it claims more memory than is available)", e) from None
    except Exception as e:
        raise _cause(path, "cannot read safetensors file (truncated or corrupt?)", e) from None


# float dtype -> (same-width unsigned int, mask without the sign bit, exponent all ones): a value is
# NaN or Inf exactly when its bits, sign masked off, are >= the all-ones exponent
_NONFINITE_BITS = {"float16": (np.uint16, 0x7FFF, 0x7C00), "bfloat16": (np.uint16, 0x7FFF, 0x7F80),
                   "float32": (np.uint32, 0x7FFF_FFFF, 0x7F80_0000),
                   "float64": (np.uint64, 0x7FFF_FFFF_FFFF_FFFF, 0x7FF0_0000_0000_0000)}
_CHUNK = 1 << 18  # elements per step: the masked copy stays in cache


def has_nonfinite(a: np.ndarray) -> bool:
    """Whether a float array holds any NaN or Inf, tested on its raw bits in cache-sized chunks
    (exact; numpy's ``isfinite`` runs about 8x slower on float16 and writes an array-sized mask)."""
    a = np.asarray(a)
    spec = _NONFINITE_BITS.get(a.dtype.name)
    if spec is None:
        return bool(a.dtype.kind in "fc" and not np.isfinite(a).all())
    u, mask, exp = spec
    flat = np.ascontiguousarray(a).reshape(-1).view(u)
    buf = np.empty(min(_CHUNK, flat.size), u)
    for i in range(0, flat.size, _CHUNK):
        part = flat[i:i + _CHUNK]
        masked = np.bitwise_and(part, u(mask), out=buf[:part.size])
        if masked.max() >= exp:
            return True
    return False


def check_finite(sd: dict[str, np.ndarray]) -> dict[str, int]:
    """name -> number of NaN/Inf entries, for the tensors that have any."""
    out = {}
    for k, v in sd.items():
        a = np.asarray(v)
        if (a.dtype.kind == "f" or a.dtype.name in _NONFINITE_BITS) and has_nonfinite(a):
            out[k] = int(a.size - np.count_nonzero(np.isfinite(a)))
    return out


def read_state_dict(model_dir: str | Path, check_finite: bool = True
                    ) -> tuple[Mamba2Config, dict[str, np.ndarray], str]:
    """Read config and tensors from a local directory → (config, state-spaces-named dict, format).

    Weights holding NaN or Inf (a flipped exponent bit, a diverged training run) are refused: a
    CheckpointError names the tensors and counts.  ``check_finite=False`` reads them anyway (what
    ``info`` does to report them, and ``allow_nonfinite=True`` / ``--allow-nonfinite`` above)."""
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
        sd = _read_safetensors(model_dir / "model.safetensors", expected_shapes(cfg))
    elif (model_dir / "pytorch_model.bin").exists():
        sd = _read_bin(model_dir / "pytorch_model.bin")
    else:
        raise CheckpointError(f"{model_dir}: no weights file (expected one of {WEIGHT_FILES})")
    sd = {_HF_RENAME.get(k, k): v for k, v in sd.items()}
    validate_state_dict(cfg, sd, source=str(model_dir))
    bad_dtype = sorted(f"{k}: {np.asarray(v).dtype}" for k, v in sd.items() if np.asarray(v).dtype.kind != "f")
    if bad_dtype:
        raise CheckpointError(f"{model_dir}: {len(bad_dtype)} tensor(s) are not floating point: "
                              + ", ".join(bad_dtype[:12]))
    if check_finite:
        bad = _nonfinite_summary(sd)
        if bad:
            err = CheckpointError(f"{model_dir}: non-finite weights (NaN/Inf; corrupt or diverged checkpoint): {bad}. "
                                  f"To load them anyway: --allow-nonfinite (CLI) or allow_nonfinite=True (API)")
            err.cause = "NonFiniteWeights"
            raise err
    if "lm_head.weight" not in sd:
        sd["lm_head.weight"] = sd["backbone.embedding.weight"]
    return cfg, sd, fmt


def _nonfinite_summary(sd: dict[str, np.ndarray]) -> str:
    bad = check_finite(sd)
    if not bad:
        return ""
    return f"{sum(bad.values())} values in {len(bad)} tensor(s): " + ", ".join(
        f"{k} ({n})" for k, n in sorted(bad.items())[:8]) + (" ..." if len(bad) > 8 else "")


# ------------------------------------------------------------------------------ writing
def write_checkpoint(cfg: Mamba2Config, sd: dict[str, np.ndarray], out_dir: str | Path,
                     fmt: str = "state-spaces", dtype: str | None = None, weights: str | None = None) -> Path:
    """Write ``sd`` (state-spaces names) as a checkpoint directory.

    fmt="state-spaces": mamba_ssm config.json + pytorch_model.bin (or model.safetensors if
    ``weights="safetensors"``); fmt="hf": transformers Mamba2Config + model.safetensors.
    Tied embeddings share one storage in the .bin, as torch.save of a tied model does.

    Never leaves partial output: everything is validated first, a new directory is written under
    a temporary name and renamed into place; in an existing directory each file is written to a
    temporary file and replaced only after all of them were written (an error, e.g. ENOSPC,
    leaves the previous checkpoint as it was).
    """
    out_dir = Path(out_dir)
    if fmt not in ("state-spaces", "hf"):
        raise ValueError(f"unknown checkpoint format {fmt!r} (state-spaces | hf)")
    validate_state_dict(cfg, sd, source="state dict to write")
    arrs = {k: (np.asarray(v).astype(dtype) if dtype else np.asarray(v)) for k, v in sd.items()}
    if fmt == "state-spaces":
        config_text = json.dumps(cfg.to_state_spaces(), indent=4)
        weights = weights or "bin"
    else:
        if cfg.norm_before_gate:  # the transformers layout cannot say it (Mamba2Config.from_hf ignores the field)
            raise ConfigError("norm_before_gate=True cannot be written in the transformers layout (transformers, "
                              "llama.cpp and our reader gate before the norm); write fmt='state-spaces'")
        config_text = json.dumps(cfg.to_hf(), indent=2)
        arrs = {("backbone.embeddings.weight" if k == "backbone.embedding.weight" else k): v for k, v in arrs.items()}
        weights = "safetensors"
    if weights == "bin":
        import torch

        tensors = {k: torch.from_numpy(np.array(v, copy=True, order="C")) for k, v in arrs.items()}
        if cfg.tie_embeddings:
            tensors["lm_head.weight"] = tensors["backbone.embedding.weight"]
        wname, stale_name = "pytorch_model.bin", "model.safetensors"
        write_weights = lambda p: torch.save(tensors, p)
    else:
        from safetensors.numpy import save_file

        if cfg.tie_embeddings:
            arrs.pop("lm_head.weight", None)  # safetensors cannot alias; tied head is implied
        wname, stale_name = "model.safetensors", "pytorch_model.bin"
        write_weights = lambda p: save_file({k: np.ascontiguousarray(v) for k, v in arrs.items()}, p,
                                            metadata={"format": "pt"})
    new_dir = not out_dir.exists()
    stage = out_dir
    if new_dir:
        import tempfile

        out_dir.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    tmps: list[tuple[Path, Path]] = []
    try:
        for name, fn in ((wname, write_weights), ("config.json", lambda p: Path(p).write_text(config_text))):
            tmp = stage / f".{name}.{os.getpid()}.{id(tmps)}.tmp"
            tmps.append((tmp, stage / name))
            fn(str(tmp))
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        for tmp, final in tmps:  # weights first: a config never describes weights that are not there
            os.replace(tmp, final)
        if new_dir:
            os.chmod(stage, 0o777 & ~current_umask())
            try:
                os.rename(stage, out_dir)
            except OSError:
                if not out_dir.is_dir():
                    raise
                # a concurrent writer created it first: replace its files one by one, weights first
                for _, final in tmps:
                    os.replace(final, out_dir / final.name)
                os.rmdir(stage)
    except BaseException:
        for tmp, _ in tmps:
            tmp.unlink(missing_ok=True)
        if new_dir:
            import shutil

            shutil.rmtree(stage, ignore_errors=True)
        raise
    stale = out_dir / stale_name
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
    except Exception as e:
        why = (f"offline: {offline}, and it is not in the local HF cache" if offline
               else f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}")
        raise CheckpointError(
            f"could not fetch {s!r} from the Hugging Face hub ({why}).\n"
            f"Download it elsewhere (`huggingface-cli download {s} --local-dir DIR`) and pass the local directory "
            f"instead: --model DIR or load_pretrained('DIR'), where DIR holds config.json and pytorch_model.bin "
            f"or model.safetensors."
        ) from None
    return Path(local)


# ------------------------------------------------------------------------------ conversion
def convert(src: str | Path, dst: str | Path, fmt: str, dtype: str | None = None,
            allow_nonfinite: bool = False) -> Path:
    """Convert a checkpoint between the state-spaces and HF layouts, without going through JAX
    (non-finite weights refused unless ``allow_nonfinite``)."""
    cfg, sd, _ = read_state_dict(resolve_model_dir(src), check_finite=not allow_nonfinite)
    return write_checkpoint(cfg, sd, dst, fmt=fmt, dtype=dtype)


def config_from_arg(arg: str) -> Mamba2Config:
    """A preset name or a path to a config.json."""
    p = Path(arg)
    if p.exists():
        return Mamba2Config.from_json(p)
    return get_preset(arg)
