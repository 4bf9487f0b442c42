"""Results I/O: one schema for every experiment, strict JSON, atomic writes, one loader.

A results document is ``<results>/<experiment>/<run>.json``::

    {"schema_version": 1, "experiment": ..., "run": ..., "label": ...,
     "provenance": {...git sha, packages, jax devices, precision...},
     "hardware": {"profile": {...}, "device": {...}, "matches_device": bool},
     "config": {...}, "records": [{...}, ...], ...extra top-level sections}

with a tidy CSV of the flat record columns beside it.  JSON follows :mod:`mamba2_jax.fileio`'s one
policy (strict RFC 8259; non-finite numbers are ``null``).  Figures and paper tables read every
result through :func:`load_results`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

from ..fileio import atomic_write, atomic_write_json, to_jsonable
from ..paths import results_dir

__all__ = ["SCHEMA_VERSION", "REQUIRED_COLUMNS", "validate_result", "write_results", "read_result",
           "load_results", "iter_results", "write_document", "device_hardware"]

SCHEMA_VERSION = 1
_REQUIRED_TOP = ("schema_version", "experiment", "run", "label", "provenance", "hardware", "config", "records")
# columns every record of an experiment must carry
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "throughput": ("model", "dtype", "kind", "length", "batch", "median_s"),
    "sweep": ("model", "dtype", "kind", "context", "median_s"),
    "cache_speedup": ("model", "dtype", "context", "cached_ms_per_token", "recompute_ms_per_token", "speedup"),
    "peers": ("peer", "metric", "value", "unit"),
    "bench": ("metric", "value", "unit"),
}


def validate_result(doc: dict[str, Any]) -> None:
    """Raise ValueError if ``doc`` is not a valid results document."""
    missing = [k for k in _REQUIRED_TOP if k not in doc]
    if missing:
        raise ValueError(f"results document lacks {missing}")
    if doc["schema_version"] != SCHEMA_VERSION:
        raise ValueError(f"schema_version {doc['schema_version']} != {SCHEMA_VERSION}")
    recs = doc["records"]
    if not isinstance(recs, list) or not recs:
        raise ValueError("records must be a non-empty list")
    cols = REQUIRED_COLUMNS.get(doc["experiment"], ())
    for i, r in enumerate(recs):
        lack = [c for c in cols if c not in r]
        if lack:
            raise ValueError(f"record {i} lacks {lack}")
    hw = doc["hardware"]
    for k in ("profile", "device", "matches_device"):
        if k not in hw:
            raise ValueError(f"hardware section lacks {k!r}")


def write_results(experiment: str, run: str, records: list[dict[str, Any]], *, hardware: dict[str, Any],
                  config: dict[str, Any], label: str, out_dir: str | os.PathLike | None = None,
                  extra: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """Write ``<out_dir>/<run>.json`` and ``<out_dir>/<run>.csv`` atomically; returns both paths.

    ``out_dir`` defaults to ``<results>/<experiment>`` (:func:`mamba2_jax.paths.results_dir`)."""
    import pandas as pd

    from .provenance import provenance

    out = results_dir(out_dir) if out_dir else results_dir() / experiment
    hw = dict(hardware)
    prof = hw.get("profile")
    if hasattr(prof, "to_dict"):
        hw["profile"] = prof.to_dict()
    try:
        load = list(os.getloadavg())
    except OSError:  # pragma: no cover - not on every platform
        load = None
    doc = {
        "schema_version": SCHEMA_VERSION,
        "experiment": experiment,
        "run": run,
        "label": label,
        "provenance": provenance(load_avg_at_write=load),
        "hardware": hw,
        "config": config,
        "records": records,
        **(extra or {}),
    }
    doc = to_jsonable(doc)
    validate_result(doc)
    jp, cp = out / f"{run}.json", out / f"{run}.csv"
    atomic_write_json(jp, doc)
    flat = [{k: v for k, v in r.items() if not isinstance(v, (list, dict))} for r in doc["records"]]
    df = pd.DataFrame(flat)
    df.insert(0, "run", run)
    df.insert(1, "device", hw.get("profile", {}).get("name") if isinstance(hw.get("profile"), dict) else None)
    atomic_write(cp, lambda f: df.to_csv(f, index=False), binary=False)
    return jp, cp


def device_hardware() -> dict[str, Any]:
    """The ``hardware`` section for experiments that compare numbers rather than time them
    (parity, perplexity): the device this process runs on, with no peak profile."""
    from .hardware import detect_profile_name, device_description

    desc = device_description()
    return {"profile": {"name": detect_profile_name(desc)}, "device": desc, "matches_device": True}


def write_document(path: str | os.PathLike, doc: dict[str, Any], *, experiment: str, run: str,
                   records: list[dict[str, Any]], hardware: dict[str, Any] | None = None) -> Path:
    """Write an experiment's own rich document (parity report, perplexity result) in the one schema:
    the schema keys are added (``label``, ``config`` and ``provenance`` are kept when the document
    already has them), the result is validated, and written as strict JSON, atomically."""
    from .provenance import provenance

    full = {**doc, "schema_version": SCHEMA_VERSION, "experiment": experiment, "run": run, "records": records,
            "hardware": hardware if hardware is not None else device_hardware()}
    full.setdefault("label", run)
    full.setdefault("config", {})
    full.setdefault("provenance", provenance())
    full = to_jsonable(full)
    validate_result(full)
    return atomic_write_json(path, full, indent=1)


def read_result(path: str | os.PathLike) -> dict[str, Any] | None:
    """One results JSON document, or None if it is missing or not valid JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def iter_results(experiment: str, results: str | os.PathLike | None = None,
                 pattern: str = "*.json") -> Iterator[tuple[Path, dict[str, Any]]]:
    """``(path, document)`` for every readable JSON document under ``<results>/<experiment>``."""
    d = (Path(results) if results else results_dir()) / experiment
    for p in sorted(d.glob(pattern)) if d.is_dir() else ():
        doc = read_result(p)
        if isinstance(doc, dict):
            yield p, doc


def load_results(experiment: str, results: str | os.PathLike | None = None,
                 pattern: str = "*.json") -> list[tuple[Path, dict[str, Any]]]:
    """The one loader used by figures and paper tables: every document of ``experiment``."""
    return list(iter_results(experiment, results, pattern))
