"""Provenance records how a run was started: the command line and, in a Hydra app, every override
(issue 22, item 3).  The overrides checked are the ones this test passes, not ones read back from
the code under test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

APP = textwrap.dedent("""
    import json, sys
    sys.modules["jax"] = None      # provenance's JAX section is not under test: keep the run fast
    import hydra
    from mamba2_jax.eval.provenance import provenance

    @hydra.main(config_path=None, config_name=None, version_base="1.3")
    def main(cfg):
        p = provenance(packages=())
        print("PROV=" + json.dumps({"hydra_overrides": p["hydra_overrides"], "command_line": p["command_line"]}))

    main()
""")


def test_provenance_records_hydra_overrides_and_command_line(tmp_path):
    app = tmp_path / "app.py"
    app.write_text(APP)
    overrides = ["+rounds=3", "+models=[a,b]", "hydra.run.dir=" + str(tmp_path / "out"), "hydra/job_logging=none"]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, str(app), *overrides], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    line = next(s for s in out.stdout.splitlines() if s.startswith("PROV="))
    p = json.loads(line[len("PROV="):])
    # Hydra's task overrides: everything but the hydra.* ones, in the order given
    assert p["hydra_overrides"] == ["+rounds=3", "+models=[a,b]"]
    cl = p["command_line"]
    assert cl["argv"] == [str(app), *overrides]
    assert cl["command"].split()[0] == sys.executable and "'+models=[a,b]'" in cl["command"]
    assert cl["cwd"] == str(tmp_path)


def test_provenance_outside_hydra_has_no_overrides(monkeypatch):
    from mamba2_jax.eval.provenance import provenance

    monkeypatch.setitem(sys.modules, "jax", None)      # not under test (and slow to import)

    p = provenance(packages=())
    assert p["hydra_overrides"] is None
    assert p["command_line"]["argv"] == sys.argv


def test_git_info_dirty_ignores_what_the_experiments_write(tmp_path):
    """A chain of experiments writes results/ and the generated docs between its steps: that must not
    make a later step's provenance say "dirty"; a changed code file must."""
    from mamba2_jax.eval.provenance import git_info

    def git(*a):
        subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "results").mkdir()
    (tmp_path / "pkg").mkdir()
    (tmp_path / "results" / "r.json").write_text("{}")
    (tmp_path / "pkg" / "m.py").write_text("x = 1\n")
    (tmp_path / "README.md").write_text("n = 1\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    assert git_info(tmp_path)["dirty"] is False
    (tmp_path / "results" / "r.json").write_text('{"a": 1}')
    (tmp_path / "README.md").write_text("n = 2\n")
    g = git_info(tmp_path)
    assert g["dirty"] is False and g["dirty_files"] == []
    (tmp_path / "pkg" / "m.py").write_text("x = 2\n")
    g = git_info(tmp_path)
    assert g["dirty"] is True and g["dirty_files"] == ["pkg/m.py"]
