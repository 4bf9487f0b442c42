"""Parity experiment (``make parity``): the JAX model against the reference implementations on the
same checkpoints.  Thin Hydra entry point; the experiment is :mod:`mamba2_jax.eval.parity`, its
configuration ``mamba2_jax/eval/conf/parity.yaml``."""

import sys

import hydra

from mamba2_jax.eval.parity import run_parity


@hydra.main(config_path="pkg://mamba2_jax.eval.conf", config_name="parity", version_base=None)
def main(cfg) -> None:
    if not run_parity(cfg)["pass"]:
        print("[parity] FAIL: at least one (model, backend) pair is outside the tolerances", flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
