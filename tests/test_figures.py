"""Every figure script draws a non-empty PNG (and a PDF and a caption naming device, precision and
weights) from a tiny synthetic results tree, and skips missing inputs unless --strict."""

from __future__ import annotations

import importlib
import shutil
import struct
from pathlib import Path

import pytest
from synthetic_results import bench_doc, bench_metrics_doc, hardware, sweep_records, write_json, write_synthetic_results

from mamba2_jax.eval.results import load_results

REPO = Path(__file__).resolve().parents[1]
FIG_DIR = REPO / "figures"
SCRIPTS = sorted((p.stem for p in FIG_DIR.glob("fig[0-9]*.py")), key=lambda s: int(s[3:].split("_")[0]))


# Tests that check the caption or the exit status, not the image files, render the PNG only (a PDF
# doubles the drawing time); every figure's PNG and PDF are checked in test_figure_from_synthetic_results.
PNG_ONLY = ["--formats", "png"]


def load(name):
    """The figure module, imported as the package module make figures runs (python -m figures.<name>)."""
    return importlib.import_module(f"figures.{name}")


def png_size(p: Path) -> tuple[int, int]:
    b = p.read_bytes()
    assert b[:8] == b"\x89PNG\r\n\x1a\n", p
    return struct.unpack(">II", b[16:24])


def test_figure_scripts():
    assert SCRIPTS == ["fig1_cache_speedup", "fig2_decode_flatness", "fig3_prefill", "fig4_decode", "fig5_parity",
                       "fig6_perplexity", "fig7_bench_curves", "fig8_tpu_compiled", "fig9_peers", "fig10_serving",
                       "fig11_anchor_compile"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return write_synthetic_results(tmp_path_factory.mktemp("results"))


@pytest.mark.parametrize("name", SCRIPTS)
def test_figure_from_synthetic_results(name, results, tmp_path, capsys):
    out = tmp_path / "out"
    assert load(name).main(["--results", str(results), "--out", str(out)]) == 0
    png, pdf, cap = out / f"{name}.png", out / f"{name}.pdf", out / f"{name}.caption.md"
    w, h = png_size(png)
    assert w > 400 and h > 200 and png.stat().st_size > 10_000
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 5_000
    text = cap.read_text()
    assert "Device:" in text and "Precision:" in text and "Weights:" in text, text
    if name == "fig8_tpu_compiled":  # TPU programs compiled, not run: no CPU run, no weights
        assert "compiled by libtpu, not run" in text and "plausible, not reproduced" in text
    elif name == "fig11_anchor_compile":  # ours and the paper's package, compiled, not run
        assert ("compiled by libtpu, not run" in text and "mamba2-jax 1.1.2" in text
                and "1 of 4 slots not compiled" in text)  # the synthetic prefill has no ours_same_run
    else:
        assert "synthetic" in text and "CPU" in text
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("name", SCRIPTS)
def test_missing_inputs_skip_or_fail_when_strict(name, tmp_path, capsys):
    mod = load(name)
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    assert mod.main(["--results", str(empty), "--out", str(out)]) == 0
    assert "SKIP" in capsys.readouterr().err
    assert mod.main(["--results", str(empty), "--out", str(out), "--strict"]) == 1
    assert "ERROR" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_multiple_devices_in_one_figure(results, tmp_path):
    """A second run (another device) is drawn next to the first and named in the caption."""
    root = tmp_path / "r"
    shutil.copytree(results, root)
    hw = hardware("tpu_v6e", "tpu", "TPU v6 lite")
    write_json(root / "sweep" / "paper-tpu_v6e.json",
               bench_doc("sweep", sweep_records(weights="checkpoint"), run="paper-tpu_v6e", hw=hw,
                         config={"dtype": "float32", "checkpoints": {"mamba2-130m": "state-spaces/mamba2-130m"}}))
    out = tmp_path / "out"
    assert load("fig2_decode_flatness").main(["--results", str(root), "--out", str(out), *PNG_ONLY]) == 0
    cap = (out / "fig2_decode_flatness.caption.md").read_text()
    assert "TPU v6 lite" in cap and "CPU" in cap and "state-spaces/mamba2-130m" in cap


def test_make_bench_results_feed_figures(tmp_path):
    """results/bench (make bench) is converted to sweep / cache_speedup / throughput records (base dtype only)."""
    root = tmp_path / "r"
    write_json(root / "bench" / "cpu_bench-cpu.json", bench_metrics_doc())
    sweep = load_results("sweep", root, include_bench=True)
    assert [(r["context"], r["ms_per_token"], r["hbu"]) for r in sweep[0][1]["records"]] == [
        (128, 67.0, 0.38), (1024, 66.0, 0.38), (4096, 66.5, 0.38)]
    cs = load_results("cache_speedup", root, include_bench=True)[0][1]["records"]
    assert cs == [{"dtype": "float32", "matmul_precision": "highest", "batch": 1, "weights": "random-init",
                   "model": "mamba2-130m", "context": 4096, "headline": True, "cached_ms_per_token": 66.5,
                   "recompute_ms_per_token": 19950.0, "speedup": 300.0}]
    tp = load_results("throughput", root, include_bench=True)[0][1]["records"]
    assert [r["kind"] for r in tp] == ["prefill", "decode"] and tp[1]["context"] == 128 and tp[1]["bandwidth"] == 2e10
    for name in SCRIPTS[:4]:
        out = tmp_path / "out"
        assert load(name).main(["--results", str(root), "--out", str(out), "--strict", *PNG_ONLY]) == 0
        assert "make bench" in (out / f"{name}.caption.md").read_text()


def test_unreadable_result_is_skipped_with_a_warning(results, tmp_path, capsys):
    """The one loader (mamba2_jax.eval.results.load_results) skips a broken file, says so, and the
    figure is drawn from the readable ones."""
    root = tmp_path / "r"
    shutil.copytree(results, root)
    (root / "sweep" / "broken.json").write_text("{not json")
    write_json(root / "sweep" / "other.json", {"experiment": "throughput", "records": [{}]})   # not a sweep document
    assert [p.name for p, _ in load_results("sweep", root)] == ["cpu_smoke-cpu.json"]
    assert "broken.json" in capsys.readouterr().err
    assert load("fig2_decode_flatness").main(["--results", str(root), "--out", str(tmp_path / "out"), "--strict",
                                              *PNG_ONLY]) == 0


def test_anchor_figure_marks_programs_not_compiled(results, tmp_path):
    """fig11 with only the anchor's decode compiled: its prefill slot, and ours beside it (compiled in the same run,
    so not yet either), say "not compiled" (caption and notes)."""
    from synthetic_results import compiled_anchor_doc

    root = tmp_path / "r"
    shutil.copytree(results, root)
    write_json(root / "tpu_compile_anchor" / "mamba2-130m.json", compiled_anchor_doc(programs=("decode",)))
    out = tmp_path / "out"
    assert load("fig11_anchor_compile").main(["--results", str(root), "--out", str(out), "--strict", *PNG_ONLY]) == 0
    cap = (out / "fig11_anchor_compile.caption.md").read_text()
    assert "2 of 4 slots not compiled" in cap and "mamba2-130m prefill-L4096 (mamba2-jax 1.1.2): not compiled" in cap
    assert "sequence paddings [[0, 255]]" in cap
