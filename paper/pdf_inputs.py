"""What the committed paper/main.pdf was built from, so that the results audit can tell when it is stale.

    python -m paper.pdf_inputs --write    # after a successful build (make paper): record the inputs' sha256
    python -m paper.pdf_inputs            # exit 1, naming each input, if the PDF is stale

The inputs are the result files the paper cites (the sources of every ``\\val{NAME}`` in
paper/main.tex, from paper/doc_numbers.yaml, and the result files of every table and figure, the
rows of its provenance appendix) and the files LaTeX reads (paper/main.tex, paper/numbers.tex,
paper/tables/*.tex, figures/out/*.pdf).  ``paper/main.inputs.json`` holds their sha256 at build time.
The PDF is stale when one of them changed, disappeared or is new since, or when the PDF itself is not
the one recorded.  ``paper/results_audit.py`` reports it as one more row (``--strict`` fails on it).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PDF = "paper/main.pdf"
MANIFEST = "paper/main.inputs.json"
LATEX_INPUTS = ("paper/main.tex", "paper/numbers.tex", "paper/tables/*.tex", "figures/out/*.pdf")
RESULT_PATH = re.compile(r"results/[\w./\-]+\.json")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cited_results(root: Path = REPO) -> list[str]:
    """The result files (repository-relative) whose numbers the paper prints, sorted."""
    from . import doc_numbers as dn

    out: set[str] = set()
    main_tex = root / dn.TEX_DOC
    if main_tex.exists():
        reg = dn.load_registry(root / "paper" / "doc_numbers.yaml")
        for name in dn.tex_names(main_tex.read_text()):
            spec = reg["numbers"].get(name)
            if spec:
                with contextlib.suppress(dn.DocNumberError):   # a missing source: render_all reports it
                    out.update(p.relative_to(root).as_posix() for p in dn.source_files(spec, root))
    prov = root / "paper" / "tables" / "provenance.md"     # the appendix: every table's and figure's files
    if prov.exists():
        out.update(m for m in RESULT_PATH.findall(_unsplit(prov.read_text())) if (root / m).exists())
    return sorted(out)


def _unsplit(md: str) -> str:
    """provenance.md names files as ``results/parity/: a.json, b.json``: back to full paths."""
    def expand(m: re.Match) -> str:
        d = m.group(1)
        return " ".join(f"{d}/{b.strip()}" for b in m.group(2).split(","))
    return re.sub(r"(results/[\w./\-]+)/: ([\w.\-]+\.json(?:, [\w.\-]+\.json)*)", expand, md)


def inputs(root: Path = REPO) -> list[str]:
    files = set(cited_results(root))
    for pat in LATEX_INPUTS:
        files.update(Path(p).relative_to(root).as_posix() for p in glob.glob(str(root / pat)))
    return sorted(files)


def manifest(root: Path = REPO) -> dict:
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    return {"pdf": PDF, "pdf_sha256": _sha256(root / PDF), "built_at_git": sha or None,
            "inputs": {f: _sha256(root / f) for f in inputs(root)}}


def problems(root: Path = REPO) -> list[str]:
    """Why paper/main.pdf is stale ([] when it is current; a checkout without paper/main.tex has no paper)."""
    if not (root / "paper" / "main.tex").exists():
        return []
    if not (root / PDF).exists():
        return [f"missing: {PDF} (run `make paper` with LaTeX installed)"]
    if not (root / MANIFEST).exists():
        return [f"stale: no {MANIFEST} (the PDF's inputs were not recorded; run `make paper`)"]
    m = json.loads((root / MANIFEST).read_text())
    out = []
    if m.get("pdf_sha256") != _sha256(root / PDF):
        out.append(f"stale: {PDF} is not the PDF recorded in {MANIFEST}")
    old = m.get("inputs") or {}
    now = inputs(root)
    for f in sorted(set(old) | set(now)):
        if f not in now:
            out.append(f"stale: {f} is {'no longer an input' if (root / f).exists() else 'gone'} since the PDF "
                       "was built")
        elif f not in old:
            out.append(f"stale: {f} is new since the PDF was built")
        elif _sha256(root / f) != old[f]:
            out.append(f"stale: {f} changed since the PDF was built")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help=f"record the inputs of a freshly built {PDF}")
    ap.add_argument("--root", default=str(REPO))
    args = ap.parse_args(argv)
    root = Path(args.root).resolve()
    if args.write:
        from mamba2_jax.fileio import atomic_write_text

        m = manifest(root)
        atomic_write_text(root / MANIFEST, json.dumps(m, indent=1, sort_keys=True) + "\n")
        print(f"[paper] recorded {len(m['inputs'])} inputs of {PDF} in {MANIFEST}")
        return 0
    bad = problems(root)
    for p in bad:
        print(f"[paper] {p}")
    if not bad:
        print(f"[paper] {PDF} is current with its {len(inputs(root))} inputs")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
