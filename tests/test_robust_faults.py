"""Injected faults (issue 15, part 5): SIGKILL and resume, crashing or hanging reference
processes, ENOSPC on write, and concurrent writers of one results directory."""

from __future__ import annotations

import csv
import errno
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from robustness import budget, check, data_lost, examples, note

from mamba2_jax.eval import parity_report, refproc
from mamba2_jax.eval import windows as P
from mamba2_jax.eval.scorer import JaxScorer
from mamba2_jax.fileio import atomic_savez, atomic_write_json, atomic_write_text

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _raise(e: BaseException):
    raise e


def _complete(path: Path) -> bool:
    """A result file is complete: it parses as what its suffix says."""
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                for k in z.files:
                    z[k]
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".csv":
            rows = list(csv.reader(path.open()))
            return bool(rows) and all(len(r) == len(rows[0]) for r in rows)
        elif path.suffix in (".md", ".tex"):
            return path.read_text().endswith("\n")
        return True
    except Exception:
        return False


def _result_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".") and ".tmp" not in p.name
            and ".partial" not in p.name and p.suffix in (".npz", ".json", ".csv", ".md", ".tex")]


# ------------------------------------------------------------------------------ kill -9 and resume: perplexity
_PPL_CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    from mamba2_jax.eval import windows as P
    from mamba2_jax.eval.scorer import JaxScorer
    from mamba2_jax.checkpoint import init_state_dict
    from mamba2_jax.loading import model_from_state_dict
    from mamba2_jax.config import get_preset
    cfg = get_preset("tiny")
    m = model_from_state_dict(cfg, init_state_dict(cfg, seed=1))
    rng = np.random.default_rng(3)
    docs = [rng.integers(0, 250, int(n)).tolist() for n in rng.integers(0, 60, 14)]
    w = P.lm_eval_windows(docs, max_length=8)
    def cb(done):
        print(done, flush=True)
    JaxScorer(m, batch_size=2, bucket=8, logits_chunk=8).score(
        w, state_path=sys.argv[1], fingerprint={"model": "tiny-seed1"}, progress=False, on_batch=cb)
    print("DONE", flush=True)
""")


def _ppl_windows():
    rng = np.random.default_rng(3)
    docs = [rng.integers(0, 250, int(n)).tolist() for n in rng.integers(0, 60, 14)]
    return P.lm_eval_windows(docs, max_length=8)


@pytest.fixture(scope="module")
def ppl_full():
    from mamba2_jax.checkpoint import init_state_dict
    from mamba2_jax.config import get_preset
    from mamba2_jax.loading import model_from_state_dict

    cfg = get_preset("tiny")
    m = model_from_state_dict(cfg, init_state_dict(cfg, seed=1))
    w = _ppl_windows()
    return m, w, JaxScorer(m, batch_size=2, bucket=8, logits_chunk=8).score(w, progress=False)


def _kill_at_random_point(cmd, rng: random.Random, max_lines: int, cwd=REPO, env=ENV) -> tuple[int, str]:
    """Start ``cmd`` in its own process group, wait for a random number of progress lines, sleep a
    random few ms (so the kill can land inside a write) and SIGKILL the whole group."""
    p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                         start_new_session=True)
    target = rng.randint(1, max_lines)
    seen, last = 0, ""
    for line in p.stdout:
        last = line.strip()
        if last == "DONE":
            break
        seen += 1
        if seen >= target:
            time.sleep(rng.uniform(0, 0.05))
            break
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    return p.returncode, f"killed after {seen} progress lines (+ up to 50 ms)"


@pytest.mark.integration
def test_perplexity_sigkill_at_random_points_then_resume(ppl_full, tmp_path):
    """Several seeds: kill -9 at a random batch (+ a random few ms, so inside a checkpoint write
    too), then resume: the final log-likelihoods are bitwise equal to an uninterrupted run, and
    the progress file is never half-written."""
    model, w, full = ppl_full
    n_batches = -(-len(w) // 2)
    outcomes = []
    for seed in range(budget(2, 5)):
        rng = random.Random(seed)
        state = tmp_path / f"progress-{seed}.npz"
        kills = 0
        for _ in range(budget(1, 2)):  # several kills of the same run
            rc, where = _kill_at_random_point([sys.executable, "-c", _PPL_CHILD, str(state)], rng, n_batches)
            kills += rc == -signal.SIGKILL
            if state.exists() and not _complete(state):
                data_lost("faults/perplexity-kill", f"half-written {state.name} ({where})")
            assert not state.exists() or _complete(state), where
        res = JaxScorer(model, batch_size=2, bucket=8, logits_chunk=8).score(
            w, state_path=state, fingerprint={"model": "tiny-seed1"}, progress=False)
        equal = np.array_equal(res.loglik, full.loglik) and np.array_equal(res.n_scored, full.n_scored)
        if not equal:
            data_lost("faults/perplexity-kill", f"seed {seed}: resumed numbers differ")
        check("faults/perplexity-kill-resume", lambda equal=equal: equal or _raise(AssertionError("differ")),
              (), None, f"seed {seed}")
        outcomes.append({"seed": seed, "kills": kills, "resumed_windows": res.info["resumed_windows"]})
        assert equal
    note("perplexity_kill_resume", outcomes)
    assert any(o["resumed_windows"] > 0 for o in outcomes), outcomes  # the kills did land mid-run


# ------------------------------------------------------------------------------ kill -9 and resume: parity
def _parity_cmd(root: Path, data_dir: Path) -> list[str]:
    spec = ("{name: tiny-kill, preset: tiny, init: random, seed: 2, stored_dtype: float32, perturb: true, "
            "overrides: {vocab_size: 50277, chunk_size: 8}}")
    return [sys.executable, "-u", str(REPO / "experiments" / "parity.py"), f"models=[{spec}]", "optional_models=[]",
            "max_prompts=2", "n_new=4", "backends=[transformers]", f"paths.work_dir={root / 'work'}",
            f"paths.results_dir={root / 'results'}", "label=kill", f"tokenizer={data_dir / 'gpt-neox-20b'}",
            f"hydra.run.dir={root / 'hydra'}", "reference_timeout_s=600"]


def _parity_numbers(results: Path) -> dict:
    rep = json.loads((results / "tiny-kill__transformers.json").read_text())
    keep = ("hidden_per_layer", "hidden_worst", "logits_worst", "decode_topk_max_rel", "greedy_summary", "per_prompt",
            "checks", "pass")
    return {k: rep[k] for k in keep}


@pytest.mark.integration
@pytest.mark.slow
def test_parity_sigkill_at_random_points_then_resume(tmp_path, data_dir):
    """The parity experiment (JAX vs the transformers reference, tiny model) killed with SIGKILL
    (its whole process group, reference included) at random moments, then rerun: every result
    file present at any time is complete, and the final numbers equal an uninterrupted run's."""
    ref_root = tmp_path / "uninterrupted"
    t0 = time.time()
    r = subprocess.run(_parity_cmd(ref_root, data_dir), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900)
    full_s = time.time() - t0
    assert r.returncode == 0, r.stderr[-3000:]
    want = _parity_numbers(ref_root / "results")
    for seed in range(budget(1, 2)):
        rng = random.Random(100 + seed)
        root = tmp_path / f"killed-{seed}"
        for _ in range(2):
            p = subprocess.Popen(_parity_cmd(root, data_dir), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, start_new_session=True)
            time.sleep(rng.uniform(0.3, 1.0) * full_s)
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            bad = [str(f) for f in _result_files(root) if not _complete(f)]
            for f in bad:
                data_lost("faults/parity-kill", f"half-written {f}")
            assert not bad
        r = subprocess.run(_parity_cmd(root, data_dir), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stderr[-3000:]
        got = _parity_numbers(root / "results")
        if got != want:
            data_lost("faults/parity-kill", f"seed {seed}: resumed numbers differ")
        check("faults/parity-kill-resume", lambda got=got: got == want or _raise(AssertionError("differ")),
              (), None, f"seed {seed}")
        assert got == want


# ------------------------------------------------------------------------------ crashing / hanging references
_FAKE_REF = textwrap.dedent("""
    import argparse, os, sys, time
    ap = argparse.ArgumentParser()
    for a in ("--backend", "--model", "--windows", "--out"):
        ap.add_argument(a, required=True)
    a = ap.parse_args()
    open(os.path.join(a.model, "pid"), "w").write(str(os.getpid()))
    print("loading weights ... CUDA error: an illegal memory access was encountered (fake)", file=sys.stderr,
          flush=True)
    if a.backend == "crash":
        os.abort()
    time.sleep(600)
""")


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie is gone too
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["crash", "hang"])
def test_bad_reference_is_reported_with_stderr_and_timeout(tmp_path, monkeypatch, mode):
    from helpers import fake_reference_package

    model = fake_reference_package(tmp_path, "badref", _FAKE_REF, monkeypatch)
    w = _ppl_windows()
    wp = w.save(tmp_path / "w.npz")
    out = tmp_path / "runs" / "r.out.npz"
    t0 = time.time()
    status, e = check("faults/bad-reference", lambda: refproc.run_reference(
        mode, model, wp, out, w, module="badref.score", cwd=tmp_path, timeout=4, log_path=tmp_path / "r.log"),
        (refproc.ReferenceFailed,), ("illegal memory access",), mode)
    assert status == "error" and time.time() - t0 < 30
    assert ("timed out after 4" in str(e)) == (mode == "hang")
    assert _gone(int((model / "pid").read_text()))
    assert "illegal memory access" in (tmp_path / "r.log").read_text()
    assert not out.exists() and not list(out.parent.glob("*.partial*"))


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["crash", "hang"])
def test_bad_golden_reference_is_reported_with_stderr_and_timeout(tmp_path, mode):
    """Parity's reference runner: a fake interpreter that dies or hangs."""
    fake = tmp_path / "fakepython"
    body = "echo 'Traceback: RuntimeError: CUDA out of memory (fake)' >&2; "
    fake.write_text("#!/bin/sh\n" + body + ("exit 3\n" if mode == "crash" else "exec sleep 600\n"))
    fake.chmod(0o755)
    t0 = time.time()
    status, e = check("faults/bad-golden-reference", lambda: refproc.run_golden(
        "mamba_ssm_ref_cpu", str(fake), tmp_path, tmp_path / "p.json", tmp_path / "g.npz", 4, timeout=4),
        (RuntimeError,), ("CUDA out of memory",), mode)
    assert status == "error" and time.time() - t0 < 30
    assert ("timed out after 4" in str(e)) == (mode == "hang")


# ------------------------------------------------------------------------------ ENOSPC on write
def _writers(tmp: Path):
    """name -> (path, write(version)) for every kind of result writer."""
    import importlib.util

    spec = importlib.util.find_spec("mamba2_jax.eval.perplexity")
    sys.path.insert(0, str(REPO / "tests"))
    row = dict.fromkeys(parity_report.CSV_FIELDS, "x")
    return {
        "atomic_write_json": (tmp / "r.json", lambda v: atomic_write_json(tmp / "r.json", {"v": v, "pad": "x" * 5000})),
        "atomic_write_text": (tmp / "r.md", lambda v: atomic_write_text(tmp / "r.md", f"v={v}\n" + "x" * 5000 + "\n")),
        "atomic_savez (perplexity progress)": (tmp / "p.npz", lambda v: atomic_savez(
            tmp / "p.npz", loglik=np.full(1000, v, np.float64), done=np.ones(1000, bool))),
        "parity write_csv": (tmp / "s.csv",
                             lambda v: parity_report.write_csv(tmp / "s.csv", [{**row, "model": f"v{v}"}] * 50)),
        "windows save": (tmp / "w.npz", lambda v: P.pack_windows([([1, 2, 3 + v], 1, 0)] * 40).save(tmp / "w.npz")),
    }, spec


@examples(ci=12, fuzz=300)
@given(which=st.sampled_from(["atomic_write_json", "atomic_write_text", "atomic_savez (perplexity progress)",
                              "parity write_csv", "windows save"]),
       fail_after=st.integers(0, 3), how=st.sampled_from(["write", "fsync", "replace"]))
def test_enospc_leaves_previous_result_intact(tmp_path_factory, which, fail_after, how):
    tmp = tmp_path_factory.mktemp("enospc")
    writers, _ = _writers(tmp)
    path, write = writers[which]
    write(1)
    before = path.read_bytes()
    calls = {"n": 0}

    def boom():
        calls["n"] += 1
        if calls["n"] > fail_after:
            raise OSError(errno.ENOSPC, "No space left on device (injected)")

    import builtins

    real = {"fsync": os.fsync, "replace": os.replace, "open": builtins.open, "fdopen": os.fdopen}

    def fsync(fd):
        boom()
        return real["fsync"](fd)

    def replace(a, b):
        boom()
        return real["replace"](a, b)

    class Failing:
        def __init__(self, fh):
            self._fh = fh

        def write(self, b):
            boom()
            return self._fh.write(b)

        def __getattr__(self, a):
            return getattr(self._fh, a)

        def __iter__(self):
            return iter(self._fh)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return self._fh.__exit__(*a)

    def fopen(f, mode="r", *a, **k):
        fh = real["open"](f, mode, *a, **k)
        return Failing(fh) if ("w" in mode or "+" in mode) and str(f).startswith(str(tmp)) else fh

    def fdopen(fd, mode="r", *a, **k):
        fh = real["fdopen"](fd, mode, *a, **k)
        return Failing(fh) if "w" in mode else fh

    patches = {"fsync": ("os", "fsync", fsync), "replace": ("os", "replace", replace),
               "write": ("builtins", "open", fopen)}
    mod, name, fn = patches[how]
    target = os if mod == "os" else builtins
    old = getattr(target, name)
    setattr(target, name, fn)
    if how == "write":
        os.fdopen = fdopen
    try:
        status, _ = check("faults/enospc", lambda: write(2), (OSError,), None, f"{which} {how} after {fail_after}")
    finally:
        setattr(target, name, old)
        os.fdopen = real["fdopen"]
    after = path.read_bytes()
    leftovers = [p.name for p in tmp.iterdir() if p.name.startswith(".") or ".tmp" in p.name]
    if status == "error" and after != before:
        data_lost("faults/enospc", f"{which}: previous result changed after a failed write ({how})")
    if leftovers:
        data_lost("faults/enospc", f"{which}: temporary files left: {leftovers}")
    assert (after == before) if status == "error" else _complete(path)
    assert not leftovers


# ------------------------------------------------------------------------------ concurrent writers
_HAMMER = textwrap.dedent("""
    import sys, numpy as np
    from pathlib import Path
    from mamba2_jax.fileio import atomic_write_json
    from mamba2_jax.fileio import atomic_savez
    from mamba2_jax.checkpoint import init_state_dict, write_checkpoint
    from mamba2_jax.config import get_preset
    root, me, n = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    cfg = get_preset("tiny")
    sd = init_state_dict(cfg, seed=me)
    for i in range(n):
        atomic_write_json(root / "result.json", {"writer": me, "i": i, "payload": [me] * 2000})
        atomic_savez(root / "progress.npz", loglik=np.full(5000, me, np.float64), writer=np.array(me))
        if i % 10 == 0:
            write_checkpoint(cfg, sd, root / "ckpt")
    print("DONE", flush=True)
""")


@pytest.mark.integration
def test_concurrent_runs_do_not_corrupt_each_other(tmp_path):
    """Two processes write the same result, progress and checkpoint paths in a loop while this one
    reads them: every read is a complete file from one writer, never a mix."""
    n = budget(60, 400)
    procs = [subprocess.Popen([sys.executable, "-c", _HAMMER, str(tmp_path), str(me), str(n)], cwd=REPO, env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for me in (1, 2)]
    reads, bad = 0, []
    from mamba2_jax.checkpoint import read_state_dict

    while any(p.poll() is None for p in procs):
        for f in ("result.json", "progress.npz"):
            p = tmp_path / f
            if not p.exists():
                continue
            reads += 1
            try:
                if f.endswith(".json"):
                    d = json.loads(p.read_text())
                    ok = d["payload"] == [d["writer"]] * 2000
                else:
                    with np.load(p) as z:
                        ok = bool(np.all(z["loglik"] == z["writer"]))
            except Exception as e:
                ok, d = False, e
            if not ok:
                bad.append(f)
        if (tmp_path / "ckpt" / "config.json").exists():
            reads += 1
            try:
                read_state_dict(tmp_path / "ckpt")
            except Exception as e:
                bad.append(f"ckpt: {e}")
        time.sleep(0.01)
    outs = [p.communicate() for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    for b in bad:
        data_lost("faults/concurrent", str(b)[:200])
    for _ in range(reads):
        from robustness import record

        record("faults/concurrent-reads", "ok" if not bad else "corrupt")
    assert not bad, bad[:5]
    assert not [p.name for p in tmp_path.rglob("*") if ".tmp" in p.name or ".partial" in p.name]
