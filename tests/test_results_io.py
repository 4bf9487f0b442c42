"""The one results schema, strict JSON and the atomic writer (mamba2_jax.fileio, mamba2_jax.eval.results)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from mamba2_jax.eval.results import load_results, validate_result, write_document
from mamba2_jax.fileio import atomic_write, atomic_write_json, dumps_strict, sha256_files, to_jsonable

REPO = Path(__file__).resolve().parents[1]


def _strict_load(text: str):
    def bad(tok):
        raise ValueError(f"non-standard JSON constant {tok}")

    return json.loads(text, parse_constant=bad)


def test_nan_policy_is_null_and_output_is_strict_json():
    doc = {"a": float("nan"), "b": [np.float32("inf"), -math.inf, 1.5], "c": np.int64(3), "d": np.arange(3),
           "e": (np.bool_(True), None), "f": Path("x/y")}
    out = _strict_load(dumps_strict(doc))
    assert out == {"a": None, "b": [None, None, 1.5], "c": 3, "d": [0, 1, 2], "e": [True, None], "f": "x/y"}


def test_unknown_objects_are_refused_not_stringified():
    with pytest.raises(TypeError):
        to_jsonable({"x": object()})


def test_atomic_write_keeps_previous_file_on_error(tmp_path):
    p = tmp_path / "r.json"
    atomic_write_json(p, {"v": 1})

    def failing(f):
        f.write(b'{"v": 2, "trunc')
        raise OSError(28, "No space left on device")  # ENOSPC half-way through

    with pytest.raises(OSError):
        atomic_write(p, failing)
    assert _strict_load(p.read_text()) == {"v": 1}
    assert sorted(x.name for x in tmp_path.iterdir()) == ["r.json"]  # no temporary left behind


def test_write_document_adds_schema_and_validates(tmp_path):
    p = write_document(tmp_path / "x" / "run.json", {"label": "mine", "detail": {"k": float("nan")}},
                       experiment="parity", run="run", records=[{"m": 1.0}],
                       hardware={"profile": {"name": "cpu"}, "device": {}, "matches_device": True})
    doc = _strict_load(p.read_text())
    validate_result(doc)
    assert doc["label"] == "mine" and doc["detail"] == {"k": None} and doc["records"] == [{"m": 1.0}]
    assert [d["run"] for _, d in load_results("x", tmp_path)] == ["run"]
    with pytest.raises(ValueError):
        write_document(tmp_path / "bad.json", {}, experiment="parity", run="r", records=[])


def test_sha256_files(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    got = sha256_files(tmp_path)
    assert list(got) == ["config.json"] and got["config.json"]["bytes"] == 2
    assert got["config.json"]["sha256"] == "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"


def _committed_results():
    return sorted((REPO / "results").rglob("*.json"))


@pytest.mark.parametrize("path", _committed_results(), ids=lambda p: str(p.relative_to(REPO / "results")))
def test_committed_results_follow_the_one_schema(path):
    doc = _strict_load(path.read_text())
    validate_result(doc)
