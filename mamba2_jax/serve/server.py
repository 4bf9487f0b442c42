"""``mamba2-jax serve``: load the model, size the slot table, start uvicorn with the app."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

__all__ = ["serve", "parse_bytes"]


def parse_bytes(s: str) -> int:
    """'1073741824', '512MiB', '2GiB', '1.5G' → bytes."""
    t = str(s).strip()
    units = {"k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
    low = t.lower().removesuffix("b")
    for u in sorted(units, key=len, reverse=True):
        if low.endswith(u):
            return int(float(low[: -len(u)]) * units[u])
    return int(float(low))


def _available_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def serve(a) -> int:
    import jax
    import uvicorn

    from ..checkpoint import resolve_model_dir
    from ..loading import load_pretrained
    from ..sharding import describe_mesh, initialize_distributed, make_mesh
    from ..tokenizer import TokenizerError, load_tokenizer
    from .app import ServeConfig, create_app
    from .engine import Engine
    from .metrics import ServeMetrics

    def err(msg: str) -> int:
        print(f"mamba2-jax serve: error: {msg}", file=sys.stderr)
        return 2

    initialize_distributed(a.coordinator_address, a.num_processes, a.process_id)
    if jax.process_count() > 1:
        return err("multi-process serving (jax.distributed) is not supported yet: run one server per host "
                   "behind a load balancer (docs/serving.md)")
    model_dir = resolve_model_dir(a.model)
    mesh = make_mesh(a.mesh)
    if mesh is not None and a.slots % mesh.shape["data"]:
        return err(f"--slots {a.slots} must be a multiple of the mesh's data axis ({mesh.shape['data']}): "
                   "slots are sharded over 'data'")
    try:
        prefix_bytes = parse_bytes(a.prefix_cache_bytes)
    except ValueError:
        return err(f"--prefix-cache-bytes {a.prefix_cache_bytes!r} is not a byte count (e.g. 1073741824 or 1GiB)")
    model = load_pretrained(model_dir, dtype=a.dtype, mesh=mesh, state_dtype=a.state_dtype)
    slot_bytes = Engine.state_bytes(model.cfg, model.dtype, model.state_dtype)
    table = slot_bytes * a.slots
    avail = _available_bytes()
    pol = model.policy
    print(f"mamba2-jax serve: {model.cfg.name}, params {pol['param_dtype']}, state {pol['state_dtype']}, "
          f"matmul precision {pol['matmul_precision']}; {a.slots} slots x "
          f"{slot_bytes / 2**20:.2f} MiB = {table / 2**20:.1f} MiB of state; prefix cache up to "
          f"{prefix_bytes / 2**20:.0f} MiB; mesh {describe_mesh(mesh)}", file=sys.stderr)
    if avail is not None and table + prefix_bytes > avail:
        return err(f"the slot table ({table / 2**20:.1f} MiB) and the prefix-cache budget "
                   f"({prefix_bytes / 2**20:.0f} MiB) exceed the {avail / 2**20:.0f} MiB of memory available: "
                   "lower --slots or --prefix-cache-bytes")
    try:
        tok = load_tokenizer(a.tokenizer, model_dir=model_dir, allow_hub=a.tokenizer is not None)
    except TokenizerError as e:
        print(f"mamba2-jax serve: no tokenizer ({e}); prompts must be token ids", file=sys.stderr)
        tok = None
    name = a.served_model_name or Path(str(model_dir)).name
    metrics = ServeMetrics(name)
    engine = Engine(model, slots=a.slots, prefill_chunk=a.prefill_chunk, prefill_budget=a.prefill_budget,
                    decode_steps=a.decode_steps,
                    prefix_cache_bytes=prefix_bytes, max_queue=a.max_queue, eos_id=0, metrics=metrics)
    api_key = a.api_key or os.environ.get("MAMBA2_JAX_API_KEY") or None
    cfg = ServeConfig(model_name=name, api_key=api_key, max_tokens_limit=a.max_tokens_limit)

    def ready(info):
        print(f"mamba2-jax serve: warmed in {info['warmup_s']:.1f}s ({info['trace_counts']}); "
              f"ready on http://{a.host}:{a.port}", file=sys.stderr, flush=True)

    app = create_app(engine, tok, cfg, metrics, on_ready=ready)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):  # SIGTERM / SIGINT: stop admission, then uvicorn's graceful exit
            engine.stop_admission()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, host=a.host, port=a.port, log_level=a.log_level, access_log=False,
                            timeout_graceful_shutdown=a.graceful_timeout, lifespan="on")
    # uvicorn shuts down gracefully on SIGTERM and then re-raises the signal to the handler that was in
    # place before it started; the default one kills the process (exit code -15, not 0).  A no-op handler
    # there lets a graceful SIGTERM end with exit code 0.  It is set only now, so that a SIGTERM while the
    # model loads still ends the process.
    signal.signal(signal.SIGTERM, lambda sig, frame: None)
    Server(config).run()
    return 0
