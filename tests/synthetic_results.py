"""Tiny synthetic results trees in the experiments' formats, for the figure and paper-table tests."""

from __future__ import annotations

import json
from pathlib import Path

PROV = {"date_utc": "2026-01-01T00:00:00+00:00", "git": {"sha": "0123456789abcdef", "dirty": False},
        "cpu_model": "Test CPU", "cpu_count": 2, "jax": {"backend": "cpu", "device_kinds": ["cpu"]}}


# ------------------------------------------------------------------------------ synthetic results
def hardware(profile="cpu", platform="cpu", kind="cpu", matches=True):
    return {"profile": {"name": profile, "kind": platform, "peak": {"float32": 1e11}, "bandwidth": 1e10},
            "requested": "auto", "detected": profile if matches else platform,
            "device": {"platform": platform, "device_kind": kind, "count": 1, "backend": platform},
            "matches_device": matches, "forced": not matches}


def bench_doc(experiment, records, run="cpu_smoke-cpu", hw=None, config=None):
    return {"schema_version": 1, "experiment": experiment, "run": run, "label": f"{experiment}: test",
            "provenance": PROV, "hardware": hw or hardware(), "config": config or {"dtype": "float32"},
            "records": records}


def throughput_records(models=("mamba2-130m", "mamba2-370m"), weights="random-init", length=1024, tflops=0.05,
                       mfu_bf16=0.01, hbu=0.3):
    out = []
    for k, m in enumerate(models):
        common = {"model": m, "dtype": "float32", "matmul_precision": "highest", "batch": 1, "weights": weights,
                  "num_params": 1e8}
        out.append({**common, "kind": "prefill", "length": length, "context": length, "compile_s": 3.0,
                    "median_s": 0.5 * (k + 1), "tokens_per_s": length / (0.5 * (k + 1)), "tflops": tflops / (k + 1),
                    "mfu": 0.2 / (k + 1), "mfu_vs_bf16_peak": mfu_bf16 / (k + 1), "peak_flops": 1e11,
                    "peak_note": "test peak"})
        out.append({**common, "kind": "decode", "length": 32, "context": 128, "compile_s": 2.0, "median_s": 0.3,
                    "ms_per_token": 10.0 * (k + 1), "tokens_per_s": 100.0 / (k + 1), "bytes_per_step": 5e8,
                    "bandwidth": 1e10, "hbu": hbu / (k + 1), "mfu": 0.01, "peak_flops": 1e11})
    return out


def sweep_records(models=("mamba2-130m", "mamba2-370m"), contexts=(128, 512, 2048), weights="random-init", slope=0.0):
    out = []
    for k, m in enumerate(models):
        common = {"model": m, "dtype": "float32", "matmul_precision": "highest", "batch": 1, "weights": weights}
        for c in contexts:
            ms = 10.0 * (k + 1) * (1 + slope * c / contexts[-1])
            out.append({**common, "kind": "decode", "context": c, "median_s": ms * 32 / 1e3, "tokens": 32,
                        "ms_per_token": ms, "tokens_per_s": 1e3 / ms, "hbu": 0.3, "compile_s": 2.0})
            out.append({**common, "kind": "prefill", "context": c, "median_s": c / 2000, "tokens": c,
                        "tokens_per_s": 2000.0, "tflops": 0.04, "mfu": 0.2, "compile_s": 3.0})
    return out


def cache_records(models=("mamba2-130m", "mamba2-370m"), contexts=(512, 1024), weights="random-init", speedups=None):
    out = []
    for k, m in enumerate(models):
        for j, c in enumerate(contexts):
            s = (speedups or {}).get((m, c), 5.0 * (j + 1) + k)
            out.append({"model": m, "dtype": "float32", "batch": 1, "weights": weights, "context": c,
                        "headline": c == contexts[-1], "cached_ms_per_token": 10.0,
                        "recompute_ms_per_token": 10.0 * s, "speedup": s})
    return out


def parity_doc(model="random-tiny", backend="mamba_ssm_ref_cpu", kind="random-init", n_layer=3, max_rel=2e-6,
               matched=64, label="cpu-synthetic", ref_device="cpu"):
    layers = [{"max_abs": 1e-7, "max_rel": max_rel * (i + 1) / n_layer, "ulps": 4.0 * (i + 1)} for i in range(n_layer)]
    prompts = {p: {"T": 5, "greedy": {"n": 64, "n_match_positions": matched, "matched_prefix": matched,
                                      "first_divergence": None if matched == 64 else matched}}
               for p in ("capital", "recipe")}
    return {"model": model, "reference": {"backend": backend, "device": ref_device, "dtype": "float32"},
            "checkpoint": {"kind": kind, "source": model if kind == "checkpoint" else "random init of preset tiny"},
            "jax": {"param_dtype": "float32", "stored_dtype": "float32", "matmul_precision": "highest",
                    "plant_bug": None},
            "hidden_per_layer": layers, "hidden_worst": {"max_abs": 1e-6, "max_rel": max_rel, "ulps": 40.0},
            "logits_worst": {"max_abs": 1e-6, "max_rel": max_rel * 0.9, "ulps": 30.0}, "decode_topk_max_rel": 1e-6,
            "greedy_summary": {"prompts": 2, "identical_64_of_64": 2 if matched == 64 else 0,
                               "tokens_matching_total": 2 * matched, "tokens_total": 128,
                               "divergences_below_noise_floor": 0, "divergences_unexplained": []},
            "per_prompt": prompts, "pass": matched == 64, "tolerance": {"max_rel": 1e-5, "margin_rel": 1e-5},
            "n_new": 64, "label": label, "provenance": PROV}


def perplexity_doc(name="synthetic-d64", synthetic=True, scope="first 3 of 62 documents", ref="mamba_ssm_ref_cpu",
                   delta=1.5e-4, protocol="lm_eval_rolling", ppl=1000.0):
    metric = "word_perplexity" if protocol == "lm_eval_rolling" else "token_perplexity"
    be = {"jax_fp32": {"status": "ok", metric: ppl + delta, "n_tokens": 9000,
                       "run": {"policy": {"matmul_precision": "highest"}}},
          "jax_bf16": {"status": "ok", metric: ppl + 1.0, "n_tokens": 9000},
          ref: {"status": "ok", metric: ppl, "n_tokens": 9000},
          "transformers": {"status": "ok", metric: ppl + 1e-5, "n_tokens": 9000}}
    return {"kind": "perplexity", "protocol": protocol, "scope": scope,
            "model": {"name": name, "label": name, "synthetic": synthetic,
                      "weights": "synthetic weights (random init, untrained)" if synthetic else f"pretrained {name}"},
            "data": {"split": "test"}, "backends": be,
            "comparison": {"reference_backend": ref, "primary_metric": metric, "tolerance_rel": 1e-4,
                           "vs_reference": {"jax_fp32": {metric: {"delta": delta, "rel": delta / ppl}},
                                            "jax_bf16": {metric: {"delta": 1.0, "rel": 1.0 / ppl}},
                                            "transformers": {metric: {"delta": 1e-5, "rel": 1e-8}}}},
            "provenance": PROV}


def state_dtype_perplexity_doc(protocol="lm_eval_rolling", ppl=80.0):
    """A `make perplexity-state-dtype` document: the 16-bit state backends against jax_fp32."""
    metric = "word_perplexity" if protocol == "lm_eval_rolling" else "token_perplexity"
    deltas = {"jax_fp32_state_bf16": 2e-3, "jax_fp32_state_fp16": 1e-4}
    be = {"jax_fp32": {"status": "ok", metric: ppl, "n_tokens": 280000},
          **{b: {"status": "ok", metric: ppl + d, "n_tokens": 280000} for b, d in deltas.items()}}
    return {"kind": "perplexity", "protocol": protocol, "scope": "whole test split",
            "model": {"name": "mamba2-tiny-wikitext", "label": "mamba2-tiny-wikitext", "synthetic": False,
                      "weights": "trained"},
            "data": {"split": "test"}, "backends": be,
            "comparison": {"reference_backend": "jax_fp32", "primary_metric": metric, "tolerance_rel": 1e-4,
                           "vs_reference": {b: {metric: {"delta": d, "rel": d / ppl}} for b, d in deltas.items()}},
            "provenance": PROV}


def state_dtype_fidelity_doc():
    """A `make state-dtype-fidelity` document (eval/state_fidelity.py): its summary per model and dtype."""
    summary = {"mamba2-tiny-wikitext/bfloat16": {"prompts": 8, "prompts_all_agree": 7, "tokens_agree": 500,
                                                 "tokens": 512, "logits_max_rel": 3e-3, "logits_median_rel": 4e-4},
               "mamba2-tiny-wikitext/float16": {"prompts": 8, "prompts_all_agree": 8, "tokens_agree": 512,
                                                "tokens": 512, "logits_max_rel": 2e-4, "logits_median_rel": 3e-5}}
    return {**bench_doc("state_dtype", [], run="fidelity"), "models": {"mamba2-tiny-wikitext": {}},
            "summary": summary}


def bench_curves_doc():
    """A `make bench` document with only the batch and length curves (experiments/bench.py)."""
    m = {"model": "mamba2-130m", "dtype": "float32"}
    recs = [{**m, "metric": "decode_batch_tokens_per_s", "value": 30.0 * b ** 0.8, "unit": "tokens/s", "batch": b,
             "bound_tokens_per_s": 90.0 * b / (1 + 0.07 * b), "bandwidth_fraction": 0.4 + 0.005 * b}
            for b in (1, 4, 16, 64)]
    recs += [{**m, "metric": "prefill_us_per_token", "value": 390.0 * (1 + 0.02 * i), "unit": "us/token", "length": L,
              "n_layer": 4, "ratio_to_shortest": 1 + 0.02 * i} for i, L in enumerate((4096, 16384, 65536))]
    return {**bench_doc("bench", recs, run="cpu_bench-cpu"),
            "models": {"float32": {"weights": "random-init", "policy": {"matmul_precision": "highest"}}},
            "config": {"dtype": "float32",
                       "bench": {"dtypes": ["float32"], "targets": {"prefill_length_ratio_max": 1.3}}}}


def write_json(path: Path, doc) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def write_synthetic_results(root: Path) -> Path:
    """A small CPU results tree in the experiments' formats (synthetic weights)."""
    write_json(root / "throughput" / "cpu_smoke-cpu.json", bench_doc("throughput", throughput_records()))
    write_json(root / "sweep" / "cpu_smoke-cpu.json", bench_doc("sweep", sweep_records()))
    write_json(root / "cache_speedup" / "cpu_smoke-cpu.json", bench_doc("cache_speedup", cache_records()))
    write_json(root / "bench" / "cpu_bench-cpu.json", bench_curves_doc())
    write_json(root / "peers" / "cpu_bench-cpu.json", peers_doc())
    write_json(root / "parity" / "random-tiny__mamba_ssm_ref_cpu.json", parity_doc())
    write_json(root / "parity" / "random-tiny__transformers.json", parity_doc(backend="transformers", matched=40))
    write_json(root / "perplexity" / "synthetic-d64" / "lm_eval_rolling-limit3.json", perplexity_doc())
    write_json(root / "perplexity" / "synthetic-d64" / "strided-limit3.json",
               perplexity_doc(protocol="strided", scope="first 3 of 141 windows", delta=-3e-4, ppl=800.0))
    write_json(root / "perplexity" / "mamba2-tiny-wikitext" / "lm_eval_rolling-state_dtype.json",
               state_dtype_perplexity_doc())
    write_json(root / "state_dtype" / "fidelity.json", state_dtype_fidelity_doc())
    write_json(root / "tpu_compile" / "mamba2-130m.json", compiled_doc())
    write_json(root / "tpu_compile_anchor" / "mamba2-130m.json", compiled_anchor_doc())
    write_json(root / "serve" / "full-cpu.json", serve_doc())
    return root


def serve_doc():
    """A `make bench-serve` document (experiments/serve_bench.py): per-round records and the medians."""
    recs, summary = [], {}

    def add(model, workload, variant, system, conc, tok_s, ttft, weights="random-init"):
        row = {"model": model, "workload": workload, "variant": variant, "system": system, "concurrency": conc,
               "output_tok_s": tok_s, "requests_s": tok_s / 128, "ttft_p50_s": ttft, "itl_p50_s": 0.05,
               "failures": 0, "n_requests": conc, "dtype": "float32", "weights": weights}
        recs.append({**row, "round": 0})
        summary[f"{model}/{variant}/{system}"] = {**row, "rounds": 1}

    for c in (1, 4, 16, 64):
        add("mamba2-130m", "concurrency", f"c{c}", "ours", c, 20.0 * c ** 0.8, 0.3)
        add("mamba2-130m", "concurrency", f"c{c}", "llama_server", c, 15.0 * c ** 0.6, 0.4)
        add("mamba2-130m", "concurrency", f"c{c}", "generator", c, 22.0 * c ** 0.8, 0.5)
    for w in ("shared_prefix", "multiturn"):
        add("mamba2-130m", w, w, "ours", 1, 10.0, 0.05)
        add("mamba2-130m", w, w, "ours_nocache", 1, 5.0, 2.0)
        add("mamba2-130m", w, w, "llama_server", 1, 6.0, 1.5)
    ratios = {"mamba2-130m/shared_prefix": {"cache_off_over_on_ttft_p50": 40.0},
              "mamba2-130m/c16": {"ours_over_llama_server_output_tok_s": 2.2}}
    return {**bench_doc("serve", recs, run="full-cpu"), "summary": summary, "ratios": ratios,
            "skipped": {}}


def peers_doc():
    """A `make bench-peers` document: per-task records (experiments/peers.py)."""
    recs = []

    def task(peer, key, kind, value, variant="float32", lowp=False, **kw):
        recs.append({"peer": peer, "metric": "tokens_per_s", "value": value, "unit": "tokens/s", "task": key,
                     "kind": kind, "variant": variant, "dtype": variant, "lower_precision": lowp,
                     "model": "mamba2-130m", "weights": "random-init", "matmul_precision": "highest", **kw})

    for peer, f in (("ours", 2.0), ("llama_cpp", 1.0), ("hf_transformers", 0.5)):
        for L in (1024, 4096):
            for m in ("full", "last"):
                task(peer, f"prefill_{m}_{L}", "prefill", 500.0 * f, length=L, logits=m)
        task(peer, "decode", "decode", 50.0 * f, batch=1)
        for b in (1, 4, 16):
            task(peer, f"batched_b{b}", "batched", 50.0 * f * b ** 0.5, batch=b)
    task("ours", "batched_b4_bf16", "batched", 300.0, variant="bfloat16", lowp=True, batch=4)
    task("llama_cpp", "batched_b4_q8_0", "batched", 200.0, variant="gguf-q8_0", lowp=True, batch=4)
    recs.append({"peer": "llama_cpp", "metric": "ours_over_peer_decode", "value": 2.0, "unit": "ratio"})
    return {**bench_doc("peers", recs, run="cpu_bench-cpu"), "skipped": {"mamba2_jax_1_1_2": "not installed"}}


def compiled_record(key, flops, min_bytes, xla_bytes, tokens, need=1 << 30):
    """A record of experiments/tpu_compile.py: a v6e program (918 TFLOP/s, 1.638 TB/s, 32 GB)."""
    peak, bw = 918e12, 1638e9

    def roof(b):
        t = max(flops / peak, b / bw)
        return {"min_time_s": t, "bound_tokens_per_s": tokens / t, "bound_tflops": flops / t / 1e12,
                "bound_mfu": flops / t / peak, "bound": "compute" if flops / peak >= b / bw else "memory"}

    return {"key": key, "program": key.split("-")[0], "flops": flops, "min_bytes": min_bytes,
            "bytes_accessed": xla_bytes, "tokens_per_call": tokens, "bytes_needed_per_device": need,
            "hbm_bytes_per_device": 32e9, "fits": need <= 32e9, "num_devices": 1,
            "roofline": {**roof(min_bytes), "peak_flops": peak, "bandwidth": bw, "xla": roof(xla_bytes)}}


def compiled_doc():
    """results/tpu_compile/<model>.json: a 4096-token prefill of 1 TFLOP moving 0.5 GB (bound: 918 TFLOP/s,
    compute-bound, 1.089 ms) and a step moving 0.5 GB (0.305 ms, 3276 tokens/s at 100% HBU)."""
    recs = [compiled_record("step", 3e8, 5e8, 1.6e9, 1),
            compiled_record("prefill-L4096", 1e12, 5e8, 2e10, 4096)]
    return {**bench_doc("tpu_compile", recs, run="mamba2-130m", hw=hardware("tpu_v6e", "tpu", "TPU v6 lite", False)),
            "status": "compiled for TPU v6e, not run",
            "provenance": {"git": {"sha": "0" * 40, "dirty": False},
                           "compile": {"jax": "0.10.2", "libtpu": "0.0.42.1", "topology": "v6e:2x2"}}}


def compiled_anchor_doc(programs=("decode", "prefill-L4096"), model="mamba2-130m"):
    """results/tpu_compile_anchor/<model>.json (experiments/tpu_compile_anchor.py): mamba2-jax 1.1.2's decode (one
    token padded to a 256-token chunk: 2e10 FLOPs, 0.55 GB) and its full-logits prefill at 4096 (1.2 TFLOP, 1.4 GB)."""
    made = {"decode": compiled_record("decode", 2e10, 5.5e8, 2.1e9, 1),
            "prefill-L4096": compiled_record("prefill-L4096", 1.2e12, 1.4e9, 3e10, 4096, need=3 << 30)}
    recs = []
    for k in programs:
        r = made[k]
        r.update(compile_s=40.0 if k == "decode" else 300.0, argument_bytes=5.35e8, temp_bytes=2e7 if k == "decode"
                 else 8e8, output_bytes=r["min_bytes"] - 5.35e8, load_avg_1m=[2.0, 2.5],
                 policy={"implementation": "mamba2-jax 1.1.2", "scan_chunk_size": 256, "logits": "full"},
                 anchor={"version": "1.1.2", "seq_pads": [[0, 255]] if k == "decode" else [[3, 0]],
                         "pads_to_chunk": k == "decode"})
        if k == "decode":  # ours compiled just before it in the same run (the prefill's is left out: n/a)
            r["ours_same_run"] = {**compiled_record("step", 3e8, 5e8, 1.6e9, 1), "compile_s": 10.0, "temp_bytes": 0,
                                  "load_avg_1m": [1.5, 2.0]}
        recs.append(r)
    return {**bench_doc("tpu_compile_anchor", recs, run=model, hw=hardware("tpu_v6e", "tpu", "TPU v6 lite", False)),
            "status": "compiled for TPU v6e, not run",
            "config": {"programs": list(made), "anchor": {"version": "1.1.2", "dir": "/x/.anchor"}},
            "provenance": {"git": {"sha": "1" * 40, "dirty": False},
                           "compile": {"jax": "0.10.2", "libtpu": "0.0.42.1", "topology": "v6e:2x2",
                                       "anchor": "mamba2-jax 1.1.2", "anchor_dir": "/x/.anchor"}}}


def bench_metrics_doc():
    """A `make bench` document (one record per metric, experiments/bench.py)."""
    m = {"model": "mamba2-130m"}
    recs = [{**m, "metric": "prefill_tokens_per_s", "value": 180.0, "unit": "tokens/s", "dtype": "float32",
             "length": 1024, "median_s": 5.7, "compile_s": 2.0}]
    for c, ms in ((128, 67.0), (1024, 66.0), (4096, 66.5)):
        recs += [{**m, "metric": "decode_ms_per_token", "value": ms, "unit": "ms", "dtype": "float32", "context": c,
                  "tokens": 64, "compile_s": 1.7},
                 {**m, "metric": "bandwidth_fraction_vs_start_best", "value": 0.38, "unit": "fraction",
                  "dtype": "float32", "context": c},
                 {**m, "metric": "achieved_bytes_per_s", "value": 8e9, "unit": "B/s", "dtype": "float32", "context": c,
                  "bytes_per_step": 5.5e8}]
    recs += [{**m, "metric": "decode_ms_per_token", "value": 70.0, "unit": "ms", "dtype": "bfloat16", "context": 128},
             {**m, "metric": "stream_bandwidth_start", "value": 2e10, "unit": "B/s"},
             {**m, "metric": "cached_over_recompute", "value": 300.0, "unit": "ratio", "dtype": "float32",
              "context": 4096, "recompute_ms": 19950.0, "cached_ms": 66.5}]
    return {**bench_doc("bench", recs, run="cpu_bench-cpu"),
            "models": {"float32": {"weights": "random-init", "policy": {"matmul_precision": "highest"}},
                       "bfloat16": {"weights": "random-init", "policy": {"matmul_precision": "default"}}},
            "config": {"dtype": "float32", "bench": {"dtypes": ["float32", "bfloat16"]}}}
