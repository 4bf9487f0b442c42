"""File primitives shared by the core and the evaluation harness: one atomic writer, one strict
JSON encoder, one file hasher.

* Every write goes to a temporary file in the target directory, is fsynced, then ``os.replace``d
  over the target: a reader (or a resumed run) never sees a half-written file, a killed writer
  leaves the previous file intact, and an ``OSError`` (ENOSPC, EIO) raised while writing leaves the
  previous file intact too.  Temporary names are unique per writer, so two concurrent runs writing
  the same file each replace it whole.
* JSON is strict (RFC 8259): ``allow_nan=False``.  The one NaN policy: non-finite floats become
  ``null``; NumPy scalars and arrays become Python numbers and lists; anything else unknown is a
  ``TypeError`` (never silently ``str()``-ed) unless it has a ``to_dict``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_savez",
           "to_jsonable", "dumps_strict", "sha256_file", "sha256_files"]


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], binary: bool = True) -> Path:
    """Call ``write(f)`` on a fresh temporary file beside ``path``, fsync, then rename over ``path``.

    ``write`` may also be given the temporary *name* instead of an open file: if it takes a
    ``str``/``Path`` (as ``safetensors.numpy.save_file`` does), pass ``binary=None``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if binary is None:
            os.close(fd)
            write(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        else:
            text_kw = {} if binary else {"encoding": "utf-8", "newline": ""}
            with os.fdopen(fd, "wb" if binary else "w", **text_kw) as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def current_umask() -> int:
    """The process umask (read without changing it for longer than the call)."""
    m = os.umask(0)
    os.umask(m)
    return m


def _fsync_dir(d: Path) -> None:
    """Make the rename itself durable (best effort: not every filesystem allows it)."""
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text), binary=False)


def to_jsonable(x: Any) -> Any:
    """The one JSON policy: NaN and ±Inf → None; NumPy → Python; tuples/sets → lists; Paths → str."""
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, set)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return to_jsonable(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if math.isfinite(x) else None
    if isinstance(x, (str, int)) or x is None:
        return x
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    if hasattr(x, "to_dict"):
        return to_jsonable(x.to_dict())
    if hasattr(x, "dtype") and hasattr(x, "tolist"):  # jax arrays, torch tensors
        return to_jsonable(np.asarray(x).tolist())
    raise TypeError(f"not JSON-serialisable: {type(x).__name__}")


def dumps_strict(obj: Any, indent: int | None = 1, sort_keys: bool = False) -> str:
    return json.dumps(to_jsonable(obj), indent=indent, sort_keys=sort_keys, allow_nan=False)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1, sort_keys: bool = False) -> Path:
    return atomic_write_text(path, dumps_strict(obj, indent=indent, sort_keys=sort_keys) + "\n")


def atomic_savez(path: str | os.PathLike, compress: bool = False, **arrays: Any) -> Path:
    """``np.savez`` (or ``savez_compressed``) written atomically."""
    return atomic_write(path, lambda f: (np.savez_compressed if compress else np.savez)(f, **arrays))


def sha256_file(path: str | os.PathLike, block: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(block), b""):
            h.update(chunk)
    return h.hexdigest()


CHECKPOINT_FILES = ("config.json", "pytorch_model.bin", "model.safetensors")


def sha256_files(model_dir: str | os.PathLike, names: Iterable[str] = CHECKPOINT_FILES) -> dict[str, dict[str, Any]]:
    """``{name: {"bytes": size, "sha256": digest}}`` for each of ``names`` present in ``model_dir``
    (the one checkpoint hasher, recorded with every result)."""
    d = Path(model_dir)
    return {n: {"bytes": (d / n).stat().st_size, "sha256": sha256_file(d / n)} for n in names if (d / n).is_file()}
