"""Which committed results are stale: per result JSON, the code version and machine it came from.

    python -m paper.results_audit            # Markdown table: every JSON under results/, paper/reproduce_summary.json
    python -m paper.results_audit --strict   # exit 1 if any is stale, dirty, of unknown origin or from another machine
    python -m paper.results_audit --json       # the same as JSON

A result file holds one or more provenance blocks (any object with a ``git`` object: the run's own
``provenance``, a parity file's ``reference`` side, a perplexity reference backend's ``meta``, the
training run of ``results/train_tiny``...).  Per file this reports each block's git sha and dirty
flag, the machine (``cpu_model``) and the date, and whether the *numerics code* at that sha equals
HEAD's (``git diff --quiet SHA HEAD -- NUMERICS_CODE``).  A file is

  stale    if a block's sha has numerics code different from HEAD's (or the sha is unknown to git); a
           parity file's ``reference`` block is judged by the reference's code instead (REFERENCE_CODE),
  dirty    if a block says the tree was dirty (or does not say: ``dirty`` missing) in a file that is code
           (``provenance.code_files``: not a result, figure, table or the report's text),
  machine  if a block's machine is not the majority machine over all files (or is not recorded).

One more row is the committed ``paper/main.pdf``: stale when a result it cites, or a file LaTeX reads,
changed since it was built (``paper/pdf_inputs.py`` compares ``paper/main.inputs.json``).

The producer's own code (the map's ``code`` paths, paper/results_map.yaml) is shown for information:
a change there (an experiment driver, a table layout) may or may not change the numbers.  So is what
uses each file: the figures whose caption lists it (figures/out/*.caption.md), the tables that name
it (paper/tables/*.md), and the docs that quote a number or table generated from it
(paper/doc_numbers.yaml, or a mention of the file or its directory).  A result nothing uses is a candidate for removal.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

# The code a result's numbers are computed by: the model, its caches and kernels, the loading /
# precision policy, generation, sharding, the config; and the reference side (golden-file producers).
NUMERICS_CODE = (
    "mamba2_jax/ops.py", "mamba2_jax/ssd.py", "mamba2_jax/model.py", "mamba2_jax/cache.py", "mamba2_jax/params.py",
    "mamba2_jax/loading.py", "mamba2_jax/generate.py", "mamba2_jax/sharding.py", "mamba2_jax/config.py",
    "reference/*.py", "reference/requirements-*.txt",
)
# The reference side of a parity result (its ``reference`` block: the golden file of mamba_ssm, transformers or
# llama.cpp, cached by checkpoint fingerprint and prompts) is computed by the reference's own code, not ours: the
# runners, their pinned requirements, the checkpoint converter they read, the golden file format (llama.cpp's
# build is recorded in its golden, as before this rule).  A golden made before a change to our model stays
# current; one made before a change to a runner does not.
REFERENCE_BLOCKS = ("reference",)
REFERENCE_CODE = ("reference/*.py", "reference/requirements-*.txt", "mamba2_jax/checkpoint.py",
                  "mamba2_jax/eval/golden.py")
EXTRA_FILES = ("paper/reproduce_summary.json", "paper/regenerate_summary.json")
# `make fresh-make-test` runs the whole suite, this audit's --strict test included, in a clone whose
# results/ci/fresh-make-test.json is the measurement that very run replaces: it names that file here
REPLACING_ENV = "MAMBA2_JAX_AUDIT_REPLACING"
# Provenance of a result's *input*, shown but not judged: results/train_tiny/metrics.json evaluates the
# committed checkpoint (fixed by its sha256), whose training run is recorded as train_provenance.
INPUT_BLOCKS = ("train_provenance",)


@dataclass
class Block:
    where: str                   # JSON path of the provenance object, e.g. "provenance", "reference"
    sha: str | None
    dirty: bool | None
    cpu_model: str | None
    date: str | None
    input: bool = False          # the provenance of an input (INPUT_BLOCKS): reported, not judged
    reference: bool = False      # a parity file's reference side (REFERENCE_BLOCKS): judged by REFERENCE_CODE


@dataclass
class FileAudit:
    path: str
    producer: str | None
    blocks: list[Block]
    shas: list[str | None] = field(default_factory=list)
    behind: dict[str, int | None] = field(default_factory=dict)       # sha -> commits behind HEAD
    numerics_equal: dict[str, bool | None] = field(default_factory=dict)
    producer_code_equal: bool | None = None
    machines: list[str | None] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    inputs: list[Block] = field(default_factory=list)    # INPUT_BLOCKS, not judged
    used_by: list[str] = field(default_factory=list)     # figures, tables, docs (shown, not judged)


def provenance_blocks(doc: Any, where: str = "") -> list[Block]:
    """Every object with a ``git`` object under ``doc``, depth first, with its JSON path."""
    out: list[Block] = []
    if isinstance(doc, dict):
        g = doc.get("git")
        if isinstance(g, dict):
            date = doc.get("date_utc") or doc.get("finished_utc") or doc.get("date")
            machine = doc.get("cpu_model") or (doc.get("machine") if isinstance(doc.get("machine"), dict)
                                               else {}).get("cpu_model")
            dirty = g.get("dirty")
            if dirty and isinstance(g.get("dirty_files"), list) and len(g["dirty_files"]) < 20:
                # judged by the files it lists, under today's rule of what is code (a run recorded while
                # only the report's text was being edited is clean); a full list of 20 may be cut short
                from mamba2_jax.eval.provenance import code_files

                dirty = bool(code_files(g["dirty_files"]))
            name = where.split(".")[-1]
            out.append(Block(where or "(top)", g.get("sha"), dirty, machine, date,
                             input=name in INPUT_BLOCKS, reference=name in REFERENCE_BLOCKS))
        for k, v in doc.items():
            if k != "git":
                out += provenance_blocks(v, f"{where}.{k}" if where else str(k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += provenance_blocks(v, f"{where}[{i}]")
    return out


class Git:
    """The few git questions the audit asks, cached (one instance per repository)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._memo: dict[tuple, Any] = {}

    def _cached(self, key: tuple, fn):
        if key not in self._memo:
            self._memo[key] = fn()
        return self._memo[key]

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=self.root, capture_output=True, text=True)

    def known(self, sha: str) -> bool:
        return self._cached(("known", sha), lambda: self._run("cat-file", "-e", f"{sha}^{{commit}}").returncode == 0)

    def equal(self, sha: str, paths: tuple[str, ...]) -> bool | None:
        """Whether ``paths`` at ``sha`` equal HEAD's (None: sha unknown)."""
        if not paths:
            return True
        if not self.known(sha):
            return None

        def diff():
            r = self._run("diff", "--quiet", sha, "HEAD", "--", *paths)
            return r.returncode == 0 if r.returncode in (0, 1) else None
        return self._cached(("equal", sha, paths), diff)

    def behind(self, sha: str) -> int | None:
        """How many commits HEAD is ahead of ``sha`` (None: sha unknown)."""
        if not self.known(sha):
            return None

        def count():
            r = self._run("rev-list", "--count", f"{sha}..HEAD")
            return int(r.stdout.strip()) if r.returncode == 0 and r.stdout.strip().isdigit() else None
        return self._cached(("behind", sha), count)


def usage_index(root: Path) -> list[tuple[str, Any]]:
    """(user, matcher) pairs: a matcher is a path glob (doc_numbers entries) or a text to search."""
    import fnmatch
    import re

    import yaml

    users: list[tuple[str, Any]] = []
    for f in sorted((root / "figures" / "out").glob("*.caption.md")):
        text = f.read_text()
        users.append((f.name.split(".")[0], lambda rel, t=text: f"`{rel}`" in t))
    for f in sorted((root / "paper" / "tables").glob("*.md")):
        text = f.read_text()
        users.append((f"table {f.stem}", lambda rel, t=text: rel in t))
    reg = root / "paper" / "doc_numbers.yaml"
    spec = yaml.safe_load(reg.read_text()) if reg.exists() else {}
    globs = {name: e.get("file") for sect in ("numbers", "blocks") for name, e in (spec.get(sect) or {}).items()
             if isinstance(e, dict) and e.get("file")}
    main_tex = root / "paper" / "main.tex"
    if main_tex.exists():          # the paper: the sources of its \val numbers, and its appendix's files
        from . import pdf_inputs

        cited = set(pdf_inputs.cited_results(root))
        users.append(("paper/main.tex", lambda rel, c=cited: rel in c))
    for g in ("README.md", "reference/README.md", "docs/*.md"):
        for f in sorted(root.glob(g)):
            text = f.read_text()
            names = set(re.findall(r"<!-- (?:n|begin):([^ ]+?) -->", text))
            pats = [globs[n] for n in names if n in globs]
            users.append((f.relative_to(root).as_posix(),
                          lambda rel, t=text, pats=pats: rel in t or rel.rsplit("/", 1)[0] + "/" in t
                          or any(fnmatch.fnmatchcase(rel, p) for p in pats)))
    return users


def result_files(root: Path) -> list[Path]:
    files = sorted((root / "results").rglob("*.json")) if (root / "results").is_dir() else []
    return files + [root / f for f in EXTRA_FILES if (root / f).exists()]


def audit(root: Path = REPO, files: list[Path] | None = None, producers: Any = None,
          numerics: tuple[str, ...] = NUMERICS_CODE,
          reference: tuple[str, ...] = REFERENCE_CODE) -> tuple[list[FileAudit], str | None]:
    """Audit ``files`` (default: every result JSON of ``root``).  ``producers``: a ResultsMap (its
    producer step names the command and its code paths) or None.  A block is judged by ``numerics``,
    a reference block (REFERENCE_BLOCKS) by ``reference``.  Returns the audits and the majority machine."""
    git = Git(root)
    files = result_files(root) if files is None else files
    users = usage_index(root)
    audits: list[FileAudit] = []
    for f in files:
        rel = f.relative_to(root).as_posix()
        try:
            doc = json.loads(f.read_text())
        except (OSError, ValueError) as e:
            audits.append(FileAudit(rel, None, [], problems=[f"unreadable: {e}"]))
            continue
        step = producers.producer(rel) if producers is not None else None
        blocks = provenance_blocks(doc)
        # a record's own git block without a machine (the compiled programs of experiments/tpu_compile.py,
        # each stamped with the commit it was compiled at) ran on the machine of the file's provenance;
        # records reused by --resume from an earlier run carry their own cpu_model (recorded since)
        top = (doc.get("provenance") or {}).get("cpu_model") if isinstance(doc, dict) else None
        for b in blocks:
            if b.cpu_model is None and top and b.where.startswith("records["):
                b.cpu_model = top
        a = FileAudit(rel, step.command if step else None, [b for b in blocks if not b.input],
                      inputs=[b for b in blocks if b.input])
        a.used_by = [u for u, match in users if match(rel)]
        a.shas = list(dict.fromkeys(b.sha for b in a.blocks))
        a.machines = list(dict.fromkeys(b.cpu_model for b in a.blocks))
        if not a.blocks:
            a.problems.append("no provenance (no object with a git sha)")
        for sha in a.shas:
            if not sha:
                a.problems.append("stale: a provenance block has no git sha")
                continue
            a.behind[sha] = git.behind(sha)
            kinds = {"reference" if b.reference else "numerics" for b in a.blocks if b.sha == sha}
            code = tuple(dict.fromkeys((numerics if "numerics" in kinds else ()) +
                                       (reference if "reference" in kinds else ())))
            a.numerics_equal[sha] = eq = git.equal(sha, code)
            if eq is None:
                a.problems.append(f"stale: {sha[:8]} is not a commit of this repository")
            elif not eq:
                what = "numerics code" if kinds == {"numerics"} else \
                    "reference code" if kinds == {"reference"} else "numerics or reference code"
                a.problems.append(f"stale: {what} at {sha[:8]} differs from HEAD")
        if step is not None and step.code and all(a.shas):
            eqs = [git.equal(s, tuple(step.code)) for s in a.shas]
            a.producer_code_equal = None if any(e is None for e in eqs) else all(eqs)
        dirty = [b.where for b in a.blocks if b.dirty is True]
        unknown = [b.where for b in a.blocks if b.dirty is None]
        if dirty:
            a.problems.append("dirty: " + ", ".join(_short(w) for w in dirty))
        if unknown:
            a.problems.append("dirty unknown (not recorded): " + ", ".join(_short(w) for w in unknown))
        audits.append(a)
    # majority machine: one vote per file (its most frequent machine among the blocks)
    votes = collections.Counter()
    for a in audits:
        ms = [b.cpu_model for b in a.blocks if b.cpu_model]
        if ms:
            votes[collections.Counter(ms).most_common(1)[0][0]] += 1
    majority = votes.most_common(1)[0][0] if votes else None
    for a in audits:
        if a.blocks:
            other = sorted({str(m) for m in a.machines if m != majority})
            if other:
                a.problems.append("machine: " + ", ".join("not recorded" if m == "None" else m for m in other))
    pdf = pdf_audit(root, git)
    if pdf is not None:
        audits.append(pdf)
    return audits, majority


def pdf_audit(root: Path, git: Git) -> FileAudit | None:
    """The committed paper/main.pdf as one more row: stale when a result it cites (or a file LaTeX reads)
    changed since it was built (paper/pdf_inputs.py, paper/main.inputs.json).  None without a paper."""
    from . import pdf_inputs

    if not (root / "paper" / "main.tex").exists():
        return None
    a = FileAudit(pdf_inputs.PDF, "make paper", [], used_by=["(the report)"])
    a.problems = pdf_inputs.problems(root)
    mf = root / pdf_inputs.MANIFEST
    sha = json.loads(mf.read_text()).get("built_at_git") if mf.exists() else None
    if sha:
        a.shas = [sha]
        a.behind[sha] = git.behind(sha)
    return a


def _short(where: str) -> str:
    """A compact name for a provenance block: perplexity reference backends by their backend name."""
    parts = where.split(".")
    if parts[0] == "backends" and len(parts) > 1:
        return parts[1]
    return where


def markdown(audits: list[FileAudit], majority: str | None, head: str) -> str:
    lines = [f"# Results audit (HEAD {head[:8]})", "",
             f"Numerics code: {', '.join(NUMERICS_CODE)}.",
             f"Reference code (the {', '.join(REFERENCE_BLOCKS)} block of a parity result): "
             f"{', '.join(REFERENCE_CODE)}.",
             f"Majority machine: {majority or 'unknown'}.", "",
             "| file | producer | git sha (commits behind HEAD) | numerics = HEAD | producer code = HEAD "
             "| dirty | machine | date | used by | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    yn = {True: "yes", False: "**no**", None: "?"}
    for a in audits:
        shas = "; ".join(f"{s[:8]} ({a.behind.get(s) if a.behind.get(s) is not None else '?'})" if s else "none"
                         for s in a.shas) or "none"
        num = "; ".join(yn[a.numerics_equal.get(s)] for s in a.shas if s) or "?"
        dirty_blocks = [b for b in a.blocks if b.dirty is not False]
        dirty = (", ".join(f"{_short(b.where)}={'?' if b.dirty is None else 'dirty'}" for b in dirty_blocks)
                 if dirty_blocks else "clean")
        machines = "; ".join(str(m) for m in a.machines) or "?"
        dates = sorted({(b.date or "?")[:10] for b in a.blocks}) or ["?"]
        kinds = dict.fromkeys(p.split(":")[0].split(" (")[0] for p in a.problems)
        verdict = "ok" if not a.problems else "**" + "; ".join(kinds) + "**"
        lines.append(f"| `{a.path}` | {a.producer or '?'} | {shas} | {num} | {yn[a.producer_code_equal]} | {dirty} "
                     f"| {machines} | {', '.join(dates)} | {', '.join(a.used_by) or '**nothing**'} | {verdict} |")
    n_bad = sum(1 for a in audits if a.problems)
    lines += ["", f"{n_bad} of {len(audits)} result files are stale, dirty or from another machine."
              if n_bad else f"All {len(audits)} result files come from a clean tree with HEAD's numerics code "
              f"on {majority}.", ""]
    for a in audits:
        if a.problems:
            lines.append(f"- `{a.path}`: " + "; ".join(a.problems))
    unused = [a.path for a in audits if not a.used_by and a.path.startswith("results/")]
    if unused:
        lines.append("- used by no figure, table or doc (candidates for removal): "
                     + ", ".join(f"`{u}`" for u in unused))
    for a in audits:
        for b in a.inputs:
            lines.append(f"- `{a.path}` input, not judged: {b.where} at {(b.sha or 'no sha')[:8]}"
                         f"{' (dirty)' if b.dirty else ''} on {b.cpu_model}, {(b.date or '?')[:10]}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--strict", action="store_true",
                    help="exit 1 if any result is stale, dirty, of unknown origin or from another machine")
    ap.add_argument("--json", action="store_true", help="JSON instead of Markdown")
    ap.add_argument("--root", default=str(REPO), help="repository root (default: this checkout)")
    ap.add_argument("--replacing", action="append", default=[], metavar="PATH",
                    help="a result file that the run in progress replaces (experiments/fresh_make_test.py: its "
                         "own output, which the clone's suite audits): reported, not judged by --strict; also "
                         f"from ${REPLACING_ENV} (paths separated by '{os.pathsep}')")
    args = ap.parse_args(argv)
    replacing = set(args.replacing) | {p for p in os.environ.get(REPLACING_ENV, "").split(os.pathsep) if p}
    root = Path(args.root).resolve()
    from .results_map import MAP_FILE, load_map

    producers = load_map(MAP_FILE) if MAP_FILE.exists() else None
    audits, majority = audit(root, producers=producers)
    head = Git(root)._run("rev-parse", "HEAD").stdout.strip()
    if Git(root)._run("diff", "--quiet", "HEAD", "--", *NUMERICS_CODE).returncode:
        print("[audit] WARNING: the working tree's numerics code differs from HEAD: compared with HEAD",
              file=sys.stderr)
    if args.json:
        print(json.dumps({"head": head, "majority_machine": majority, "numerics_code": list(NUMERICS_CODE),
                          "files": [asdict(a) for a in audits]}, indent=1))
    else:
        print(markdown(audits, majority, head), end="")
    for a in audits:
        if a.path in replacing and a.problems:
            print(f"[audit] `{a.path}` is being replaced by the run in progress: not judged "
                  f"({'; '.join(a.problems)})", file=sys.stderr)
    return 1 if args.strict and any(a.problems for a in audits if a.path not in replacing) else 0


if __name__ == "__main__":
    sys.exit(main())
