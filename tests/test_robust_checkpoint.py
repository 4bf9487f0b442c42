"""Corrupt checkpoints (issue 15, part 2): every input loads correctly or gives a CheckpointError
stating the cause; convert/save never leave partial output; a lying header allocates nothing."""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import struct

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from robustness import check, data_lost, examples

from mamba2_jax.checkpoint import (
    CheckpointError,
    convert,
    expected_shapes,
    init_state_dict,
    read_state_dict,
    write_checkpoint,
)
from mamba2_jax.cli import main as cli_main
from mamba2_jax.config import get_preset

CFG = get_preset("tiny")
FORMATS = ("bin", "safetensors", "hf")
WEIGHTS = {"bin": "pytorch_model.bin", "safetensors": "model.safetensors", "hf": "model.safetensors"}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("robust-ck")
    sd = init_state_dict(CFG, seed=5)
    out = {}
    for f in FORMATS:
        d = root / f
        write_checkpoint(CFG, sd, d, fmt="hf" if f == "hf" else "state-spaces",
                         weights=None if f == "hf" else f)
        out[f] = d
    return _Ck((sd, out))


class _Ck(tuple):
    """(state dict, dirs) with a short repr (hypothesis prints the arguments of a failing case)."""

    def __repr__(self):
        return "<tiny checkpoints>"


def _variant(src, tmp, weights: bytes | None = None, config: bytes | None = None):
    d = tmp / "ck"
    d.mkdir()
    f = next(n for n in ("pytorch_model.bin", "model.safetensors") if (src / n).exists())
    (d / "config.json").write_bytes((src / "config.json").read_bytes() if config is None else config)
    (d / f).write_bytes((src / f).read_bytes() if weights is None else weights)
    return d


def _read(d):
    return read_state_dict(d, check_finite=True)


def _loaded_ok(cfg, sd):
    """A checkpoint that loads satisfies the contract: right keys and shapes, floats, all finite."""
    exp = expected_shapes(cfg)
    assert set(sd) == set(exp) and all(tuple(sd[k].shape) == s for k, s in exp.items())
    assert all(np.asarray(v).dtype.kind == "f" and np.isfinite(np.asarray(v)).all() for v in sd.values())


@examples(ci=20, fuzz=600)
@given(fmt=st.sampled_from(FORMATS), frac=st.floats(0, 1, exclude_max=True))
def test_truncated_at_random_offset(ckpts, tmp_path_factory, fmt, frac):
    _, dirs = ckpts
    data = (dirs[fmt] / WEIGHTS[fmt]).read_bytes()
    cut = int(frac * len(data))
    d = _variant(dirs[fmt], tmp_path_factory.mktemp("t"), weights=data[:cut])
    status, _ = check(f"checkpoint/{fmt}/truncated", lambda: _read(d), (CheckpointError,),
                      ("truncated", "corrupt", "0-byte", "empty"), f"{fmt} cut at {cut}/{len(data)}")
    assert status == "error", f"a {fmt} file truncated at {cut}/{len(data)} bytes loaded"


@examples(ci=30, fuzz=1500)
@given(fmt=st.sampled_from(FORMATS), data=st.data())
def test_flipped_bytes(ckpts, tmp_path_factory, fmt, data):
    _, dirs = ckpts
    raw = bytearray((dirs[fmt] / WEIGHTS[fmt]).read_bytes())
    n = data.draw(st.integers(1, 4), label="n_flips")
    # half of the flips land in the first 4 KiB (headers, pickle), the rest anywhere
    for _ in range(n):
        hi = data.draw(st.sampled_from([min(4096, len(raw)), len(raw)]))
        i = data.draw(st.integers(0, hi - 1))
        raw[i] ^= data.draw(st.integers(1, 255))
    d = _variant(dirs[fmt], tmp_path_factory.mktemp("f"), weights=bytes(raw))
    status, v = check(f"checkpoint/{fmt}/flipped", lambda: _read(d), (CheckpointError,), None, f"{fmt} {n} flips")
    if status == "ok":
        _loaded_ok(v[0], v[1])


def _st_parts(path):
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _st_build(header, body, n_override=None):
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h) if n_override is None else n_override) + h + body


@examples(ci=25, fuzz=1000)
@given(data=st.data())
def test_safetensors_header_lies(ckpts, tmp_path_factory, data):
    """Offsets, shapes, dtypes or the header length that do not match the data: always refused,
    before anything of the claimed size is allocated."""
    _, dirs = ckpts
    fmt = data.draw(st.sampled_from(["safetensors", "hf"]))
    header, body = _st_parts(dirs[fmt] / "model.safetensors")
    name = data.draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))
    t = header[name]
    lie = data.draw(st.sampled_from(["offset", "shape", "dtype", "header_len", "huge"]))
    n_override = None
    if lie == "offset":
        b, e = t["data_offsets"]
        delta = data.draw(st.integers(-2**20, 2**40).filter(lambda x: x != 0))
        which = data.draw(st.sampled_from([0, 1, 2]))
        t["data_offsets"] = [max(0, b + delta) if which != 1 else b, e + delta if which != 0 else e]
        if t["data_offsets"] == [b, e]:
            t["data_offsets"] = [b, e + 1]
    elif lie == "shape":
        shape = list(t["shape"])
        i = data.draw(st.integers(0, len(shape)))
        new = data.draw(st.integers(0, 2**31))
        shape = shape[:i] + [new] + shape[i + 1:] if data.draw(st.booleans()) else shape + [new]
        t["shape"] = shape if shape != t["shape"] else t["shape"] + [2]
    elif lie == "dtype":  # a dtype of another width, or not floating point
        t["dtype"] = data.draw(st.sampled_from(["F64", "F16", "BF16", "I32", "I64", "U8", "BOOL", "XX"]).filter(
            lambda x: x != t["dtype"] and not (t["dtype"] == "F32" and x in ("I32",)) or x == "I32"))
    elif lie == "header_len":
        n_override = data.draw(st.sampled_from([0, 1, 2**40, 2**63, len(json.dumps(header)) + 1,
                                                len(json.dumps(header)) - 1]))
    else:  # a terabyte tensor
        t["shape"] = [2**20, 2**18]
        t["data_offsets"] = [0, 2**40]
    d = _variant(dirs[fmt], tmp_path_factory.mktemp("h"), weights=_st_build(header, body, n_override))
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    status, _ = check(f"checkpoint/{fmt}/header-lie", lambda: _read(d), (CheckpointError,), None, f"{lie} {name}")
    grew_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    assert grew_mib < 256, f"reading a lying header grew the process by {grew_mib:.0f} MiB"
    assert status == "error", f"header lie ({lie}) on {name} was accepted: {t}"


def test_terabyte_claims_allocate_nothing(ckpts, tmp_path):
    """Both formats: headers and zip records that claim a terabyte are refused from the file size."""
    _, dirs = ckpts
    header, body = _st_parts(dirs["safetensors"] / "model.safetensors")
    for raw in (_st_build(header, body, n_override=2**40),
                _st_build({**header, "backbone.norm_f.weight": {"dtype": "F32", "shape": [2**38],
                                                                "data_offsets": [0, 2**40]}}, body)):
        sub = tmp_path / f"st{len(list(tmp_path.iterdir()))}"
        sub.mkdir()
        d = _variant(dirs["safetensors"], sub, weights=raw)
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with pytest.raises(CheckpointError, match="claims"):
            read_state_dict(d)
        assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 64 * 1024
    # a zip record whose central directory claims 1 TB
    raw = bytearray((dirs["bin"] / "pytorch_model.bin").read_bytes())
    eocd = raw.rfind(b"PK\x05\x06")
    cd = struct.unpack("<I", raw[eocd + 16:eocd + 20])[0]
    struct.pack_into("<I", raw, cd + 24, 0xFFFFFFFE)  # uncompressed size of the first record: ~4 GiB
    sub = tmp_path / "bin"
    sub.mkdir()
    d = _variant(dirs["bin"], sub, weights=bytes(raw))
    with pytest.raises(CheckpointError, match="claims|corrupt"):
        read_state_dict(d)


_GLOBALS = [("os", "system"), ("builtins", "eval"), ("builtins", "exec"), ("subprocess", "Popen"),
            ("shutil", "rmtree"), ("builtins", "open"), ("importlib", "import_module"), ("pathlib", "Path"),
            ("builtins", "getattr"), ("torch", "load"), ("os", "remove"), ("builtins", "__import__"),
            ("pickle", "loads"), ("numpy", "load"), ("runpy", "run_path")]


class _Reduce:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@examples(ci=10, fuzz=300)
@given(g=st.sampled_from(_GLOBALS), where=st.sampled_from(["value", "top", "nested"]), proto=st.sampled_from([2, 4]))
def test_pickles_with_globals_refused(ckpts, tmp_path_factory, g, where, proto):
    """A pickle that names any global outside the tensor allow-list is refused before it runs."""
    import importlib

    sd, dirs = ckpts
    tmp = tmp_path_factory.mktemp("p")
    marker = tmp / "pwned"
    fn = getattr(importlib.import_module(g[0]), g[1])
    evil = _Reduce(fn, (f"touch {marker}",))
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}
    obj = {"top": evil, "value": {**tensors, "backbone.norm_f.weight": evil},
           "nested": {**tensors, "extra": [1, {"x": evil}]}}[where]
    weights = tmp / "w.bin"
    torch.save(obj, weights, pickle_protocol=proto)
    d = _variant(dirs["bin"], tmp, weights=weights.read_bytes())
    status, e = check("checkpoint/bin/pickle-global", lambda: _read(d), (CheckpointError,),
                      ("refused to unpickle",), f"{g} in {where}")
    assert status == "error" and e.cause == "UnpicklingError" and not marker.exists()


@examples(ci=15, fuzz=500)
@given(fmt=st.sampled_from(FORMATS), data=st.data())
def test_missing_extra_misshaped_keys(ckpts, tmp_path_factory, fmt, data):
    sd, dirs = ckpts
    keys = sorted(k for k in sd if k != "lm_head.weight")
    missing = data.draw(st.lists(st.sampled_from(keys), max_size=3, unique=True))
    extra = data.draw(st.lists(st.from_regex(r"backbone\.layers\.[0-9]{1,2}\.mixer\.[a-z_]{1,8}", fullmatch=True),
                               max_size=2, unique=True).map(lambda xs: [x for x in xs if x not in sd]))
    mis = data.draw(st.lists(st.sampled_from([k for k in keys if k not in missing]), max_size=2, unique=True))
    if not (missing or extra or mis):
        missing = [keys[0]]
    bad = {k: np.asarray(v) for k, v in sd.items() if k not in missing and k != "lm_head.weight"}
    for k in extra:
        bad[k] = np.zeros(3, np.float32)
    for k in mis:
        bad[k] = np.zeros(tuple(s + 1 for s in bad[k].shape), np.float32)
    tmp = tmp_path_factory.mktemp("k")
    if fmt == "bin":
        torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in bad.items()}, tmp / "w")
    else:
        from safetensors.numpy import save_file

        names = {"backbone.embedding.weight": "backbone.embeddings.weight"} if fmt == "hf" else {}
        save_file({names.get(k, k): np.ascontiguousarray(v) for k, v in bad.items()}, str(tmp / "w"))
    d = _variant(dirs[fmt], tmp, weights=(tmp / "w").read_bytes())
    status, e = check(f"checkpoint/{fmt}/keys", lambda: _read(d), (CheckpointError,), None,
                      f"missing {missing} extra {extra} misshaped {mis}")
    assert status == "error"
    msg = str(e).replace("backbone.embeddings.weight", "backbone.embedding.weight")  # HF spelling
    # every problem is named (mis-shaped ones may be reported before missing/unexpected keys)
    assert all(k in msg for k in mis) or all(k in msg for k in missing + extra), msg


@examples(ci=10, fuzz=300)
@given(fmt=st.sampled_from(FORMATS), data=st.data())
def test_nonfinite_weights_detected_and_reported(ckpts, tmp_path_factory, capsys, fmt, data):
    sd, dirs = ckpts
    keys = sorted(k for k in sd if k != "lm_head.weight")
    key = data.draw(st.sampled_from(keys))
    val = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    arr = np.array(sd[key], copy=True)
    idx = data.draw(st.lists(st.integers(0, arr.size - 1), min_size=1, max_size=5, unique=True))
    arr.reshape(-1)[idx] = val
    bad = {**sd, key: arr}
    if key == "backbone.embedding.weight":
        bad["lm_head.weight"] = arr
    out = tmp_path_factory.mktemp("n") / "ck"
    write_checkpoint(CFG, bad, out, fmt="hf" if fmt == "hf" else "state-spaces", weights=None if fmt == "hf" else fmt)
    status, e = check(f"checkpoint/{fmt}/non-finite", lambda: _read(out), (CheckpointError,), (key,), key)
    assert status == "error" and e.cause == "NonFiniteWeights" and f"{key} ({len(idx)})" in str(e)
    read_state_dict(out, check_finite=False)  # the opt-out loads them
    capsys.readouterr()
    assert cli_main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["nonfinite_values"] == {"total": len(idx), "tensors": {key: len(idx)}}


def test_byte_flip_to_nan_found_by_hand(ckpts, tmp_path, capsys):
    """The issue's case: one flipped exponent byte in the weights gives a NaN.  It is refused by
    default (API and CLI), loads with the opt-out (``check_finite=False``, ``--allow-nonfinite``),
    and `info` reports it."""
    _, dirs = ckpts
    header, body = _st_parts(dirs["safetensors"] / "model.safetensors")
    b0 = header["backbone.norm_f.weight"]["data_offsets"][0]
    body = bytearray(body)
    body[b0 + 3] |= 0x7F  # sign/exponent byte of the first float32: exponent all ones
    body[b0 + 2] |= 0x80
    d = _variant(dirs["safetensors"], tmp_path, weights=_st_build(header, bytes(body)))
    _, sd, _ = read_state_dict(d, check_finite=False)
    assert not np.isfinite(sd["backbone.norm_f.weight"][0])
    with pytest.raises(CheckpointError, match="non-finite"):
        read_state_dict(d)  # refused by default
    assert cli_main(["convert", str(d), str(tmp_path / "out"), "--format", "hf"]) == 2
    assert "non-finite" in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert cli_main(["convert", str(d), str(tmp_path / "out"), "--format", "hf", "--allow-nonfinite"]) == 0
    assert (tmp_path / "out" / "model.safetensors").exists()
    capsys.readouterr()
    assert cli_main(["info", str(d)]) == 0
    assert "WARNING: 1 non-finite" in capsys.readouterr().out


def test_empty_files_and_missing_config(ckpts, tmp_path):
    _, dirs = ckpts
    cases = {}
    for fmt in ("bin", "safetensors"):
        (d := tmp_path / f"zero-{fmt}").mkdir()
        shutil.copy(dirs[fmt] / "config.json", d)
        (d / WEIGHTS[fmt]).write_bytes(b"")
        cases[f"0-byte {fmt}"] = d
    (d := tmp_path / "zero-config").mkdir()
    shutil.copy(dirs["bin"] / "pytorch_model.bin", d)
    (d / "config.json").write_bytes(b"")
    cases["0-byte config"] = d
    (d := tmp_path / "no-config").mkdir()
    shutil.copy(dirs["bin"] / "pytorch_model.bin", d)
    cases["no config"] = d
    (d := tmp_path / "no-weights").mkdir()
    shutil.copy(dirs["bin"] / "config.json", d)
    cases["no weights"] = d
    (d := tmp_path / "config-is-dir").mkdir()
    (d / "config.json").mkdir()
    cases["config is a directory"] = d
    cases["not a directory"] = dirs["bin"] / "config.json"
    for what, d in cases.items():
        status, e = check("checkpoint/empty-or-missing", lambda d=d: read_state_dict(d), (CheckpointError,), None,
                          what)
        assert status == "error", what
        assert str(d) in str(e), (what, e)


class _Enospc(Exception):
    pass


@examples(ci=8, fuzz=200)
@given(fmt=st.sampled_from(["state-spaces-bin", "state-spaces-safetensors", "hf"]),
       existing=st.booleans(), fail_at=st.integers(0, 6), via=st.sampled_from(["convert", "save"]))
def test_save_and_convert_never_leave_partial_output(ckpts, tmp_path_factory, monkeypatch, fmt, existing, fail_at,
                                                     via):
    """An OSError(ENOSPC) injected at the n-th write call: the destination is either untouched
    (the previous checkpoint byte for byte) or absent; no temporary file or directory remains."""
    sd, dirs = ckpts
    tmp = tmp_path_factory.mktemp("w")
    dst = tmp / "dst"
    if existing:
        write_checkpoint(CFG, init_state_dict(CFG, seed=9), dst, fmt="state-spaces", weights="bin")
    before = {p.name: p.read_bytes() for p in dst.iterdir()} if existing else None
    calls = {"n": 0}
    real_write = os.write

    import builtins
    real_open = builtins.open

    class FailingFile:
        def __init__(self, f):
            self._f = f

        def write(self, b):
            calls["n"] += 1
            if calls["n"] > fail_at:
                raise OSError(errno.ENOSPC, "No space left on device (injected)")
            return self._f.write(b)

        def __getattr__(self, a):
            return getattr(self._f, a)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return self._f.__exit__(*a)

    def fopen(file, mode="r", *a, **k):
        f = real_open(file, mode, *a, **k)
        return FailingFile(f) if ("w" in mode and str(file).startswith(str(tmp))) else f

    def fwrite(fd, b):
        calls["n"] += 1
        if calls["n"] > fail_at:
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        return real_write(fd, b)

    src_fmt, weights = {"state-spaces-bin": ("state-spaces", "bin"), "state-spaces-safetensors":
                        ("state-spaces", "safetensors"), "hf": ("hf", None)}[fmt]
    monkeypatch.setattr(builtins, "open", fopen)
    monkeypatch.setattr(os, "write", fwrite)
    # torch.save and safetensors write through their own C++ writers: fail those calls too
    real_tsave, real_sfsave = torch.save, __import__("safetensors.numpy").numpy.save_file

    def tsave(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] > fail_at:
            real_open(f, "wb").write(b"PK\x03\x04partial")  # what a full disk leaves behind
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        return real_tsave(obj, f, *a, **k)

    def sfsave(t, f, *a, **k):
        calls["n"] += 1
        if calls["n"] > fail_at:
            real_open(f, "wb").write(b"\x10\x00partial")
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        return real_sfsave(t, f, *a, **k)

    monkeypatch.setattr(torch, "save", tsave)
    monkeypatch.setattr(__import__("safetensors.numpy").numpy, "save_file", sfsave)

    def run():
        if via == "convert":
            return convert(dirs["bin"], dst, fmt=src_fmt) if weights != "safetensors" else \
                write_checkpoint(*read_state_dict(dirs["bin"])[:2], dst, fmt=src_fmt, weights=weights)
        return write_checkpoint(CFG, sd, dst, fmt=src_fmt, weights=weights)

    status, _ = check("checkpoint/save-enospc", run, (OSError,), None, f"{fmt} existing={existing} fail_at={fail_at}")
    monkeypatch.undo()
    leftovers = [p.name for p in tmp.rglob("*") if ".tmp" in p.name or ".partial" in p.name]
    if leftovers:
        data_lost("checkpoint/save-enospc", f"leftover temporary files {leftovers}")
    assert not leftovers
    if status == "error":
        if existing:
            after = {p.name: p.read_bytes() for p in dst.iterdir()}
            if after != before:
                data_lost("checkpoint/save-enospc", f"previous checkpoint changed ({fmt}, fail_at={fail_at})")
            assert after == before
            read_state_dict(dst)
        else:
            assert not dst.exists()
    else:
        _, got, _ = read_state_dict(dst)
        assert all(np.array_equal(got[k], np.asarray(sd[k]).astype(got[k].dtype)) for k in sd)
