"""A JAX compilation cache for one test module: identical programs compiled by different ``jax.jit``
objects (another Generator's EOS id, an experiment that clears JAX's caches, a subprocess) are
compiled once and loaded from the cache after that.

Only programs whose XLA input (HLO, compile options, backend) is identical hit: the cache key is a
hash of them, so a hit is the same executable the compiler would have produced.  The cache lives in
a fresh directory per module (nothing carries over between runs) and is switched off again when the
module ends.  Where the session already has a cache configured, it is left as it is."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


def options(directory) -> dict:
    """JAX's options for a cache in ``directory`` that keeps every program, however fast its compile."""
    return {"jax_compilation_cache_dir": str(directory), "jax_persistent_cache_min_compile_time_secs": 0.0}


def environment(directory) -> dict[str, str]:
    """The same options as environment variables, for a child process."""
    return {k.upper(): str(v) for k, v in options(directory).items()}


@contextlib.contextmanager
def compilation_cache(directory) -> Iterator[None]:
    """Compile through a cache in ``directory`` (also for child processes, through the environment)."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache as cc

    if jax.config.jax_compilation_cache_dir is not None:
        yield
        return
    opts, env = options(directory), environment(directory)
    saved = {k: getattr(jax.config, k) for k in opts}
    saved_env = {k: os.environ.get(k) for k in env}
    for k, v in opts.items():
        jax.config.update(k, v)
    os.environ.update(env)
    cc.reset_cache()
    try:
        yield
    finally:
        for k, v in saved.items():
            jax.config.update(k, v)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        cc.reset_cache()
