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

OPTIONS = {"jax_compilation_cache_dir": None, "jax_persistent_cache_min_compile_time_secs": 0.0}


@contextlib.contextmanager
def compilation_cache(directory) -> Iterator[None]:
    """Compile through a cache in ``directory`` (also for child processes, through the environment)."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache as cc

    if jax.config.jax_compilation_cache_dir is not None:
        yield
        return
    options = {**OPTIONS, "jax_compilation_cache_dir": str(directory)}
    saved = {k: getattr(jax.config, k) for k in options}
    saved_env = {k.upper(): os.environ.get(k.upper()) for k in options}
    for k, v in options.items():
        jax.config.update(k, v)
        os.environ[k.upper()] = str(v)
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
