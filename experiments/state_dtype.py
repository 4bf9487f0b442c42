"""Fidelity of a 16-bit SSM state against the float32 state (issue 28 item 4): greedy agreement over
64 tokens on the parity prompts and teacher-forced decode logits, per model.

    make state-dtype-fidelity            (python experiments/state_dtype.py)
    python experiments/state_dtype.py max_prompts=2 n_new=8 'state_dtypes=[bfloat16]'

Writes results/state_dtype/fidelity.json (+ .csv) with provenance (git sha, clean-tree flag, every
override).  The harness is mamba2_jax/eval/state_fidelity.py; the settings mamba2_jax/eval/conf/state_dtype.yaml.
"""

from __future__ import annotations

import hydra

from mamba2_jax.eval import state_fidelity


@hydra.main(config_path="pkg://mamba2_jax.eval.conf", config_name="state_dtype", version_base="1.3")
def main(cfg) -> None:
    state_fidelity.run(cfg)


if __name__ == "__main__":
    main()
