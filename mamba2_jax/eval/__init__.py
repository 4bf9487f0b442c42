"""The evaluation harness: data, perplexity (protocols and scorer), benchmarks, hardware profiles,
FLOP and byte counts, provenance, results I/O (one schema), parity and the float64 oracle, training.

Importing this package imports nothing heavy; each module is imported on its own.  Its Hydra
configurations are packaged in ``mamba2_jax.eval.conf``."""
