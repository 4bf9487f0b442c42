"""Timing primitives shared by every benchmark experiment.

Everything here measures wall-clock time of *compiled* programs, with compilation timed
separately:

* :class:`PrefillBench` – one ``jax.jit`` of ``model.prefill`` for a fixed (batch, length); records
  lower+compile seconds, the first execution, then repeated executions.
* :class:`DecodeBench` – the cached decode loop users run: the ``Generator``'s compiled
  ``lax.while_loop`` of ``model.step`` over ``n_tokens`` tokens (greedy argmax feeds the next token),
  with its state (cache included) *donated* so XLA updates it in place.  The loop compiles once per
  (batch, n_tokens) and is independent of the context length, so caches built at several contexts
  share one executable.
  ms/token = loop seconds / n_tokens; results quote the median over repetitions.
* full-prefix recompute: producing one token without a cache costs one prefill over the whole
  prefix (last-position logits only); it is a :class:`PrefillBench` with ``last_only=True``,
  compiled once for the context length and timed like a prefill.  (Growth of the prefix over
  successive tokens is ignored, which slightly favours recompute.)
* :func:`alternate` runs several timed callables round-robin (rotating the starting one each
  round), so things that are compared are measured side by side under the same machine load.

Results are written through :mod:`mamba2_jax.eval.results` (one schema, strict JSON).
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..paths import require_data_dir
from .models import build_model, load_model_spec

__all__ = ["PrefillBench", "DecodeBench",
           "alternate", "median", "random_ids", "utilisation"]


def random_ids(batch: int, length: int, vocab: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # avoid the special tokens 0/1 (harmless either way, but closer to real text)
    return rng.integers(2, vocab, size=(batch, length), dtype=np.int32)


# ------------------------------------------------------------------------------ statistics
def median(xs) -> float:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return float(statistics.median(xs)) if xs else float("nan")


def load_avg() -> list[float] | None:
    """The 1/5/15-minute load average (None where the platform has none): recorded next to timings."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        return None


def utilisation(work: float, seconds: float, peak: float) -> float | None:
    """work / (seconds × peak), or None where the peak is unknown."""
    if not peak or not math.isfinite(peak) or seconds <= 0:
        return None
    return float(work / (seconds * peak))


def alternate(fns: dict[str, Callable[[], float]], rounds: int, rotate: bool = True) -> dict[str, list[float]]:
    """Call each ``fns[name]()`` (which returns seconds) once per round, round-robin.

    The start position rotates every round so no candidate always runs first (or right after a
    particular other one)."""
    names = list(fns)
    out: dict[str, list[float]] = {k: [] for k in names}
    for r in range(rounds):
        k = (r % len(names)) if rotate and names else 0
        for name in names[k:] + names[:k]:
            out[name].append(float(fns[name]()))
    return out


def alternate_with_stream(fns: dict[str, Callable[[], float]], rounds: int, stream_bytes: int):
    """:func:`alternate` with a streaming-bandwidth probe taking its turn in every round, so that a
    memory-bound time is compared with the bandwidth measured in the same rounds.  Returns
    (times, median bandwidth in B/s, its result record, [load average before, after])."""
    from ..hardware import StreamBench

    stream = StreamBench(stream_bytes)
    load0 = list(os.getloadavg())
    times = alternate({**fns, "stream": stream.run}, rounds)
    load = [load0, list(os.getloadavg())]
    bw = stream.bytes_per_call / median(times["stream"])
    print(f"stream bandwidth (median of rounds): {bw / 1e9:.1f} GB/s; load {load[0]} -> {load[1]}", flush=True)
    return times, bw, {"metric": "stream_bandwidth", "value": bw, "unit": "B/s", "times_s": times["stream"]}, load


def gemv_record(name: str, times: list[float], weight_bytes: int, **extra) -> dict[str, Any]:
    """A GEMV-speed record (bytes of weight streamed per second, median of the rounds)."""
    s = median(times)
    return {"metric": "lm_head_gemv_bytes_per_s", "value": weight_bytes / s, "unit": "B/s", "formulation": name,
            "median_s": s, "min_s": min(times), "times_s": times, "weight_bytes": weight_bytes, **extra}


def decode_record(name: str, times: list[float], decode_bytes: int, bandwidth: float, **extra) -> dict[str, Any]:
    """A decode-speed record from per-token times: tokens/s (median), best, and the fraction of the
    same-run streaming bound (bytes per token ÷ bandwidth)."""
    s = median(times)
    return {"metric": "decode_tokens_per_s", "value": 1 / s, "unit": "tokens/s", "formulation": name, "median_s": s,
            "min_s": min(times), "times_s": times, "bandwidth_fraction": decode_bytes / s / bandwidth, **extra}


def _on_mesh(model, ids: np.ndarray):
    """Benchmark inputs: split over the "data" axis when the model is on a mesh."""
    import jax.numpy as jnp

    if getattr(model, "mesh", None) is None:
        return jnp.asarray(ids)
    from ..sharding import put_batch

    return put_batch(ids, model.mesh)


# ------------------------------------------------------------------------------ prefill
@dataclass
class PrefillBench:
    """A compiled prefill for (batch, length).  ``run()`` → seconds of one blocking execution."""

    model: Any
    length: int
    batch: int = 1
    last_only: bool = True
    seed: int = 0
    compile_s: float = field(init=False, default=float("nan"))
    first_run_s: float = field(init=False, default=float("nan"))

    def __post_init__(self):
        import jax
        from flax import nnx

        graphdef, self._state = nnx.split(self.model)
        last_only = self.last_only

        def fn(state, ids):
            m = nnx.merge(graphdef, state)
            logits, cache = m.prefill(ids, last_only=last_only)
            return logits, cache

        ids = _on_mesh(self.model, random_ids(self.batch, self.length, self.model.cfg.vocab_size, self.seed))
        self._ids = ids
        t0 = time.perf_counter()
        self._compiled = jax.jit(fn).lower(self._state, ids).compile()
        self.compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = self._compiled(self._state, ids)
        jax.block_until_ready(out)
        self.first_run_s = time.perf_counter() - t0
        self.last_output = out

    def run(self) -> float:
        import jax

        t0 = time.perf_counter()
        out = self._compiled(self._state, self._ids)
        jax.block_until_ready(out)
        dt = time.perf_counter() - t0
        self.last_output = out
        return dt

    def cache(self):
        """The cache produced by the last run (state after ``length`` tokens)."""
        return self.last_output[1]

    def times(self, reps: int) -> list[float]:
        return [self.run() for _ in range(reps)]


# ------------------------------------------------------------------------------ decode
@dataclass
class DecodeBench:
    """The decode loop users run, timed: ``mamba2_jax.generate.Generator``'s compiled program
    (``decode_loop``: greedy, no EOS, the non-finite check on) filling an ``n_tokens``-column buffer.

    ``add_context(name, context)`` prefills ``context`` random tokens (context 0: empty cache) and
    keeps the resulting decode state under ``name``; ``run(name)`` decodes ``n_tokens`` from it (the
    state is donated and replaced by the new one, so successive runs keep extending that sequence)
    and returns the loop's wall seconds.  ``compiler_options`` and ``check_finite`` exist for
    experiments/decode_formulations.py; ``hlo`` is the compiled program's text."""

    model: Any
    n_tokens: int = 64
    batch: int = 1
    seed: int = 0
    compiler_options: dict | None = None
    check_finite: bool = True
    compile_s: float = field(init=False, default=float("nan"))
    first_run_s: float = field(init=False, default=float("nan"))

    def __post_init__(self):
        from ..generate import Generator

        self._gen = Generator(self.model, eos_id=None, check_finite=self.check_finite, share_programs=False)
        self._states: dict[str, Any] = {}
        self._contexts: dict[str, int] = {}
        self._prefills: dict[int, PrefillBench] = {}
        self._compiled = None
        self.hlo = None

    def add_context(self, name: str, context: int, cache=None, token=None) -> None:
        import jax
        import jax.numpy as jnp

        if cache is None:
            if context > 0:
                pb = self._prefills.get(context) or PrefillBench(self.model, context, self.batch, True, self.seed)
                self._prefills[context] = pb
                logits, cache = pb.last_output
                tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
            else:
                cache = self.model.init_cache(self.batch)
                tok = _on_mesh(self.model, random_ids(self.batch, 1, self.model.cfg.vocab_size, self.seed)[:, 0])
        else:
            tok = _on_mesh(self.model, random_ids(self.batch, 1, self.model.cfg.vocab_size, self.seed)[:, 0])
        if token is not None:
            tok = jnp.asarray(token, jnp.int32)
        # private copies: the loop donates its state
        cache = jax.tree.map(lambda x: jnp.array(x, copy=True), cache)
        st = self._gen.start_state(cache, jnp.array(tok, copy=True), n=self.n_tokens)
        self._states[name] = st.replace(step=jnp.int32(0))
        self._contexts[name] = context
        if self._compiled is None:
            t0 = time.perf_counter()
            from ..generate import GREEDY

            lowered = self._gen._decode.lower(self._gen.state, self._states[name], sampling=GREEDY)
            self._compiled = lowered.compile(compiler_options=self.compiler_options or {})
            self.compile_s = time.perf_counter() - t0
            self.hlo = self._compiled.as_text()
            self.first_run_s = self.run(name)

    def prefill_bench(self, context: int) -> PrefillBench | None:
        return self._prefills.get(context)

    def run(self, name: str) -> float:
        import jax

        t0 = time.perf_counter()
        st = self._compiled(self._gen.state, self._states[name])
        jax.block_until_ready(st)
        dt = time.perf_counter() - t0
        if bool(st.nonfinite.any()):
            raise FloatingPointError(f"decode benchmark {name!r}: non-finite logits at new token "
                                     f"{int(st.nonfinite_at.min())}")
        self._states[name] = st.replace(step=st.step * 0)  # the buffer is refilled from column 0
        return dt

    def seqlen(self, name: str) -> int:
        return int(np.asarray(self._states[name].cache.seqlen)[0])

    def times(self, name: str, reps: int) -> list[float]:
        return [self.run(name) for _ in range(reps)]


# ------------------------------------------------------------------------------ experiment plumbing
def _get(cfg, key, default=None):
    try:
        v = cfg.get(key, default)
    except AttributeError:
        v = getattr(cfg, key, default)
    return default if v is None else v


def setup_run(cfg, experiment: str) -> dict[str, Any]:
    """Common start of every benchmark experiment.

    * refuses (SystemExit 2, clear message) when ``cfg.require_platform`` is set and the JAX backend
      differs, unless ``cfg.force`` is true;
    * resolves the hardware profile (``cfg.hardware.name``; CPU measured with ``cfg.cpu_measure``);
    * names the run ``<profile_name>-<profile>`` (``-on-<actual device>`` appended when the profile is
      not the device the run is on) and builds a human-readable label.
    """
    import sys

    from ..hardware import device_description, resolve_profile

    desc = device_description()
    req = _get(cfg, "require_platform")
    force = bool(_get(cfg, "force", False))
    if req and desc["platform"] != req:
        if not force:
            print(f"[{experiment}] REFUSING: this configuration is meant for platform {req!r} but JAX runs on "
                  f"{desc['platform']!r} ({desc['device_kind']}). Timings here would be labelled with {req} peaks. "
                  f"Re-run with force=true (Hydra; make: BENCH_ARGS=force=true) to run anyway; results are then "
                  f"labelled with the actual device. Without a TPU, `make reproduce-tpu` compiles the paper's "
                  f"TPU programs instead (docs/compile.md).", file=sys.stderr)
            raise SystemExit(2)
        print(f"[{experiment}] FORCED: running a {req!r} configuration on {desc['platform']!r}", file=sys.stderr)
    hw_name = _get(_get(cfg, "hardware", {}), "name", "auto")
    measure = dict(_get(cfg, "cpu_measure", {}) or {})
    hw = resolve_profile(hw_name, desc=desc, **measure)
    prof = hw["profile"]
    pname = _get(cfg, "profile_name", "custom")
    run = _get(cfg, "run") or (f"{pname}-{prof.name}" + ("" if hw["matches_device"] else f"-on-{hw['detected']}"))
    if hw["detected"] == "unknown" and not hw["matches_device"]:
        run = f"{pname}-{prof.name}-on-{desc['platform']}"
    label = (f"{experiment}: device {desc['device_kind']} ({desc['platform']}); hardware profile {prof.name}"
             + ("" if hw["matches_device"] else f" (NOT the device this ran on{'; forced' if force else ''})")
             + f"; profile {pname}")
    try:
        load = list(os.getloadavg())
    except OSError:  # pragma: no cover
        load = None
    from ..sharding import describe_mesh, make_mesh

    mesh = make_mesh(_mesh_arg(cfg))
    if mesh is not None:
        label += f"; mesh data={mesh.shape['data']},model={mesh.shape['model']}"
    hw = {**hw, "forced": force and bool(req and desc["platform"] != req), "load_avg_at_start": load,
          "mesh": describe_mesh(mesh)}
    return {"hardware": hw, "profile": prof, "run": run, "label": label, "device": desc, "mesh": mesh}


def _mesh_arg(cfg):
    m = _get(cfg, "mesh")
    if m is None or isinstance(m, str):
        return m
    try:
        from omegaconf import OmegaConf

        return OmegaConf.to_container(m, resolve=True)
    except ValueError:
        return dict(m)


def iter_models(cfg):
    """Yield (name, model, info) for ``cfg.models`` (weights from ``cfg.checkpoints[name]`` or the
    model yaml's ``checkpoint``, else random init); frees each model before building the next."""
    import gc

    import jax

    from ..sharding import make_mesh

    ckpts = dict(_get(cfg, "checkpoints", {}) or {})
    dd = require_data_dir(_get(_get(cfg, "paths", {}), "data_dir", None))
    mesh = make_mesh(_mesh_arg(cfg))
    for name in _get(cfg, "models", []):
        spec = load_model_spec(str(name))
        model, info = build_model(spec, dtype=str(_get(cfg, "dtype", "float32")), checkpoint=ckpts.get(name),
                                  seed=int(_get(cfg, "seed", 0)), precision=_get(cfg, "matmul_precision"), data=dd,
                                  mesh=mesh)
        yield str(name), model, info
        del model
        gc.collect()
        jax.clear_caches()


def weights_label(infos: list[dict[str, Any]]) -> str:
    kinds = sorted({i.get("weights", "?") for i in infos})
    return "synthetic (random-init) weights" if kinds == ["random-init"] else "weights: " + ", ".join(kinds)


def config_dict(cfg) -> dict[str, Any]:
    try:
        from omegaconf import OmegaConf

        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # noqa: BLE001
        return dict(cfg)
