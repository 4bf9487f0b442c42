"""Serving benchmark (issue 27, section 7): `mamba2-jax serve` vs llama.cpp's llama-server vs our static-batch
Generator, one request trace and one streaming client for all, systems alternated round by round.

    make bench-serve                                     (python experiments/serve_bench.py serve_profile=full)
    python experiments/serve_bench.py serve_profile=quick serve.systems=[ours,generator]

Writes results/serve/<run>.json (+ .csv, .md, .requests.jsonl) with provenance (git sha, clean-tree flag,
every override).  The harness is mamba2_jax/eval/serve_bench.py; the settings mamba2_jax/eval/conf/serve_bench.yaml.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # reference/ (GGUF conversion for llama-server)
    sys.path.insert(0, str(REPO))

from mamba2_jax.eval import serve_bench  # noqa: E402


def run(cfg) -> dict:
    return serve_bench.run(cfg)


@hydra.main(config_path="pkg://mamba2_jax.eval.conf", config_name="serve_bench", version_base="1.3")
def main(cfg) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
