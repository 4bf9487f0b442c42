"""WikiText loading, document splitting and the lm-eval detokenizer (mamba2_jax.eval.data)."""

import hashlib
import os

import pytest

from mamba2_jax.eval import data as D


# ------------------------------------------------------------------------------ detokenizer
@pytest.mark.parametrize("raw, expected", [
    # heading, blank line, number separators, punctuation, brackets; outputs derived by hand
    (" = Robert Boulter = \n \n Robert Boulter is an English film , television and theatre actor . He had a guest "
     "@-@ starring role in 2 @,@ 000 @.@ 5 ( 1998 ) . \n",
     " = Robert Boulter =\n\nRobert Boulter is an English film, television and theatre actor. He had a guest-"
     "starring role in 2,000.5 (1998).\n"),
    ("the players ' ball", "the players' ball"),                       # "s '" contraction
    ('he said " hello world " to N people', 'he said "hello world" to 1 people'),  # quotes, " N "
    (" = = = Sub = = = \n", " === Sub ===\n"),                         # sub-heading markers
    ("Smith 's [ 1 ] 5 \u00b0 C ; x : y ! z ?", "Smith's [1] 5\u00b0C; x: y! z ?"),
    ("{ a } and ' quoted '", "{a} and 'quoted'"),
])
def test_detokenizer_hand_examples(raw, expected):
    assert D.wikitext_detokenizer(raw) == expected


def test_word_and_byte_counts_follow_lm_eval():
    # re.split(r"\s+") keeps the empty strings at both ends: 5 "words"
    assert D.count_words(" a  b\nc ") == 5
    assert D.count_words("a b") == 2
    assert D.count_words("") == 1
    assert D.count_bytes("caf\u00e9") == 5


# ------------------------------------------------------------------------------ documents
def test_split_documents_hand_example():
    raw = " \n = A = \n \n a1 \n = = A sub = = \n a2 \n = = = deeper = = = \n \n = B = \n b1 \n \n"
    assert D.split_documents(raw) == [
        " = A = \n \n a1 \n = = A sub = = \n a2 \n = = = deeper = = = \n ",
        " = B = \n b1 \n \n",
    ]


def test_split_documents_edge_cases():
    assert D.split_documents("") == [""]  # the last document is always emitted
    assert D.split_documents("no heading\nat all") == ["no heading\nat all"]
    # a heading needs the spaces: "=A=" is not one
    assert D.split_documents(" =A= \n x \n = B = \n y") == [" =A= \n x ", " = B = \n y"]


def test_rows_from_raw_file_matches_hf_builder(tmp_path):
    p = tmp_path / "wiki.test.raw"
    p.write_bytes(b" \n = T = \n \t \n text , here \n\n")
    rows = D.rows_from_raw_file(p)
    assert rows == ["", " = T = \n", "", " text , here \n", ""]
    assert D.raw_text_from_rows(rows) == " \n = T = \n \n text , here \n \n"  # whitespace-only → " \n"


# ------------------------------------------------------------------------------ the shared test split
@pytest.fixture(scope="module")
def test_rows(data_dir):
    return D.load_wikitext_rows("test", source="local", local_dir=data_dir / "wikitext-103-raw-v1")


def test_local_rows_match_shared_readme(test_rows, data_dir):
    s = test_rows.summary
    assert s["n_rows"] == 4358 and s["n_empty"] == 1467
    assert s["first_nonempty"] == " = Robert Boulter = \n"
    assert s["joined_bytes"] == 1_287_656
    assert s["joined_sha256"] == "bbf94c53a05abe9ee670d3b6343608095822c85e26de37c70b24fc571964574a"
    assert D.check_rows(s, "test") == []
    assert test_rows.source.startswith("local:")
    # the raw text rebuilt from the rows is byte-identical to the file (so documents are too)
    raw = (data_dir / "wikitext-103-raw-v1" / "wiki.test.raw").read_bytes()
    assert hashlib.sha256(raw).hexdigest() == D.KNOWN_ROWS["test"]["raw_sha256"]
    assert test_rows.raw_text.encode("utf-8") == raw


def test_test_split_documents(test_rows):
    docs = test_rows.documents()
    assert len(docs) == 62
    assert docs[0].startswith(" = Robert Boulter = \n \n Robert Boulter is an English film")
    assert docs[1].startswith(" = Du Fu = \n")
    for d in docs:
        assert D._is_top_heading(d.split("\n", 1)[0])
    # nothing is lost: the documents are the raw text minus the leading whitespace-only line
    assert "\n".join(docs) == test_rows.raw_text[len(" \n"):]


def test_auto_source_uses_env_dir(data_dir, monkeypatch):
    monkeypatch.setenv("MAMBA2_JAX_DATA", str(data_dir))
    r = D.load_wikitext_rows("test")
    assert r.summary["n_rows"] == 4358 and r.source.startswith("local:")
    v = D.load_wikitext_rows("valid")
    assert v.summary["n_rows"] == 3760 and D.check_rows(v.summary, "validation") == []


# ------------------------------------------------------------------------------ offline error path
def test_offline_without_local_copy_explains_how_to_supply(tmp_path, monkeypatch):
    monkeypatch.setenv("MAMBA2_JAX_DATA", str(tmp_path))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")

    def no_hub(*a, **k):
        raise AssertionError("the hub must not be tried offline")

    monkeypatch.setattr(D, "_load_hub", no_hub)
    with pytest.raises(D.WikiTextUnavailable) as e:
        D.load_wikitext_rows("test")
    msg = str(e.value)
    for needle in ("offline", "HF_DATASETS_OFFLINE", "MAMBA2_JAX_DATA", "wiki.test.raw", "data.local_dir",
                   str(tmp_path / "wikitext-103-raw-v1" / "wiki.test.raw")):
        assert needle in msg, needle
    with pytest.raises(D.WikiTextUnavailable, match="source=local"):
        D.load_wikitext_rows("test", source="local", local_dir=tmp_path / "nope")


def test_hub_failure_is_wrapped(tmp_path, monkeypatch):
    monkeypatch.setenv("MAMBA2_JAX_DATA", str(tmp_path))

    def failing_hub(*a, **k):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(D, "_load_hub", failing_hub)
    with pytest.raises(D.WikiTextUnavailable, match="ConnectionError") as e:
        D.load_wikitext_rows("test", source="hub")
    assert "MAMBA2_JAX_DATA" in str(e.value)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("MAMBA2_JAX_TEST_NETWORK") != "1", reason="set MAMBA2_JAX_TEST_NETWORK=1 (online)")
def test_hub_rows_equal_local_rows(data_dir, monkeypatch):  # pragma: no cover - needs the network
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    hub = D.load_wikitext_rows("test", source="hub")
    local = D.load_wikitext_rows("test", source="local", local_dir=data_dir)
    assert hub.rows == local.rows
