"""paper/results_map.yaml: every committed result has exactly one producing command, every command
is a make target that exists, and `make regenerate` refuses a tree whose code is modified."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from paper import results_map as RM

REPO = Path(__file__).resolve().parents[1]


def _make_targets() -> set[str]:
    """Targets defined in the Makefile and its fragments (read from the files, not from the map)."""
    targets: set[str] = set()
    for f in [REPO / "Makefile", *sorted((REPO / "mk").glob("*.mk"))]:
        for line in f.read_text().splitlines():
            m = re.match(r"^([A-Za-z0-9_.%/-]+(?:\s+[A-Za-z0-9_.%/-]+)*)\s*:(?!=)", line)
            if m and not line.startswith((".PHONY", "\t")):
                targets.update(m.group(1).split())
    return targets


def test_every_committed_result_has_a_producer():
    m = RM.load_map()
    files = RM.committed_results(REPO)
    assert files, "git ls-files results/ found nothing"
    orphans = [f for f in files if not m.is_static(f) and m.producer(f) is None]
    assert not orphans, f"no step of paper/results_map.yaml writes: {orphans}"
    both = [f for f in files if m.is_static(f) and m.writers(f)]
    assert not both, f"listed as static documentation and as written by a step: {both}"


def test_every_glob_matches_a_committed_file():
    """A `writes` glob that matches nothing is a misspelt path (or a result that was removed)."""
    m = RM.load_map()
    files = RM.committed_results(REPO) + ["paper/reproduce_summary.json", "paper/reproduce_summary.md"]
    import fnmatch

    dead = [(s.id, g) for s in m.steps for g in s.writes if not any(fnmatch.fnmatchcase(f, g) for f in files)]
    assert not dead, f"globs that match no committed file: {dead}"


def test_every_step_is_a_defined_make_target():
    m = RM.load_map()
    targets = _make_targets()
    for s in m.steps:
        if not s.runnable:
            assert s.manual, f"step {s.id} has neither a make target nor a manual instruction"
            continue
        names = [a for a in s.make if "=" not in a]
        assert names, f"step {s.id}: no target in {s.make}"
        missing = [n for n in names if n not in targets]
        assert not missing, f"step {s.id}: make targets not defined in Makefile/mk/*.mk: {missing}"


def test_the_last_writer_is_the_producer(tmp_path):
    p = tmp_path / "map.yaml"
    p.write_text("static: [results/README.md]\n"
                 "steps:\n"
                 "  - {id: quick, make: [quick], writes: ['results/a/*.json']}\n"
                 "  - {id: full, make: [full], writes: ['results/a/big.json', 'results/a/all.csv']}\n"
                 "  - {id: manual, manual: do it by hand, writes: ['results/b.log']}\n")
    m = RM.load_map(p)
    assert m.producer("results/a/small.json").id == "quick"
    assert m.producer("results/a/big.json").id == "full"
    assert [s.id for s in m.writers("results/a/big.json")] == ["quick", "full"]
    assert m.producer("results/c.json") is None and m.is_static("results/README.md")
    assert [s.id for s in RM.select(m, "", "")] == ["quick", "full"]      # the manual step is not run
    assert [s.id for s in RM.select(m, "full,quick", "quick")] == ["full"]
    with pytest.raises(KeyError, match="no step 'fulll'"):
        RM.select(m, "fulll", "")
    p.write_text("steps:\n  - {id: a, make: [a], writes: [], estimate: 3}\n")
    with pytest.raises(ValueError, match="unknown keys"):
        RM.load_map(p)


def test_estimates_prefer_the_last_measured_time(tmp_path):
    s = RM.Step(id="bench", make=["bench"], writes=[], estimate_min=10)
    summ = tmp_path / "regenerate_summary.json"
    summ.write_text('{"steps": [{"id": "bench", "seconds": 150, "exit": 0}, {"id": "fuzz", "seconds": 9, "exit": 2}]}')
    times = RM.last_times(summ)
    assert times == {"bench": 150.0}                 # a failed step's time is no estimate
    assert RM.estimate(s, times) == (2.5, "measured")
    assert RM.estimate(s, {}) == (10.0, "estimate")


def test_regenerate_refuses_a_dirty_tree(monkeypatch, capsys):
    m = RM.load_map()
    monkeypatch.setattr(RM, "code_dirty", lambda root=RM.REPO: ["mamba2_jax/model.py"])
    ran = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: ran.append(a))
    rc = RM.regenerate(m, RM.select(m, "oracle", ""), ["make"], allow_dirty=False, dry_run=False)
    assert rc == 2 and not ran
    assert "mamba2_jax/model.py" in capsys.readouterr().err
