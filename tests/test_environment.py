"""environment.yml must pin exactly what pyproject.toml pins (core + test extras)."""

import re
from pathlib import Path

import tomllib
import yaml

REPO = Path(__file__).resolve().parents[1]


def _norm(req: str) -> tuple[str, str]:
    m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", req)
    return m.group(1).lower().replace("_", "-"), m.group(2).replace(" ", "")


def test_environment_yml_matches_pyproject():
    py = tomllib.loads((REPO / "pyproject.toml").read_text())
    reqs = py["project"]["dependencies"] + py["project"]["optional-dependencies"]["test"]
    want = dict(_norm(r) for r in reqs)
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    got = dict(_norm(r) for r in pip)
    assert got == want


def test_torch_is_pinned_to_the_cpu_wheel_version():
    py = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "torch==2.13.0" in py["project"]["optional-dependencies"]["test"]
    assert "torch==2.13.0" in (REPO / "Makefile").read_text()
