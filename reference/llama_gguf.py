"""Checkpoint → GGUF with the converter llama.cpp ships (issue 20, item 1).

    python -m reference.llama_gguf SRC OUT_DIR [--outtype f32 f16 bf16 q8_0] [--tokenizer DIR]

1. ``mamba2-jax convert SRC OUT_DIR/hf --format hf --dtype float32`` (this project's converter, run as
   the CLI users run; SRC may be a state-spaces or HF checkpoint);
2. the GPT-NeoX tokenizer files are copied beside it (``--tokenizer``, default
   ``$MAMBA2_JAX_DATA/gpt-neox-20b``): llama.cpp's converter builds the GGUF vocabulary from them
   (padded to the model's padded vocabulary with ``[PAD…]`` tokens);
3. ``convert_hf_to_gguf.py OUT_DIR/hf --outtype T --outfile OUT_DIR/model-T.gguf`` from the
   llama.cpp the sdist vendors (``PYTHONPATH=gguf-py``), once per output type, with this
   interpreter (it needs torch, transformers, numpy: the project venv has them).

Results are cached: ``OUT_DIR/done-<key>`` records the source checkpoint's config and weights hashes
and the converter's commit, so a changed checkpoint or llama.cpp is converted again.  Errors raise
:class:`ConversionError` with the failing command and the tail of its output.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from .llama_cpp_capi import build_status

OUTTYPES = ("f32", "f16", "bf16", "q8_0")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
PRECISION = {"f32": "float32 (fp32 weights, fp32 compute)", "f16": "float16 weights (lower precision)",
             "bf16": "bfloat16 weights (lower precision)",
             "q8_0": "8-bit blockwise quantised weights (lower precision)"}


class ConversionError(RuntimeError):
    pass


def _digest(src: Path) -> str:
    h = hashlib.sha256()
    for name in sorted(os.listdir(src)):
        p = src / name
        if p.is_file() and (name == "config.json" or name.endswith((".safetensors", ".bin"))):
            h.update(name.encode())
            st = p.stat()
            h.update(f"{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


def _run(cmd: list[str], env: dict | None = None, cwd: str | None = None) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    if r.returncode != 0:
        tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-15:])
        raise ConversionError(f"`{' '.join(map(str, cmd))}` exited {r.returncode}:\n{tail}")


def default_tokenizer() -> Path:
    data = os.environ.get("MAMBA2_JAX_DATA") or str(Path(__file__).resolve().parents[2] / "shared" / "data")
    return Path(data) / "gpt-neox-20b"


def convert(src: str | Path, out_dir: str | Path, outtypes=("f32",), tokenizer: str | Path | None = None,
            python: str | None = None) -> dict[str, Path]:
    """→ {outtype: path of the GGUF}.  Raises ConversionError (not built, bad checkpoint, converter failure)."""
    bad = [t for t in outtypes if t not in OUTTYPES]
    if bad:
        raise ConversionError(f"unknown GGUF outtype(s) {bad}; expected some of {OUTTYPES}")
    src, out_dir = Path(src).resolve(), Path(out_dir).resolve()
    if not (src / "config.json").is_file():
        raise ConversionError(f"{src}: no config.json (not a checkpoint directory)")
    tok = Path(tokenizer) if tokenizer else default_tokenizer()
    if not (tok / "tokenizer.json").is_file():
        raise ConversionError(f"{tok}: no tokenizer.json (the GPT-NeoX tokenizer files; set --tokenizer or "
                              "MAMBA2_JAX_DATA)")
    ok, info = build_status()
    if not ok:
        raise ConversionError(str(info))
    llama_src = Path(info["sdist_root"]) / "vendor" / "llama.cpp"
    python = python or sys.executable
    key = hashlib.sha256(json.dumps([_digest(src), info.get("llama_cpp_commit"), info.get("sdist_sha256")])
                         .encode()).hexdigest()[:12]
    out_dir.mkdir(parents=True, exist_ok=True)
    hf = out_dir / "hf"
    stamp = out_dir / f"hf-{key}"
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    if not stamp.exists():
        shutil.rmtree(hf, ignore_errors=True)
        for old in out_dir.glob("hf-*"):
            old.unlink()
        _run([python, "-m", "mamba2_jax.cli", "convert", str(src), str(hf), "--format", "hf", "--dtype", "float32"],
             env=env)
        for f in TOKENIZER_FILES:
            if (tok / f).is_file():
                shutil.copy2(tok / f, hf / f)
        stamp.write_text(str(src) + "\n")
    out = {}
    genv = {**os.environ, "PYTHONPATH": str(llama_src / "gguf-py"), "HF_HUB_OFFLINE": "1"}
    for t in outtypes:
        dst = out_dir / f"model-{t}.gguf"
        done = out_dir / f"model-{t}.{key}.done"
        if not (dst.exists() and done.exists()):
            tmp = dst.with_suffix(".gguf.tmp")
            _run([python, str(llama_src / "convert_hf_to_gguf.py"), str(hf), "--outtype", t, "--outfile", str(tmp)],
                 env=genv)
            os.replace(tmp, dst)
            for old in out_dir.glob(f"model-{t}.*.done"):
                old.unlink()
            done.write_text(key + "\n")
        out[t] = dst
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reference.llama_gguf", description=__doc__.splitlines()[0])
    ap.add_argument("src")
    ap.add_argument("out_dir")
    ap.add_argument("--outtype", nargs="+", default=["f32"], choices=OUTTYPES)
    ap.add_argument("--tokenizer", default=None)
    a = ap.parse_args(argv)
    try:
        paths = convert(a.src, a.out_dir, a.outtype, a.tokenizer)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for t, p in paths.items():
        print(f"{t}: {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
