"""Check that the mamba2-jax 1.1.2 installed with ``pip --no-deps --target DIR`` has its runtime
requirements satisfied by this interpreter's environment (it runs on the project venv's jax, jaxlib,
flax and optax; installing its deps into DIR could shadow them with other versions).

    python experiments/peers_runners/check_anchor.py .anchor
"""

from __future__ import annotations

import importlib.metadata as md
import sys
from pathlib import Path

from packaging.requirements import Requirement


def main(anchor_dir: str) -> int:
    dists = list(md.distributions(path=[str(Path(anchor_dir).resolve())]))
    dist = next((d for d in dists if d.metadata["Name"].lower().replace("_", "-") == "mamba2-jax"), None)
    if dist is None:
        print(f"mamba2-jax is not installed in {anchor_dir}", file=sys.stderr)
        return 1
    bad = []
    for r in dist.requires or []:
        req = Requirement(r)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # optional extras (dev, pretrained, golden)
        try:
            v = md.version(req.name)
        except md.PackageNotFoundError:
            bad.append(f"{req} (missing)")
            continue
        if not req.specifier.contains(v, prereleases=True):
            bad.append(f"{req} (have {v})")
    print(f"mamba2-jax {dist.version} in {anchor_dir}: requirements "
          + ("satisfied by this environment" if not bad else "NOT satisfied: " + "; ".join(bad)))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else ".anchor"))
