"""WikiText-103 perplexity, JAX vs reference backends (``make perplexity``).  Thin Hydra entry point;
the experiment is :mod:`mamba2_jax.eval.perplexity`, its configuration
``mamba2_jax/eval/conf/perplexity.yaml``."""

import hydra

from mamba2_jax.eval.perplexity import main as run


@hydra.main(config_path="pkg://mamba2_jax.eval.conf", config_name="perplexity", version_base="1.3")
def main(cfg) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
