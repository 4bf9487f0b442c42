"""The evaluation harness: data, perplexity (protocols and scorer), benchmarks, FLOP and byte
counts, provenance, results I/O (one schema), parity and the float64 oracle.  It builds on the core
(the device profiles are :mod:`mamba2_jax.hardware`, training is :mod:`mamba2_jax.train`); no core
module imports it.

Importing this package imports nothing heavy; each module is imported on its own.  Its Hydra
configurations are packaged in ``mamba2_jax.eval.conf``."""
