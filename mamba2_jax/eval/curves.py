"""Curves for ``make bench`` (issue 12), each measured with alternating rounds next to its bound.

* :func:`batch_curve` – cached decode tokens/s at several batch sizes, and achieved ÷ bound, where
  the bound streams the weights once per step plus every row's state (read and written), at the
  streaming bandwidth re-measured in the same rounds.
* :func:`length_curve` – prefill time per token at several prompt lengths on a shallow model of
  the same width (``last_only``), and each length's ratio to the shortest: prefill cost that grows
  linearly with length keeps the ratio near 1.
* :func:`prefill_matmul_fraction` – prefill FLOP rate of the matmul terms ÷ a dense fp32 matmul
  rate re-measured in the same rounds.

Every record carries min and median seconds and the raw times; callers add them to the bench
results document (``experiments/bench.py``; ``make bench`` runs the length curve up to 256k tokens).
"""

from __future__ import annotations

import time
from typing import Any

from . import bench, flops

__all__ = ["MatmulBench", "batch_curve", "length_curve", "prefill_matmul_fraction"]


class MatmulBench:
    """A jitted fp32 (n, n) @ (n, n) matmul; ``run()`` → seconds of one blocking call."""

    def __init__(self, n: int = 2048):
        import jax
        import jax.numpy as jnp

        k1, k2 = jax.random.split(jax.random.PRNGKey(0))
        self.a = jax.random.normal(k1, (n, n), jnp.float32)
        self.b = jax.random.normal(k2, (n, n), jnp.float32)
        self._f = jax.jit(lambda x, y: jnp.dot(x, y, precision="highest", preferred_element_type=jnp.float32))
        self._f(self.a, self.b).block_until_ready()
        self.flops_per_call = 2.0 * n ** 3

    def run(self) -> float:
        t0 = time.perf_counter()
        self._f(self.a, self.b).block_until_ready()
        return time.perf_counter() - t0


def batch_curve(models: dict[str, Any], batches, n_tokens: int, rounds: int, stream,
                seed: int = 0) -> list[dict[str, Any]]:
    """Decode tokens/s and achieved ÷ bound at each batch size (empty cache; decode cost does not
    depend on the context), for each {dtype: model}: every (dtype, batch) pair alternates in the
    same rounds, and for each batch size every dtype after the first gets its speed ratio to the
    first (``decode_batch_speed_ratio``).  ``stream`` is a ``hardware.StreamBench`` run in the
    same rounds."""
    dbs = {}
    for dt, model in models.items():
        for b in batches:
            dbs[dt, b] = bench.DecodeBench(model, n_tokens=n_tokens, batch=int(b), seed=seed)
            dbs[dt, b].add_context("c0", 0)
            print(f"[bench] batch curve: {dt} batch {b} compiled", flush=True)
    fns = {f"batch:{dt}:{b}": (lambda k=(dt, b): dbs[k].run("c0") / n_tokens) for dt, b in dbs}
    fns["stream"] = stream.run
    load0 = bench.load_avg()
    times = bench.alternate(fns, rounds)
    bw = stream.bytes_per_call / bench.median(times["stream"])
    recs = []
    for dt, model in models.items():
        for b in batches:
            t = times[f"batch:{dt}:{b}"]
            s = bench.median(t)
            sdt = getattr(model, "state_dtype", "float32")
            by = flops.decode_bytes(model.cfg, int(b), model.dtype, sdt)["total"]
            recs.append({
                "metric": "decode_batch_tokens_per_s", "value": b / s, "unit": "tokens/s", "dtype": dt,
                "state_dtype": str(sdt),
                "batch": int(b), "median_s": s, "min_s": min(t), "times_s": t, "bytes_per_step": by,
                "bound_tokens_per_s": b * bw / by, "bandwidth_fraction": by / s / bw,
                "stream_bandwidth": bw, "load_avg": [load0, bench.load_avg()],
                "note": "bound: weights once per step + every row's SSM/conv state read and written, "
                        "at the median streaming bandwidth of the same rounds"})
    first = next(iter(models))
    for dt in list(models)[1:]:
        for b in batches:
            r = bench.median(times[f"batch:{first}:{b}"]) / bench.median(times[f"batch:{dt}:{b}"])
            recs.append({"metric": "decode_batch_speed_ratio", "value": r, "unit": "ratio", "dtype": dt,
                         "state_dtype": str(getattr(models[dt], "state_dtype", "float32")),
                         "batch": int(b), "note": f"{dt} tokens/s ÷ {first} tokens/s, same rounds"})
    return recs


def length_curve(spec, lengths, n_layer: int, rounds: int, dtype: str, seed: int = 0, data=None,
                 precision=None, prefill_block: int | None | str = "auto") -> list[dict[str, Any]]:
    """Prefill µs/token at each length on an ``n_layer``-layer model of ``spec``'s width; a length
    above the model's ``prefill_block`` (and a multiple of it) runs block by block carrying the cache,
    inside one program (flat memory; ``prefill_block`` "auto" is the platform's choice)."""
    from mamba2_jax.checkpoint import init_state_dict
    from mamba2_jax.loading import model_from_state_dict

    from .models import model_config

    cfg = model_config(spec, data).replace(n_layer=int(n_layer))
    model = model_from_state_dict(cfg, init_state_dict(cfg, seed=seed), dtype=dtype, precision=precision,
                                  prefill_block=prefill_block)
    blk = model.prefill_block
    pbs = {}
    for L in lengths:
        pbs[L] = bench.PrefillBench(model, int(L), 1, last_only=True, seed=seed)
        print(f"[bench] length curve: L={L} compiled ({pbs[L].compile_s:.1f} s)", flush=True)
    load0 = bench.load_avg()
    times = bench.alternate({f"len:{L}": pbs[L].run for L in lengths}, rounds)
    L0 = min(lengths)
    base = bench.median(times[f"len:{L0}"]) / L0
    recs = []
    for L in lengths:
        t = times[f"len:{L}"]
        per = bench.median(t) / L
        recs.append({"metric": "prefill_us_per_token", "value": per * 1e6, "unit": "us/token", "dtype": dtype,
                     "length": int(L), "n_layer": int(n_layer), "median_s": bench.median(t), "min_s": min(t),
                     "times_s": t, "ratio_to_shortest": per / base, "min_ratio_to_shortest":
                     (min(t) / L) / (min(times[f"len:{L0}"]) / L0), "load_avg": [load0, bench.load_avg()],
                     "compile_s": pbs[L].compile_s,
                     "prefill_block": int(blk) if blk and L > blk and L % blk == 0 else None})
    return recs


def prefill_matmul_fraction(model, prefill_times: dict[int, list[float]], mm: MatmulBench, mm_times: list[float],
                            batch: int = 1) -> list[dict[str, Any]]:
    """Matmul FLOP rate of each prefill (projections + last-position LM head) ÷ the dense matmul rate."""
    rate = mm.flops_per_call / bench.median(mm_times)
    recs = [{"metric": "matmul_flops_per_s", "value": rate, "unit": "FLOP/s", "times_s": mm_times,
             "note": "fp32 2048^3 matmul (precision highest), median of the same alternating rounds"}]
    for L, t in prefill_times.items():
        f = flops.model_prefill_flops(model, int(L), batch, last_only=True)
        s = bench.median(t)
        recs.append({"metric": "prefill_matmul_fraction", "value": f["matmul"] / s / rate, "unit": "fraction",
                     "length": int(L), "median_s": s, "min_s": min(t), "matmul_flops": f["matmul"],
                     "total_flops": f["total"], "bound_tokens_per_s": batch * L * rate / f["matmul"]})
    return recs
