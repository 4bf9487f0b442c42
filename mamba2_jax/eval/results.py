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
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..fileio import atomic_write, atomic_write_json, to_jsonable
from ..paths import results_dir

__all__ = ["SCHEMA_VERSION", "REQUIRED_COLUMNS", "validate_result", "write_results", "read_result",
           "load_results", "iter_results", "write_document", "device_hardware", "bench_to_tidy", "BENCH_VIEWS"]

SCHEMA_VERSION = 1
_REQUIRED_TOP = ("schema_version", "experiment", "run", "label", "provenance", "hardware", "config", "records")
# columns every record of an experiment must carry
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "throughput": ("model", "dtype", "kind", "length", "batch", "median_s"),
    "sweep": ("model", "dtype", "kind", "context", "median_s"),
    "cache_speedup": ("model", "dtype", "context", "cached_ms_per_token", "recompute_ms_per_token", "speedup"),
    "peers": ("peer", "metric", "value", "unit"),
    "bench": ("metric", "value", "unit"),
    "sharding_memory": ("model", "dtype", "batch", "mesh_data", "mesh_model", "params_bytes_per_device",
                        "cache_bytes_per_device"),
    "serve": ("model", "workload", "variant", "system", "round", "output_tok_s", "failures"),
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
    doc = {"label": label,
           "provenance": provenance(load_avg_at_write=load, **({"mesh": hw["mesh"]} if hw.get("mesh") else {})),
           "config": config, **(extra or {})}
    jp, cp = out / f"{run}.json", out / f"{run}.csv"
    write_document(jp, doc, experiment=experiment, run=run, records=records, hardware=hw)
    flat = [{k: v for k, v in r.items() if not isinstance(v, (list, dict))} for r in to_jsonable(records)]
    df = pd.DataFrame(flat)
    df.insert(0, "run", run)
    df.insert(1, "device", hw.get("profile", {}).get("name") if isinstance(hw.get("profile"), dict) else None)
    atomic_write(cp, lambda f: df.to_csv(f, index=False), binary=False)
    return jp, cp


def device_hardware() -> dict[str, Any]:
    """The ``hardware`` section for experiments that compare numbers rather than time them
    (parity, perplexity): the device this process runs on, with no peak profile."""
    from ..hardware import detect_profile_name, device_description

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
        else:
            print(f"[results] WARNING: skipping {p}: not a readable JSON object", file=sys.stderr)


# What each experiment's documents look like when read back.  Experiments that write the one schema
# above are accepted when the document names the experiment and has records; parity and perplexity
# write their own layouts (one file per model x reference backend / per model x protocol).
_LAYOUTS: dict[str, tuple[str, Callable[[dict[str, Any]], bool]]] = {
    "parity": ("*.json", lambda d: "hidden_per_layer" in d and "greedy_summary" in d),
    "perplexity": ("*/*.json", lambda d: d.get("kind") == "perplexity" and bool(d.get("backends"))),
}
# experiments whose records `make bench` (experiment "bench") also measures: see bench_to_tidy
BENCH_VIEWS = ("throughput", "sweep", "cache_speedup")


def load_results(experiment: str, results: str | os.PathLike | None = None, pattern: str | None = None, *,
                 include_bench: bool = False) -> list[tuple[Path, dict[str, Any]]]:
    """The one loader used by figures and paper tables: ``(path, document)`` for every document of
    ``experiment`` under ``<results>/<experiment>`` (sorted by file name) that has the experiment's
    layout.  With ``include_bench``, the ``make bench`` documents (``<results>/bench``) follow, converted
    to this experiment's records by :func:`bench_to_tidy` (those with no such record are left out)."""
    default_pattern, accept = _LAYOUTS.get(experiment, ("*.json", None))
    if accept is None and experiment in REQUIRED_COLUMNS:
        def accept(d):
            return d.get("experiment") == experiment and bool(d.get("records"))
    docs = [(p, d) for p, d in iter_results(experiment, results, pattern or default_pattern)
            if accept is None or accept(d)]
    if include_bench and experiment in BENCH_VIEWS:
        for p, d in load_results("bench", results):
            view = bench_to_tidy(d, experiment)
            if view["records"]:
                docs.append((p, view))
    return docs


def bench_to_tidy(doc: dict[str, Any], experiment: str) -> dict[str, Any]:
    """A ``make bench`` document (one record per metric) as a throughput / sweep / cache_speedup
    document (the tidy records those experiments write), for its first (base) dtype only.

    The document keeps its provenance and hardware; ``source_experiment`` is "bench" and the run is
    ``"<run> [make bench]"``."""
    if experiment not in BENCH_VIEWS:
        raise ValueError(f"make bench has no {experiment!r} view (one of {BENCH_VIEWS})")
    models = doc.get("models") or {}
    dtypes = list(((doc.get("config") or {}).get("bench") or {}).get("dtypes") or models.keys())
    base = dtypes[0] if dtypes else "float32"
    info = models.get(base) or {}
    common = {"dtype": base, "matmul_precision": (info.get("policy") or {}).get("matmul_precision"),
              "batch": int((doc.get("config") or {}).get("batch") or 1), "weights": info.get("weights", "?")}
    recs = [r for r in doc.get("records") or [] if r.get("dtype") in (base, None)]

    def find(metric, **kw):
        return next((r for r in recs if r.get("metric") == metric and all(r.get(k) == v for k, v in kw.items())),
                    None)

    def decode(r, **kw):
        # HBU against the run's interleaved median streaming bandwidth (measured between the timed
        # rounds, so under the same load); the start-of-run best probe only where the run has no other
        bw = find("bandwidth_fraction", context=r["context"])
        probe = "interleaved median StreamBench"
        if bw is None:
            bw, probe = find("bandwidth_fraction_vs_start_best", context=r["context"]), "start-of-run best StreamBench"
        return {**common, "model": r.get("model"), "kind": "decode", **kw, "context": int(r["context"]),
                "median_s": r.get("median_s"), "ms_per_token": r["value"],
                "tokens_per_s": common["batch"] * 1e3 / r["value"], "hbu": bw["value"] if bw else None,
                "hbu_probe": probe if bw else None}

    dec = [r for r in recs if r.get("metric") == "decode_ms_per_token" and r.get("context") is not None]
    out: list[dict[str, Any]] = []
    if experiment == "sweep":
        out = [{**decode(r), "compile_s": r.get("compile_s")} for r in dec]
    elif experiment == "cache_speedup":
        out = [{**common, "model": r.get("model"), "context": int(r["context"]), "headline": True,
                "cached_ms_per_token": r.get("cached_ms"), "recompute_ms_per_token": r.get("recompute_ms"),
                "speedup": r["value"]} for r in recs if r.get("metric") == "cached_over_recompute"]
    else:  # throughput: every prefill length, and decode at the shortest context
        # achieved FLOP/s from the analytic count the run recorded with the matmul bound (total_flops, the
        # same eval/flops.py count the throughput experiment uses), over the same median time; MFU against
        # the peak the run measured at its start (hardware profile), as the throughput experiment does
        peaks = (((doc.get("hardware") or {}).get("profile") or {}).get("peak") or {})
        peak, peak_bf16 = peaks.get(base), peaks.get("bfloat16")

        def flop_rate(r):
            f = find("prefill_matmul_fraction", length=r.get("length"))
            if not f or not f.get("total_flops") or not r.get("median_s"):
                return {"flops": None, "tflops": None, "mfu": None}
            rate = f["total_flops"] / r["median_s"]
            return {"flops": f["total_flops"], "tflops": rate / 1e12, "mfu": rate / peak if peak else None,
                    "mfu_vs_bf16_peak": rate / peak_bf16 if peak_bf16 else None,
                    "peak_flops": peak, "peak_note": f"{base} matmul measured at run start" if peak else None}

        out = [{**common, "model": r.get("model"), "kind": "prefill", "length": int(r["length"]),
                "context": int(r["length"]), "median_s": r.get("median_s"), "tokens_per_s": r["value"],
                "compile_s": r.get("compile_s"), **flop_rate(r)}
               for r in recs if r.get("metric") == "prefill_tokens_per_s"]
        if dec:
            r = min(dec, key=lambda r: r["context"])
            by = find("achieved_bytes_per_s", context=r["context"])
            peak_bw = find("stream_bandwidth") or find("stream_bandwidth_start")
            out.append({**decode(r, length=int(r.get("tokens") or 0)),
                        "bytes_per_step": by.get("bytes_per_step") if by else None, "compile_s": r.get("compile_s"),
                        "bandwidth": peak_bw["value"] if peak_bw else None})
    return {**{k: v for k, v in doc.items() if k != "records"}, "experiment": experiment, "source_experiment": "bench",
            "run": f"{doc.get('run')} [make bench]", "records": out}
