"""The parity comparer (experiments/parity.py): metrics, divergence classification, an end-to-end
run on a tiny ngroups=2 model against both CPU references, and a planted bug that must fail."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from helpers import N_NEW, N_PROMPTS, compose, load_parity_module, tiny_parity_run

from mamba2_jax.eval import parity_compare, reported
from mamba2_jax.eval.llama_cpp import unavailable
from paper import make_tables

parity = load_parity_module()


def test_tensor_error_units():
    ref = np.array([1.0, -2.0, 0.5], np.float32)
    e = parity_compare.tensor_error(ref, ref)
    assert e == {"max_abs": 0.0, "max_rel": 0.0, "ulps": 0.0, "ref_absmax": 2.0}
    x = ref.copy()
    x[0] += np.spacing(np.float32(2.0)) * 3  # 3 ulps of the value scale (2.0)
    e = parity_compare.tensor_error(x, ref)
    assert e["ulps"] == pytest.approx(3.0) and e["max_rel"] == pytest.approx(3 * 2.0 ** -22 / 2.0)
    assert parity_compare.tensor_error(np.array([np.nan, 0, 0]), ref)["max_rel"] == float("inf")
    with pytest.raises(ValueError, match="shape"):
        parity_compare.tensor_error(ref[:2], ref)


# errors planted in the JAX side, relative to the reference's value scale
H_ERR, H0_ERR, L_ERR, S_ERR = 3e-6, 4e-7, 2e-6, 5e-6


def _fake(n_steps=5, V=10, margin_at_div=1e-7, diverge_at=2, seed=0):
    """A reference (float32, as a golden file holds) and a JAX run (float64) that differs from it by
    known errors: hidden layer 1 at one element (H_ERR × its absmax), every element of layer 0
    (±H0_ERR × its absmax), one logit (L_ERR), the reference's top-1 id at decode step 1 (S_ERR) and at
    the last step (1.0 absolute: compared only when the greedy tokens agree up to it)."""
    rng = np.random.default_rng(seed)
    T, L, d = 4, 2, 3
    hidden = rng.standard_normal((L, T, d)).astype(np.float32)
    logits = rng.standard_normal((T, V)).astype(np.float32)
    steps = rng.standard_normal((n_steps, V)).astype(np.float32) * 5
    ref_tokens = steps.argmax(-1)
    s = np.sort(steps, -1)
    margins = s[:, -1] - s[:, -2]
    absmax = np.abs(steps).max(-1)
    top_ids = np.argsort(-steps, -1)[:, :4]
    ref = {"input_ids": np.arange(T), "hidden": hidden, "logits_pos": np.arange(T), "logits": logits,
           "greedy_tokens": ref_tokens, "greedy_margin": margins.astype(np.float32), "greedy_absmax": absmax,
           "greedy_top_ids": top_ids, "greedy_top_vals": np.take_along_axis(steps, top_ids, -1)}
    jtok = ref_tokens.copy()
    if diverge_at is not None:
        ref["greedy_margin"][diverge_at] = margin_at_div * absmax[diverge_at]
        jtok[diverge_at] = (jtok[diverge_at] + 1) % V
    jh, jl, js = (x.astype(np.float64) for x in (hidden, logits, steps))
    jh[1, 2, 0] += H_ERR * np.abs(hidden[1]).max()
    jh[0] += H0_ERR * np.abs(hidden[0]).max() * rng.choice([-1.0, 1.0], jh[0].shape)
    jl[3, 5] -= L_ERR * np.abs(logits).max()
    js[1, top_ids[1, 0]] += S_ERR * absmax[1]
    js[-1, top_ids[-1, 0]] += 1.0
    jx = {"hidden": jh, "logits": jl, "tokens": jtok, "step_logits": js, "margin": margins, "absmax": absmax}
    return jx, ref


def _check_planted_errors(r, ref):
    h1 = np.abs(ref["hidden"][1]).max()
    assert r["hidden_layers"][1]["max_rel"] == pytest.approx(H_ERR, rel=1e-6)
    assert r["hidden_layers"][1]["max_abs"] == pytest.approx(H_ERR * h1, rel=1e-6)
    assert r["hidden_layers"][1]["ulps"] == pytest.approx(H_ERR * h1 / np.spacing(np.float32(h1)), rel=1e-6)
    assert r["hidden_layers"][0]["max_rel"] == pytest.approx(H0_ERR, rel=1e-6)
    assert r["hidden_worst"]["max_rel"] == pytest.approx(H_ERR, rel=1e-6)
    assert r["logits"]["max_rel"] == pytest.approx(L_ERR, rel=1e-6)


def test_divergence_below_noise_floor_is_explained():
    jx, ref = _fake(margin_at_div=1e-7)
    r = parity_compare.compare_prompt(jx, ref, 1e-5)
    g = r["greedy"]
    assert g["first_divergence"] == 2 and g["matched_prefix"] == 2 and g["below_noise_floor"]
    assert "below the fp32 noise floor" in g["explanation"]
    _check_planted_errors(r, ref)
    # decode steps 0..2 (identical contexts up to the divergence): step 1's planted error; not the last step's
    assert r["decode_topk_max_rel"] == pytest.approx(S_ERR, rel=1e-6)


def test_divergence_with_large_margin_is_unexplained():
    jx, ref = _fake(margin_at_div=1e-2)
    g = parity_compare.compare_prompt(jx, ref, 1e-5)["greedy"]
    assert not g["below_noise_floor"] and g["explanation"].startswith("UNEXPLAINED")
    assert g["ref_margin_rel"] == pytest.approx(1e-2, rel=1e-6) and (g["ref_token"], g["jax_token"]) == (
        int(ref["greedy_tokens"][2]), int(jx["tokens"][2]))


def test_identical_greedy():
    jx, ref = _fake(diverge_at=None)
    r = parity_compare.compare_prompt(jx, ref, 1e-5)
    g = r["greedy"]
    assert g["first_divergence"] is None and g["n_match_positions"] == g["n"] == 5
    _check_planted_errors(r, ref)
    # every step is compared, the last one too: its 1.0 over that step's logit scale is the worst
    last = 1.0 / float(ref["greedy_absmax"][-1])
    assert r["decode_topk_max_rel"] == pytest.approx(max(last, S_ERR), rel=1e-6) and last > S_ERR


def test_model_prompts_rewrite_is_atomic(tmp_path, monkeypatch):
    """A model's prompt subset that changes is rewritten atomically: a write that fails (here: the disk
    is full when the data is flushed) leaves the previous file whole and no temporary file behind."""
    import errno
    import os

    doc = {"version": "v1", "sha256": "abc",
           "prompts": [{"id": f"p{i}", "text": "", "input_ids": list(range(10 * (i + 1)))} for i in range(3)]}
    _, path = parity.model_prompts(doc, {"name": "m", "max_prompts": 2}, tmp_path / "x.json")
    before = path.read_text()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space"):
        parity.model_prompts(doc, {"name": "m", "max_prompts": 3}, tmp_path / "x.json")
    assert path.read_text() == before and sorted(p.name for p in tmp_path.iterdir()) == [path.name]


@pytest.mark.integration
def test_end_to_end_tiny_ngroups2_passes():
    run = tiny_parity_run()
    res = run["result"]
    assert res["pass"], [r["checks"] for r in res["reports"]]
    # llama.cpp (make llama-cpp) joins when it is built; it has no hidden states (logits and greedy only)
    llama = [] if unavailable() else ["llama_cpp"]
    assert {r["reference"]["backend"] for r in res["reports"]} == {"mamba_ssm_ref_cpu", "transformers", *llama}
    for rep in res["reports"]:
        assert rep["config"]["ngroups"] == 2 and rep["jax"]["stored_dtype"] == "float16"
        if rep["reference"]["backend"] == "llama_cpp":
            assert rep["hidden_per_layer"] == [] and "hidden_max_rel_ok" not in rep["checks"]
            assert rep["greedy_vocab"] == "real" and rep["logits_worst"]["max_rel"] <= 1e-5
        else:
            assert len(rep["hidden_per_layer"]) == 2 and rep["hidden_worst"]["max_rel"] <= 1e-5
        assert rep["greedy_summary"]["tokens_total"] == N_PROMPTS * N_NEW
        assert rep["provenance"]["git"]["sha"] and rep["provenance"]["jax"]["default_matmul_precision"] == "highest"
    out = run["root"] / "results"
    with open(out / "summary__test.csv") as f:
        rows = list(csv.DictReader(f))
    tables_in = run["root"] / "tables_in"  # make_tables reads <results>/parity/
    tables_in.mkdir(exist_ok=True)
    if not (tables_in / "parity").exists():
        (tables_in / "parity").symlink_to(out)
    md = make_tables.parity_table(tables_in, reported.load_reported()).markdown()
    assert "| tiny-g2-v50k | synthetic | mamba_ssm_ref_cpu |" in md
    assert [r["backend"] for r in rows] == ["mamba_ssm_ref_cpu", "transformers", *llama]
    assert all(r["pass"] == "True" and r["git_sha"] and r["mamba_ssm"] in ("2.2.2", "") for r in rows)
    assert rows[0]["mamba_ssm"] == "2.2.2" and rows[1]["transformers"]
    rep = json.loads((out / "tiny-g2-v50k__transformers.json").read_text())
    spread = rep["reference_spread"]["mamba_ssm_ref_cpu vs transformers"]
    assert spread["hidden"]["max_rel"] < 1e-5 and spread["greedy_identical_prompts"] == N_PROMPTS
    assert "Reference spread, tiny-g2-v50k, mamba_ssm_ref_cpu vs transformers" in md
    assert rows[0]["ref_spread_hidden_max_rel"]
    assert rep["prompts"]["version"] == "v1" and rep["paper_tolerances"]["greedy"].startswith("64/64")  # reported.yaml


@pytest.mark.integration
def test_planted_bug_flip_D_is_detected():
    run = tiny_parity_run()
    cfg = compose([*run["base_overrides"], "plant_bug=flip_D"])
    res = run["parity"].run_parity(cfg)  # golden files are reused: only the JAX side reruns
    assert not res["pass"]
    for rep in res["reports"]:
        assert not rep["checks"]["logits_max_rel_ok"] and rep["jax"]["plant_bug"] == "flip_D"
        if rep["hidden_worst"]:  # every reference but llama.cpp (no hidden states)
            assert not rep["checks"]["hidden_max_rel_ok"] and rep["hidden_worst"]["max_rel"] > 1e-2
    assert (run["root"] / "results" / "summary__test__bug-flip_D.csv").exists()


def test_prompt_set_v1(data_dir):
    from helpers import REPO

    from mamba2_jax.tokenizer import load_tokenizer

    doc = json.loads((REPO / "experiments" / "parity_prompts_v1.json").read_text())
    assert doc["version"] == "v1" and len(doc["prompts"]) >= 8
    assert len({p["id"] for p in doc["prompts"]}) == len(doc["prompts"])
    tok = load_tokenizer(data_dir / "gpt-neox-20b")
    lengths = [len(tok.encode(p["text"])) for p in doc["prompts"]]
    assert max(lengths) > 512 and min(lengths) < 16 and len(set(lengths)) == len(lengths)
