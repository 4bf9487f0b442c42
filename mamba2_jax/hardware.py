"""Device profiles: peak matmul FLOP/s and memory bandwidth, for MFU and HBU.

Accelerator peaks come from vendor datasheets (``source`` on each profile).  The CPU profile is
*measured at run start* in the same process that runs the benchmark:

* peak FLOP/s: a jitted square matmul (``n × n @ n × n``, 2n³ FLOPs), median and best of a few
  repetitions, per dtype (float32 and bfloat16);
* bandwidth: a jitted ``x + 1`` over a ~1 GiB float32 array whose buffer is donated, so XLA updates it
  in place: each call streams ``2 × nbytes`` (one read, one write).

MFU and HBU use the *best* repetition as the peak (the closest to what the machine can do; on a
shared machine the median is noisier and would inflate utilisation).  Both are recorded.

Matmul precision matters for float32 on accelerators (``jax.lax.Precision``):

* TPU: DEFAULT runs a float32 matmul as 1 bfloat16 pass, HIGH as 3, HIGHEST as 6 passes, so the
  *effective* float32 peak is ``peak_bf16 / passes``;
* NVIDIA GPU: DEFAULT/HIGH use TF32 tensor cores, HIGHEST uses plain FP32 (non-tensor) units;
* CPU: precision has no effect.

``DeviceProfile.peak_flops(dtype, precision)`` returns the peak that applies, together with a note,
so every result records which peak its MFU was computed against.

Profiles are selected automatically from ``jax.devices()`` (:func:`detect_profile_name`) or by name
(the Hydra ``hardware`` group: ``auto``, ``tpu_v6e``, ``l40s``, ``h100_sxm``, ``cpu``).  When the
requested profile does not match the device the run is on, :func:`resolve_profile` keeps the
requested peaks but records ``matches_device: false`` and the actual device.
"""

from __future__ import annotations

import dataclasses
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DeviceProfile", "PROFILES", "detect_profile_name", "device_description", "get_profile",
           "resolve_profile", "measure_cpu_profile", "measure_matmul_flops", "measure_bandwidth", "StreamBench",
           "matmul_passes", "cpu_model"]

T = 1e12
G = 1e9


@dataclass
class DeviceProfile:
    name: str
    kind: str  # "tpu" | "gpu" | "cpu"
    # dense peak FLOP/s by execution mode: "bfloat16", "float32" (non-tensor / plain), "tf32" (GPU)
    peak: dict[str, float]
    bandwidth: float  # bytes/s, main memory (HBM / GDDR / DRAM)
    memory_bytes: float | None = None
    source: str = ""
    measured: bool = False
    details: dict[str, Any] = field(default_factory=dict)

    def peak_flops(self, dtype: str = "float32", precision: str | None = None) -> tuple[float, str]:
        """Peak FLOP/s for matmuls with ``dtype`` params under JAX ``precision``, and a note.

        ``precision`` None means the library default for the dtype ("highest" for float32 parity
        mode, "default" for bfloat16)."""
        dtype = _dtype_name(dtype)
        prec = _precision_name(precision, dtype)
        if not self.peak:
            return float("nan"), f"no peak known for {self.name}"
        if dtype in ("bfloat16", "float16"):
            return self.peak["bfloat16"], f"{dtype} matmul at the {self.kind} bf16 dense peak"
        if self.kind == "tpu":
            passes = matmul_passes("tpu", prec)
            return self.peak["bfloat16"] / passes, (
                f"float32 matmul with precision={prec} runs as {passes} bf16 pass(es) on TPU: "
                f"effective peak = bf16 peak / {passes}")
        if self.kind == "gpu":
            if prec == "highest" or "tf32" not in self.peak:
                return self.peak["float32"], f"float32 matmul with precision={prec}: FP32 (non-tensor) peak"
            return self.peak["tf32"], f"float32 matmul with precision={prec}: TF32 tensor-core peak"
        return self.peak["float32"], "float32 matmul on CPU (precision has no effect): measured peak"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _dtype_name(dtype) -> str:
    import jax.numpy as jnp

    return jnp.dtype(dtype).name


def _precision_name(precision, dtype: str) -> str:
    if precision is None:
        return "highest" if dtype == "float32" else "default"
    s = str(precision).lower()
    s = s.split(".")[-1]
    return {"fastest": "default", "bfloat16": "default", "tensorfloat32": "high", "float32": "highest"}.get(s, s)


def matmul_passes(kind: str, precision: str | None) -> int:
    """Number of bf16 passes a float32 matmul takes on ``kind`` under ``precision`` (TPU: 1/3/6)."""
    if kind != "tpu":
        return 1
    return {"default": 1, "high": 3, "highest": 6}.get(_precision_name(precision, "float32"), 6)


# ------------------------------------------------------------------------------ datasheet profiles
PROFILES: dict[str, DeviceProfile] = {
    "tpu_v6e": DeviceProfile(
        name="tpu_v6e", kind="tpu", peak={"bfloat16": 918 * T, "int8": 1836 * T},
        bandwidth=1638 * G, memory_bytes=32e9,
        source="Google Cloud TPU v6e (Trillium) documentation: 918 TFLOPS bf16 peak per chip, "
               "32 GB HBM, 1638 GB/s HBM bandwidth (cloud.google.com/tpu/docs/v6e)"),
    # used by `mamba2-jax compile` (targets tpu-v5e, tpu-v5p, tpu-v4); runs are not auto-detected as these
    "tpu_v5e": DeviceProfile(
        name="tpu_v5e", kind="tpu", peak={"bfloat16": 197 * T, "int8": 394 * T},
        bandwidth=819 * G, memory_bytes=16e9,
        source="Google Cloud TPU v5e documentation: 197 TFLOPS bf16 peak per chip, 16 GB HBM2, "
               "819 GB/s HBM bandwidth (cloud.google.com/tpu/docs/v5e)"),
    "tpu_v5p": DeviceProfile(
        name="tpu_v5p", kind="tpu", peak={"bfloat16": 459 * T, "int8": 918 * T},
        bandwidth=2765 * G, memory_bytes=95e9,
        source="Google Cloud TPU v5p documentation: 459 TFLOPS bf16 peak per chip, 95 GB HBM2e, "
               "2765 GB/s HBM bandwidth (cloud.google.com/tpu/docs/v5p)"),
    "tpu_v4": DeviceProfile(
        name="tpu_v4", kind="tpu", peak={"bfloat16": 275 * T, "int8": 275 * T},
        bandwidth=1200 * G, memory_bytes=32 * 2**30,
        source="Google Cloud TPU v4 documentation: 275 TFLOPS bf16 peak per chip, 32 GiB HBM2, "
               "1200 GB/s HBM bandwidth (cloud.google.com/tpu/docs/v4)"),
    "l40s": DeviceProfile(
        name="l40s", kind="gpu", peak={"bfloat16": 362.05 * T, "tf32": 183 * T, "float32": 91.6 * T},
        bandwidth=864 * G, memory_bytes=48e9,
        source="NVIDIA L40S datasheet: BF16 tensor 362.05 TFLOPS dense (733 with sparsity), TF32 tensor "
               "183 TFLOPS dense, FP32 91.6 TFLOPS, 48 GB GDDR6 at 864 GB/s"),
    "h100_sxm": DeviceProfile(
        name="h100_sxm", kind="gpu", peak={"bfloat16": 989.4 * T, "tf32": 494.7 * T, "float32": 66.9 * T},
        bandwidth=3.35e12, memory_bytes=80e9,
        source="NVIDIA H100 Tensor Core GPU datasheet, SXM5 column: BF16 tensor 989 TFLOPS dense "
               "(1979 with sparsity), TF32 tensor 495 TFLOPS dense, FP32 67 TFLOPS, 80 GB HBM3 at 3.35 TB/s. "
               "The PCIe card differs (756 TFLOPS bf16 dense, 51 TFLOPS fp32, 2.0 TB/s HBM2e)"),
}
# names accepted as aliases (Hydra override values)
_ALIASES = {"v6e": "tpu_v6e", "tpu": "tpu_v6e", "h100": "h100_sxm", "cpu_measured": "cpu"}


def device_description() -> dict[str, Any]:
    """The device this process runs on, from ``jax.devices()``."""
    import jax

    d = jax.devices()[0]
    return {"platform": d.platform, "device_kind": getattr(d, "device_kind", "?"),
            "count": len(jax.devices()), "backend": jax.default_backend()}


def detect_profile_name(desc: dict[str, Any] | None = None) -> str:
    """Map a device (``device_description()``) to a profile name; unknown accelerators → "unknown"."""
    desc = desc or device_description()
    plat = str(desc.get("platform", "")).lower()
    kind = str(desc.get("device_kind", "")).lower()
    if plat == "cpu":
        return "cpu"
    if plat == "tpu":
        # jax reports v6e as "TPU v6 lite" (and some versions "TPU v6e")
        if "v6" in kind:
            return "tpu_v6e"
        return "unknown"
    if plat in ("gpu", "cuda", "rocm"):
        if "l40s" in kind:
            return "l40s"
        if "h100" in kind and "pcie" not in kind:
            return "h100_sxm"
        return "unknown"
    return "unknown"


# ------------------------------------------------------------------------------ CPU measurement
def _timed(fn, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def measure_matmul_flops(n: int = 2048, dtype: str = "float32", reps: int = 5) -> dict[str, Any]:
    """FLOP/s of a jitted (n, n) @ (n, n) matmul: 2n³ FLOPs per call."""
    import jax
    import jax.numpy as jnp

    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(k1, (n, n), jnp.float32).astype(dtype)
    b = jax.random.normal(k2, (n, n), jnp.float32).astype(dtype)
    f = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
    f(a, b).block_until_ready()  # compile + warm
    times = _timed(lambda: f(a, b).block_until_ready(), reps)
    flops = 2.0 * n ** 3
    return {"n": n, "dtype": dtype, "flops_per_call": flops, "times_s": times,
            "best": flops / min(times), "median": flops / statistics.median(times)}


class StreamBench:
    """Streaming bandwidth probe: a jitted, donated ``x + 1`` over a float32 array of ``nbytes``.

    Each ``run()`` reads and writes the array once (``bytes_per_call`` = 2 × nbytes) and returns its
    wall seconds.  Keep one instance to re-measure next to other work (no recompilation)."""

    def __init__(self, nbytes: int = 1 << 30):
        import jax
        import jax.numpy as jnp

        self.n = max(1, int(nbytes) // 4)
        self.array_bytes = self.n * 4
        self.bytes_per_call = 2.0 * self.array_bytes
        self._f = jax.jit(lambda x: x + 1.0, donate_argnums=0)
        self._x = self._f(jnp.zeros((self.n,), jnp.float32))  # compile + first touch of the pages
        self._x.block_until_ready()

    def run(self) -> float:
        t0 = time.perf_counter()
        self._x = self._f(self._x)
        self._x.block_until_ready()
        return time.perf_counter() - t0

    def close(self) -> None:
        self._x = None


def measure_bandwidth(nbytes: int = 1 << 30, reps: int = 5) -> dict[str, Any]:
    """Streaming bandwidth (see :class:`StreamBench`): best and median of ``reps`` calls."""
    sb = StreamBench(nbytes)
    times = [sb.run() for _ in range(reps)]
    sb.close()
    moved = sb.bytes_per_call
    return {"array_bytes": sb.array_bytes, "bytes_per_call": moved, "times_s": times,
            "best": moved / min(times), "median": moved / statistics.median(times)}


_CPU_CACHE: dict[tuple, DeviceProfile] = {}


def measure_cpu_profile(matmul_n: int = 2048, bandwidth_bytes: int = 1 << 30, reps: int = 5,
                        measure_bf16: bool = True) -> DeviceProfile:
    """Measure the CPU profile (cached per process and per arguments)."""
    key = (matmul_n, bandwidth_bytes, reps, measure_bf16)
    if key in _CPU_CACHE:
        return _CPU_CACHE[key]
    t0 = time.perf_counter()
    mm32 = measure_matmul_flops(matmul_n, "float32", reps)
    mm16 = measure_matmul_flops(matmul_n, "bfloat16", reps) if measure_bf16 else None
    bw = measure_bandwidth(bandwidth_bytes, reps)
    peak = {"float32": mm32["best"], "bfloat16": (mm16 or mm32)["best"]}
    prof = DeviceProfile(
        name="cpu", kind="cpu", peak=peak, bandwidth=bw["best"], memory_bytes=_mem_total(),
        source=f"measured at run start on {cpu_model()}: jitted {matmul_n}² matmul (peak), "
               f"jitted donated x+1 over {bw['array_bytes'] / 2**20:.0f} MiB (bandwidth); best of {reps}",
        measured=True,
        details={"matmul_float32": mm32, "matmul_bfloat16": mm16, "bandwidth": bw,
                 "bandwidth_median": bw["median"], "measure_seconds": time.perf_counter() - t0},
    )
    _CPU_CACHE[key] = prof
    return prof


def cpu_model() -> str | None:
    """The host CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere), None if unknown."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _mem_total() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# ------------------------------------------------------------------------------ selection
def get_profile(name: str, **measure_kw) -> DeviceProfile:
    """A profile by name; "cpu" is measured (``measure_kw`` go to :func:`measure_cpu_profile`)."""
    key = _ALIASES.get(name, name)
    if key == "cpu":
        return measure_cpu_profile(**measure_kw)
    if key not in PROFILES:
        raise ValueError(f"unknown hardware profile {name!r}; known: auto, cpu, {', '.join(sorted(PROFILES))}")
    return dataclasses.replace(PROFILES[key])


def resolve_profile(requested: str = "auto", desc: dict[str, Any] | None = None, **measure_kw) -> dict[str, Any]:
    """Resolve the Hydra ``hardware`` choice against the actual device.

    Returns {"profile": DeviceProfile, "requested", "detected", "device", "matches_device"}.
    ``auto`` picks the detected profile; an unknown accelerator falls back to a profile with no
    peaks (MFU/HBU then come out as None) rather than borrowing another chip's numbers.
    """
    desc = desc or device_description()
    detected = detect_profile_name(desc)
    req = _ALIASES.get(requested, requested) if requested else "auto"
    if req == "auto":
        if detected == "unknown":
            prof = DeviceProfile(name="unknown", kind=str(desc.get("platform")), peak={}, bandwidth=float("nan"),
                                 source=f"no profile for device {desc.get('device_kind')!r}")
        else:
            prof = get_profile(detected, **measure_kw)
        name = prof.name
    else:
        prof = get_profile(req, **measure_kw)
        name = prof.name
    return {"profile": prof, "requested": requested, "detected": detected, "device": desc,
            "matches_device": name == detected}
