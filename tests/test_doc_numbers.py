"""Numbers in the docs come from the result files (issue 22, item 2).

The docs' generated spans and tables (paper/doc_numbers.py, registry paper/doc_numbers.yaml) are
re-rendered in memory from results/ and paper/reproduce_summary.json: a doc that differs means a
number drifted from its result file (fix: `make docs`).  A runtime- or figure-like number outside a
generated span must be on the registry's allowlist with a reason.  No JAX needed.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path

import pytest

from paper import doc_numbers as dn

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def reg():
    return dn.load_registry()


def test_docs_match_their_result_files(reg):
    rendered = dn.render_all(REPO, reg)      # a missing source file raises DocNumberError here
    assert rendered, "no docs found"
    diffs = []
    for p, (old, new) in rendered.items():
        if old != new:
            rel = str(p.relative_to(REPO))
            diffs += difflib.unified_diff(old.splitlines(True), new.splitlines(True), rel, rel + " (from results)")
    assert not diffs, "docs differ from their result files; run `make docs`:\n" + "".join(diffs)[:6000]


def test_every_registry_entry_is_quoted_and_its_sources_exist(reg):
    text = "".join(p.read_text() for p in dn.docs(REPO))
    used_n = {m.group("name") for m in dn.SPAN.finditer(text)} | set(dn.tex_names((REPO / dn.TEX_DOC).read_text()))
    used_b = {m.group("name") for m in dn.BLOCK.finditer(text)}
    assert used_n <= set(reg["numbers"]), used_n - set(reg["numbers"])
    assert used_b <= set(reg["blocks"]), used_b - set(reg["blocks"])
    assert not set(reg["numbers"]) - used_n, f"numbers defined but quoted nowhere: {set(reg['numbers']) - used_n}"
    assert not set(reg["blocks"]) - used_b, f"blocks defined but used nowhere: {set(reg['blocks']) - used_b}"
    for name, spec in {**reg["numbers"], **reg["blocks"]}.items():
        for f in dn.source_files(spec, REPO):
            assert f.is_file() and REPO in f.resolve().parents, (name, f)


def test_no_unsourced_figures_in_the_docs(reg):
    bad = []
    for p in dn.docs(REPO):
        rel = str(p.relative_to(REPO))
        for ln, m, line in dn.unsourced(p.read_text()):
            if not dn.allowed(rel, line, reg):
                bad.append(f"{rel}:{ln}: {m!r} in: {line.strip()[:120]}")
    assert not bad, ("runtime- or figure-like numbers without a source: put them in a generated span "
                     "(paper/doc_numbers.yaml) or on its allowlist with a reason:\n" + "\n".join(bad))


def test_allowlist_entries_have_reasons_and_are_still_needed(reg):
    lines = {str(p.relative_to(REPO)): p.read_text().splitlines() for p in dn.docs(REPO)}
    lines[dn.TEX_DOC] = (REPO / dn.TEX_DOC).read_text().splitlines()
    for a in reg["allow"]:
        assert a.get("reason"), a
        hits = [(doc, ln) for doc, ls in lines.items() if a.get("doc") in (None, doc) for ln in ls if a["text"] in ln]
        assert hits, f"allowlist entry matches no line (stale): {a}"
        assert any(dn.unsourced_tex(h) if doc == dn.TEX_DOC else dn.FIGURE_LIKE.search(h) for doc, h in hits), \
            f"allowlist entry covers no figure-like number: {a}"


# ------------------------------------------------------------------------------ the mechanism itself
def _root(tmp_path: Path, doc: str, result: dict, registry: dict) -> tuple[Path, dict]:
    (tmp_path / "results" / "x").mkdir(parents=True)
    (tmp_path / "results" / "x" / "run.json").write_text(json.dumps(result))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text(doc)
    reg = {"numbers": {}, "blocks": {}, "allow": [], **registry}
    return tmp_path, reg


RESULT = {"records": [{"metric": "decode_tokens_per_s", "dtype": "float32", "value": 74.7396},
                      {"metric": "decode_tokens_per_s", "dtype": "bfloat16", "value": 66.8175},
                      {"metric": "rel", "value": 7.19e-7}, {"metric": "rel", "value": 4.39e-7},
                      {"metric": "rel", "value": -1.07e-8}],
          "summary": {"hours": {"a": 0.7874, "b": 0.8908}}}


def test_a_drifted_number_is_detected_and_rewritten(tmp_path):
    reg = {"numbers": {"tok": {"file": "results/x/run.json", "records": {"metric": "decode_tokens_per_s",
                                                                         "dtype": "float32"}, "fmt": ".1f"}}}
    root, reg = _root(tmp_path, "decode <!-- n:tok -->80.1<!-- /n --> tok/s\n", RESULT, reg)
    ((_, (old, new)),) = dn.render_all(root, reg).items()
    assert old != new and new == "decode <!-- n:tok -->74.7<!-- /n --> tok/s\n"
    (root / "docs" / "a.md").write_text(new)
    ((_, (old, new)),) = dn.render_all(root, reg).items()
    assert old == new


def test_missing_source_file_or_unknown_name_is_an_error(tmp_path):
    root, reg = _root(tmp_path, "<!-- n:gone -->1<!-- /n -->\n", RESULT,
                      {"numbers": {"gone": {"file": "results/nothing/*.json", "key": "value"}}})
    with pytest.raises(dn.DocNumberError, match="no file matches"):
        dn.render_all(root, reg)
    root2, reg2 = _root(tmp_path / "b", "<!-- n:unknown -->1<!-- /n -->\n", RESULT, {})
    with pytest.raises(dn.DocNumberError, match="not in the registry"):
        dn.render_all(root2, reg2)


def test_reductions_and_directed_rounding_keep_range_sentences_true(tmp_path):
    root, _ = _root(tmp_path, "", RESULT, {})
    spec = {"file": "results/x/run.json", "records": {"metric": "rel"}, "fmt": "e1"}
    # "within X": the max rounded up; "from Y": the min rounded down; by hand from RESULT
    assert dn.render_number("m", {**spec, "reduce": "max", "round": "up"}, root) == "7.2e-7"
    assert dn.render_number("m", {**spec, "reduce": "min", "round": "down"}, root) == "-1.1e-8"
    assert dn.render_number("m", {**spec, "reduce": "absmax", "round": "up"}, root) == "7.2e-7"
    assert dn.render_number("m", {**spec, "reduce": "count"}, root) == "3.0e0"
    h = {"file": "results/x/run.json", "key": "summary.hours.*", "fmt": ".2f"}
    assert dn.render_number("h", {**h, "reduce": "min"}, root) == "0.79"
    assert dn.render_number("h", {**h, "reduce": "max"}, root) == "0.89"
    with pytest.raises(dn.DocNumberError, match="expected one"):
        dn.render_number("h", h, root)
    assert dn.format_value(1625, ",d") == "1,625" and dn.format_value(5.4e-8, "e1") == "5.4e-8"


def test_reproduce_runtimes_block_follows_the_summary(tmp_path):
    summary = {"n_steps": 2, "exit": 0, "total_seconds": 774.0,
               "steps": [{"index": 1, "name": "setup", "seconds": 6.0, "exit": 0, "load_after": [1.0, 1, 1]},
                         {"index": 2, "name": "parity", "seconds": 768.0, "exit": 0, "load_after": [3.04, 2, 1]}]}
    (tmp_path / "paper").mkdir()
    (tmp_path / "paper" / "reproduce_summary.json").write_text(json.dumps(summary))
    out = dn.render_block("rt", {"kind": "reproduce_runtimes", "file": "paper/reproduce_summary.json"}, tmp_path)
    assert "| [2/2] parity | 12.8 | 0 | 3.0 |" in out and "| **total** | **12.9** |" in out


def test_scanner_flags_quoted_runtimes_outside_spans():
    text = ("make reproduce took 12.9 min; decode 74.7 tok/s at 63.1 GB/s; 193× faster; error 7.2e-7.\n"
            "generated: <!-- n:x -->12.9<!-- /n --> min and ×<!-- n:y -->1.019<!-- /n -->\n"
            "`code 5 min` and HBU = bytes + 2 × (state)\n"
            "```\nmake x  # 3 min\n```\n")
    found = [m for _, m, _ in dn.unsourced(text)]
    assert found == ["12.9 min", "74.7 tok/s", "63.1 GB/s", "193×", "7.2e-7"], found


# ------------------------------------------------------------------ the paper: \val{NAME} -> paper/numbers.tex
def _tex_root(tmp_path: Path, tex: str, committed: str | None) -> tuple[Path, dict]:
    root, reg = _root(tmp_path, "", RESULT, {"numbers": {
        "tok": {"file": "results/x/run.json", "records": {"metric": "decode_tokens_per_s", "dtype": "float32"},
                "fmt": ".1f"},
        "err": {"file": "results/x/run.json", "records": {"metric": "rel"}, "reduce": "max", "fmt": "e1",
                "round": "up"}}})
    (root / "paper").mkdir()
    (root / "paper" / "main.tex").write_text(tex)
    if committed is not None:
        (root / "paper" / "numbers.tex").write_text(committed)
    return root, reg


def test_paper_numbers_follow_the_results(tmp_path):
    """A \\val in main.tex is rendered into numbers.tex; a result that changes makes the committed file stale."""
    tex = "decode \\val{tok} tokens/s, error \\val{err}% \\val{gone} is commented out\n"
    root, reg = _tex_root(tmp_path, tex, None)
    ((_, (old, new)), ) = [(p, v) for p, v in dn.render_all(root, reg).items() if p.name == "numbers.tex"]
    assert old == "" and "\\numdef{tok}{74.7}" in new and "\\numdef{err}{\\ensuremath{7.2\\times 10^{-7}}}" in new
    assert "gone" not in new                                   # a name in a LaTeX comment is not quoted
    (root / "paper" / "numbers.tex").write_text(new)
    assert all(o == n for o, n in dn.render_all(root, reg).values())
    res = json.loads((root / "results" / "x" / "run.json").read_text())
    res["records"][0]["value"] = 80.06                        # a regenerated result
    (root / "results" / "x" / "run.json").write_text(json.dumps(res))
    changed = [p.name for p, (o, n) in dn.render_all(root, reg).items() if o != n]
    assert changed == ["numbers.tex"]


def test_paper_unknown_name_and_tex_escaping(tmp_path):
    root, reg = _tex_root(tmp_path, "\\val{nothing}\n", "")
    with pytest.raises(dn.DocNumberError, match="not in the registry"):
        dn.render_all(root, reg)
    assert dn.tex_value("AMD_EPYC 50%") == "AMD\\_EPYC 50\\%" and dn.tex_value("1,048,576") == "1,048,576"


def test_tex_scanner_flags_numbers_outside_val():
    text = ("decode at 44.7 tokens/s and 63\\% of the bound; \\val{x} GB/s is fine; \\texttt{12 min} is code\n"
            "% 9 min in a comment\n$\\times$300 faster\n")
    assert [m for _, m, _ in dn.unsourced_tex(text)] == ["44.7 tokens/s", "63%", "×300"]
