"""GPU target descriptions (XLA ``GpuTargetConfig`` text protos) for compiling without a GPU.

XLA's GPU compiler needs the device's properties (SM count, shared memory, compute capability,
memory) to compile; with no GPU to query, JAX's CUDA plugin takes them as a ``target_config``
(openxla/xla#16913: ``jax.experimental.topologies.get_topology_desc(platform="cuda",
target_config=..., topology="1x1x1")``).

* ``h100_sxm``: the fields of XLA's own spec file xla/backends/gpu/target_config/specs/h100_sxm.txtpb
  (openxla/xla) that XLA 0.10.2's proto knows;
* ``l40s``: written here from NVIDIA's L40S datasheet (142 SMs, 48 GB GDDR6 at 864 GB/s, 96 MB L2,
  2.52 GHz boost) and the Ada (sm_89) limits of NVIDIA's Ada tuning guide (100 KB shared memory and
  1536 threads per SM, 99 KB opt-in shared memory per block).  It describes the chip to the
  compiler; it was not read from a real device.
"""

from __future__ import annotations

_COMMON = """
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
"""

TARGET_CONFIGS = {
    "h100_sxm": "gpu_device_info {" + _COMMON + """
  shared_memory_per_core: 233472
  threads_per_core_limit: 2048
  core_count: 132
  memory_bandwidth: 3352320000000
  l2_cache_size: 52428800
  clock_rate_ghz: 1.98
  device_memory_size: 84942979072
  shared_memory_per_block_optin: 232448
  cuda_compute_capability { major: 9 minor: 0 }
}
platform_name: "CUDA"
dnn_version_info { major: 9 minor: 10 }
device_description_str: "NVIDIA H100 80GB HBM3"
""",
    "l40s": "gpu_device_info {" + _COMMON + """
  shared_memory_per_core: 102400
  threads_per_core_limit: 1536
  core_count: 142
  memory_bandwidth: 864000000000
  l2_cache_size: 100663296
  clock_rate_ghz: 2.52
  device_memory_size: 48000000000
  shared_memory_per_block_optin: 101376
  cuda_compute_capability { major: 8 minor: 9 }
}
platform_name: "CUDA"
dnn_version_info { major: 9 minor: 10 }
device_description_str: "NVIDIA L40S"
""",
}
