"""WikiText-103 (raw) loading, document splitting and the lm-evaluation-harness detokenizer.

Two sources give the same rows
------------------------------
* **hub**: ``datasets.load_dataset("wikitext", "wikitext-103-raw-v1", split=...)["text"]``.
* **local**: the original raw file (``wiki.test.raw`` / ``wiki.valid.raw`` / ``wiki.train.raw``)
  in a directory, e.g. ``$MAMBA2_JAX_DATA/wikitext-103-raw-v1`` (``../shared/data`` in CI).  It is
  turned into rows exactly as the HF ``wikitext`` builder does: one row per line of the file read in
  text mode (universal newlines, each row keeps its ``"\\n"``), and a line that holds only
  whitespace becomes ``""``.  For the test split that gives 4358 rows, 1467 of them empty, the first
  non-empty one ``" = Robert Boulter = \\n"``, and ``"".join(rows)`` has the sha256 in
  :data:`KNOWN_ROWS` (checked by :func:`check_rows`).

Resolution order for ``source="auto"``: an explicit ``local_dir`` (directory or file), then
``$MAMBA2_JAX_DATA/wikitext-103-raw-v1``, then the hub.  When ``HF_DATASETS_OFFLINE`` or
``HF_HUB_OFFLINE`` is set and no local copy is found, :class:`WikiTextUnavailable` is raised at
once (the hub is not tried) with instructions for supplying the file.

Document-level layout
---------------------
lm-evaluation-harness' ``wikitext`` task reads ``EleutherAI/wikitext_document_level``, which
splits the *raw file text* into articles.  :func:`split_documents` implements its rule:
split the text on ``"\\n"``; a line is a top-level heading when, after replacing ``"= = ="`` by
``"==="`` and then ``"= ="`` by ``"=="`` and stripping, it starts with ``"= "`` and ends with
``" ="``.  Each heading starts a new document; the lines collected so far are joined with
``"\\n"`` and emitted if they are not whitespace-only; the last document is always emitted.

The raw text can be rebuilt from the HF rows (:func:`raw_text_from_rows`): rows are concatenated
and an empty row stands for a line holding a single space (``" \\n"``), which is what every
whitespace-only line of the raw test and validation files is; the rebuilt test text is
byte-identical to ``wiki.test.raw`` (sha256 173c87a5..., tested), so documents from both sources
are identical too.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "WikiTextUnavailable", "WikiTextRows", "load_wikitext_rows", "rows_from_raw_file", "raw_text_from_rows",
    "rows_summary", "check_rows", "split_documents", "wikitext_detokenizer", "count_words", "count_bytes",
    "KNOWN_ROWS", "RAW_FILES", "LOCAL_SUBDIR", "HUB_PATH", "HUB_NAME", "is_offline",
]

HUB_PATH = "wikitext"
HUB_NAME = "wikitext-103-raw-v1"
LOCAL_SUBDIR = "wikitext-103-raw-v1"
RAW_FILES = {"test": "wiki.test.raw", "validation": "wiki.valid.raw", "train": "wiki.train.raw"}
_SPLIT_ALIASES = {"valid": "validation", "val": "validation"}

# Row-level facts of the HF rows (see ../shared/README.md); used by check_rows.
KNOWN_ROWS: dict[str, dict[str, Any]] = {
    "test": {
        "n_rows": 4358,
        "n_empty": 1467,
        "first_nonempty": " = Robert Boulter = \n",
        "joined_bytes": 1_287_656,
        "joined_sha256": "bbf94c53a05abe9ee670d3b6343608095822c85e26de37c70b24fc571964574a",
        "raw_sha256": "173c87a53759e0201f33e0ccf978e510c2042d7f2cb78229d9a50d79b9e7dd08",
    },
    "validation": {
        "n_rows": 3760,
        "raw_sha256": "4cd0f6876d07a413aa911261ff6d363c72d757d47f0fdd6015702014c89cb9c7",
    },
}


class WikiTextUnavailable(RuntimeError):
    """Neither a local copy nor the hub could supply the requested WikiText split."""


def _truthy(v: str | None) -> bool:
    return (v or "").strip().lower() in {"1", "true", "yes", "on"}


def is_offline() -> bool:
    return _truthy(os.environ.get("HF_DATASETS_OFFLINE")) or _truthy(os.environ.get("HF_HUB_OFFLINE"))


def _norm_split(split: str) -> str:
    split = _SPLIT_ALIASES.get(split, split)
    if split not in RAW_FILES:
        raise ValueError(f"unknown WikiText split {split!r}; expected one of {sorted(RAW_FILES)}")
    return split


@dataclass
class WikiTextRows:
    """The rows of one split, and where they came from."""

    rows: list[str]
    split: str
    source: str  # "local:<path>" or "hub:<path>/<name>"
    summary: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.summary:
            self.summary = rows_summary(self.rows)

    @property
    def raw_text(self) -> str:
        return raw_text_from_rows(self.rows)

    def documents(self) -> list[str]:
        return split_documents(self.raw_text)


# ------------------------------------------------------------------------------ rows
def rows_from_raw_file(path: str | Path) -> list[str]:
    """Rows of a raw WikiText file, as the HF ``wikitext`` builder yields them."""
    rows: list[str] = []
    with open(path, encoding="utf-8") as f:  # text mode: universal newlines, like the builder
        for line in f:
            rows.append(line if line.strip() else "")
    return rows


def raw_text_from_rows(rows: list[str]) -> str:
    """Rebuild the raw file text from HF rows (empty row → ``" \\n"``, see module docstring)."""
    return "".join(r if r else " \n" for r in rows)


def rows_summary(rows: list[str]) -> dict[str, Any]:
    joined = "".join(rows).encode("utf-8")
    raw = raw_text_from_rows(rows).encode("utf-8")
    return {
        "n_rows": len(rows),
        "n_empty": sum(1 for r in rows if r == ""),
        "first_nonempty": next((r for r in rows if r), None),
        "joined_bytes": len(joined),
        "joined_sha256": hashlib.sha256(joined).hexdigest(),
        "raw_sha256": hashlib.sha256(raw).hexdigest(),
    }


def check_rows(summary: dict[str, Any], split: str) -> list[str]:
    """Differences between a rows summary and the known facts of the split ([] = all match)."""
    known = KNOWN_ROWS.get(_norm_split(split), {})
    return [f"{k}: expected {v!r}, got {summary.get(k)!r}" for k, v in known.items() if summary.get(k) != v]


# ------------------------------------------------------------------------------ loading
def _local_candidates(split: str, local_dir: str | Path | None) -> list[Path]:
    fname = RAW_FILES[split]
    cands: list[Path] = []
    if local_dir:
        p = Path(local_dir).expanduser()
        cands += [p] if p.suffix == ".raw" else [p / fname, p / LOCAL_SUBDIR / fname]
    base = os.environ.get("MAMBA2_JAX_DATA")
    if base:
        cands.append(Path(base).expanduser() / LOCAL_SUBDIR / fname)
    return cands


def _how_to_supply(split: str, tried: list[Path]) -> str:
    fname = RAW_FILES[split]
    tried_s = "".join(f"\n    - {p}" for p in tried) or "\n    - (no local path configured)"
    return (
        f"Looked for a local copy at:{tried_s}\n"
        f"  Supply the raw WikiText-103 {split} file ({fname}) in one of these ways:\n"
        f"    * set MAMBA2_JAX_DATA to a directory holding {LOCAL_SUBDIR}/{fname} "
        f"(the shared CI copy is ../shared/data);\n"
        f"    * pass a directory or the file itself: load_wikitext_rows(local_dir=...), or Hydra "
        f"`data.local_dir=/path/to/{LOCAL_SUBDIR}`;\n"
        f"    * or go online (unset HF_DATASETS_OFFLINE / HF_HUB_OFFLINE) so that "
        f"datasets.load_dataset({HUB_PATH!r}, {HUB_NAME!r}) can download it.\n"
        f"  The raw files are in the original wikitext-103-raw-v1.zip (Merity et al. 2016)."
    )


def _load_hub(split: str, hub_path: str, hub_name: str) -> list[str]:
    import datasets

    ds = datasets.load_dataset(hub_path, hub_name, split=split)
    return list(ds["text"])


def load_wikitext_rows(split: str = "test", source: str = "auto", local_dir: str | Path | None = None,
                       hub_path: str = HUB_PATH, hub_name: str = HUB_NAME) -> WikiTextRows:
    """Rows of a WikiText-103-raw split.  ``source``: ``auto`` | ``local`` | ``hub``."""
    split = _norm_split(split)
    if source not in ("auto", "local", "hub"):
        raise ValueError(f"unknown source {source!r} (auto | local | hub)")
    tried = _local_candidates(split, local_dir) if source != "hub" else []
    if source != "hub":
        for p in tried:
            if p.is_file():
                return WikiTextRows(rows_from_raw_file(p), split, f"local:{p.resolve()}")
        if source == "local":
            raise WikiTextUnavailable(f"WikiText {split} split: no local file found (source=local).\n  "
                                      + _how_to_supply(split, tried))
        if is_offline():
            raise WikiTextUnavailable(
                f"WikiText {split} split is not available offline (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE is set "
                f"and no local copy was found).\n  " + _how_to_supply(split, tried))
    try:
        rows = _load_hub(split, hub_path, hub_name)
    except Exception as e:
        raise WikiTextUnavailable(
            f"could not load {hub_path}/{hub_name} ({split}) with `datasets` "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}).\n  "
            + _how_to_supply(split, tried)) from None
    return WikiTextRows(rows, split, f"hub:{hub_path}/{hub_name}")


# ------------------------------------------------------------------------------ documents
def _is_top_heading(line: str) -> bool:
    r = line.replace("= = =", "===").replace("= =", "==").strip()
    return r.startswith("= ") and r.endswith(" =")


def _group_at_headings(lines: list[str]) -> list[list[str]]:
    """Cut ``lines`` before every top-level heading; a heading that follows only blank lines
    does not cut (so blank lines before the first heading stay with it)."""
    groups: list[list[str]] = [[]]
    for line in lines:
        if _is_top_heading(line) and any(x.strip() for x in groups[-1]):
            groups.append([])
        groups[-1].append(line)
    return groups


def split_documents(raw_text: str) -> list[str]:
    """Articles of a raw WikiText text (EleutherAI/wikitext_document_level rule, see module doc):
    the text before the first heading is dropped when it is blank."""
    groups = _group_at_headings(raw_text.split("\n"))
    first = groups[0]
    heads = [i for i, x in enumerate(first) if _is_top_heading(x)]
    if heads and not "".join(first[:heads[0]]).strip():
        groups[0] = first[heads[0]:]
    return ["\n".join(g) for g in groups]


def split_articles(rows: list[str]) -> list[str]:
    """Articles of a list of HF rows (``rows_from_raw_file``), each the concatenation of its rows;
    the same heading rule as :func:`split_documents`, with blank rows before the first heading kept
    in the first article (the form training uses)."""
    return ["".join(g) for g in _group_at_headings(rows) if g]


# ------------------------------------------------------------------------------ lm-eval rules
# Rules of lm-evaluation-harness v0.4.x ``lm_eval/tasks/wikitext/preprocess_wikitext.py``
# (``wikitext_detokenizer``; unchanged from v0.4.0 to v0.4.9), applied in this order.
_PLAIN_1 = [("s '", "s'")]
_REGEX_1 = [(r"/' [0-9]/", r"/'[0-9]/")]  # literal slashes: matches almost nothing, kept as lm-eval has it
_PLAIN_2 = [(" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."),
            (" : ", ": "), (" ; ", "; "), (" . ", ". "), (" ! ", "! "), (" ? ", "? "), (" , ", ", ")]
_REGEX_2 = [(r"\(\s*([^\)]*?)\s*\)", r"(\1)"), (r"\[\s*([^\]]*?)\s*\]", r"[\1]"), (r"{\s*([^}]*?)\s*}", r"{\1}"),
            (r"\"\s*([^\"]*?)\s*\"", r'"\1"'), (r"'\s*([^']*?)\s*'", r"'\1'")]
_PLAIN_3 = [("= = = =", "===="), ("= = =", "==="), ("= =", "=="), (" \u00b0 ", "\u00b0"),
            (" \n", "\n"), ("\n ", "\n"), (" N ", " 1 "), (" 's", "'s")]


def wikitext_detokenizer(page: str) -> str:
    """The lm-evaluation-harness ``wikitext`` detokenizer (the text that is actually scored)."""
    s = page
    for a, b in _PLAIN_1:
        s = s.replace(a, b)
    for pat, rep in _REGEX_1:
        s = re.sub(pat, rep, s)
    for a, b in _PLAIN_2:
        s = s.replace(a, b)
    for pat, rep in _REGEX_2:
        s = re.sub(pat, rep, s)
    for a, b in _PLAIN_3:
        s = s.replace(a, b)
    return s


def count_words(page: str) -> int:
    """lm-eval's word count of the *original* (not detokenized) page: ``len(re.split(r"\\s+", page))``.

    Leading/trailing whitespace yields empty strings that are counted, exactly as lm-eval does.
    """
    return len(re.split(r"\s+", page))


def count_bytes(page: str) -> int:
    """UTF-8 length of the original page (lm-eval's byte count)."""
    return len(page.encode("utf-8"))
