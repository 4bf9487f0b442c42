"""``mamba2-jax`` command line: init-random, info, convert, generate, compile, serve."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .config import STATE_DTYPES

__all__ = ["main", "default_model_dir"]

STATE_DTYPE_HELP = ("dtype the SSM state is stored in (its math is float32 whatever it is; float32, the default, "
                    "is the parity setting)")


def default_model_dir() -> str:
    """The project's embedded tiny model (``paths.default_model_dir``), whatever the cwd."""
    from .paths import default_model_dir as _default

    return str(_default())


def _cmd_init_random(a) -> int:
    from .checkpoint import config_from_arg, init_state_dict, write_checkpoint

    cfg = config_from_arg(a.config)
    t = time.perf_counter()
    sd = init_state_dict(cfg, seed=a.seed, dtype="float32")
    out = write_checkpoint(cfg, sd, a.out, fmt=a.format, dtype=a.dtype)
    print(f"wrote {cfg.name} ({cfg.num_params() / 1e6:.1f}M params, {a.dtype}, {a.format}) to {out} "
          f"in {time.perf_counter() - t:.1f}s")
    return 0


def _cmd_info(a) -> int:
    import numpy as np

    from .checkpoint import check_finite, read_state_dict, resolve_model_dir

    d = resolve_model_dir(a.model)
    cfg, sd, fmt = read_state_dict(d, check_finite=False)  # reported below, not refused
    nonfinite = check_finite({k: v for k, v in sd.items() if not (k == "lm_head.weight" and cfg.tie_embeddings)})
    dtypes = sorted({str(np.asarray(v).dtype) for v in sd.values()})
    files = [f for f in ("pytorch_model.bin", "model.safetensors") if (d / f).exists()]
    info = {
        "path": str(d), "format": fmt, "weights_file": files[0] if files else None,
        "file_bytes": sum((d / f).stat().st_size for f in files),
        "stored_dtypes": dtypes,
        "num_params": cfg.num_params(),  # unique parameters (a tied LM head counted once)
        "config": {k: getattr(cfg, k) for k in (
            "d_model", "n_layer", "vocab_size", "padded_vocab_size", "d_state", "d_conv", "expand", "headdim",
            "ssm_dim", "nheads", "ngroups", "chunk_size", "dt_limit", "tie_embeddings", "residual_in_fp32")},
    }
    info["nonfinite_values"] = {"total": int(sum(nonfinite.values())), "tensors": nonfinite}
    info["param_bytes"] = {dt: info["num_params"] * s for dt, s in (("float32", 4), ("bfloat16", 2))}
    if a.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        print(f"{info['path']}  [{fmt}, {info['weights_file']}, {info['file_bytes'] / 1e6:.1f} MB on disk, "
              f"stored {', '.join(dtypes)}]")
        print(f"params: {info['num_params']:,} ({info['num_params'] / 1e6:.1f}M; "
              f"{info['param_bytes']['float32'] / 1e6:.0f} MB fp32, "
              f"{info['param_bytes']['bfloat16'] / 1e6:.0f} MB bf16)")
        for k, v in info["config"].items():
            print(f"  {k:18s} {v}")
        if nonfinite:
            print(f"WARNING: {sum(nonfinite.values())} non-finite (NaN/Inf) weight values in {len(nonfinite)} "
                  f"tensor(s): " + ", ".join(f"{k} ({n})" for k, n in sorted(nonfinite.items())[:8]))
        else:
            print("weights: all finite")
    return 0


def _cmd_convert(a) -> int:
    from .checkpoint import convert

    out = convert(a.src, a.dst, fmt=a.format, dtype=a.dtype, allow_nonfinite=a.allow_nonfinite)
    print(f"wrote {a.format} checkpoint to {out}")
    return 0


def _parse_ids(s: str) -> list[int]:
    from .generate import GenerationError

    try:
        return [int(x) for x in s.replace(" ", "").split(",") if x != ""]
    except ValueError:
        raise GenerationError(f"--prompt-ids must be comma-separated integers, got {s[:200]!r}") from None


def _sampling(a, SamplingConfig):
    """Greedy without sampling flags, and for --temperature 0 (as in HF transformers and vLLM)."""
    if a.temperature == 0 or (a.temperature is None and a.top_k is None and a.top_p is None):
        return SamplingConfig(greedy=True)
    return SamplingConfig(greedy=False, temperature=1.0 if a.temperature is None else a.temperature,
                          top_k=0 if a.top_k is None else a.top_k, top_p=1.0 if a.top_p is None else a.top_p)


def _cmd_generate(a) -> int:
    import jax

    from .checkpoint import resolve_model_dir
    from .generate import Generator, SamplingConfig
    from .loading import load_pretrained
    from .sharding import describe_mesh, initialize_distributed, is_primary, make_mesh
    from .tokenizer import TokenizerError, load_tokenizer

    initialize_distributed(a.coordinator_address, a.num_processes, a.process_id)
    if a.precision:
        jax.config.update("jax_default_matmul_precision", a.precision)
    if a.model is None:
        a.model = default_model_dir()
        if not Path(a.model).is_dir():
            print(f"error: no --model given and the embedded model is not at {a.model} (it ships with a source "
                  f"checkout, not with the wheel); pass --model DIR or a hub id", file=sys.stderr)
            return 2
    model_dir = resolve_model_dir(a.model)
    mesh = make_mesh(a.mesh)
    tok = None
    if a.prompt is not None or (a.tokenizer is not None and not a.no_decode):
        tok = load_tokenizer(a.tokenizer, model_dir=model_dir)
    elif not a.no_decode:  # --prompt-ids: decode only if a tokenizer is found locally; never wait for the hub
        try:
            tok = load_tokenizer(None, model_dir=model_dir, allow_hub=False)
        except TokenizerError:
            tok = None
    if a.prompt is not None:
        ids = tok.encode(a.prompt)
    else:
        ids = _parse_ids(a.prompt_ids)
    model = load_pretrained(model_dir, dtype=a.dtype, mesh=mesh, allow_nonfinite=a.allow_nonfinite,
                            state_dtype=a.state_dtype)
    sampling = _sampling(a, SamplingConfig)
    gen = Generator(model, eos_id=None if a.ignore_eos else 0)
    if a.stream and not a.json:
        text_so_far = []
        if tok is not None:
            sys.stdout.write(a.prompt if a.prompt is not None else tok.decode(ids))
        for chunk in gen.stream(ids, a.max_new_tokens, chunk=a.stream_chunk, sampling=sampling, seed=a.seed):
            text_so_far.extend(chunk)
            sys.stdout.write(tok.decode(chunk) if tok is not None else " ".join(map(str, chunk)) + " ")
            sys.stdout.flush()
        sys.stdout.write("\n")
        return 0
    compile_s = gen.warmup([ids], a.max_new_tokens, sampling)
    res = gen.generate([ids], a.max_new_tokens, sampling, seed=a.seed)
    new = res.sequences()[0]
    text = tok.decode(new) if tok is not None else None
    if not is_primary():
        return 0
    if a.json:
        print(json.dumps({"ids": new, "text": text, "prompt_ids": ids, "prefill_s": res.prefill_s,
                          "decode_tok_s": res.decode_tok_s, "decode_s": res.decode_s,
                          "compile_s": compile_s, "decode_steps": res.decode_steps,
                          "policy": model.policy.as_dict(), "model": str(a.model), "mesh": describe_mesh(mesh),
                          "tokenizer": None if tok is None else {"origin": tok.origin, "source": tok.source}}))
    else:
        print((a.prompt if a.prompt is not None else (tok.decode(ids) if tok else ids)), end="")
        print(text if text is not None else new)
    return 0


def _fmt_bytes(x) -> str:
    return "n/a" if x is None else f"{x / 2**30:.3g} GiB" if x >= 2**30 else f"{x / 2**20:.3g} MiB"


def _cmd_compile(a) -> int:
    from .compile import compile_program

    r = compile_program(a.model, target=a.target, program=a.program, batch=a.batch, length=a.length,
                        new_tokens=a.new_tokens, last_only=a.last_only, dtype=a.dtype, mesh=a.mesh,
                        topology=a.topology, precision=a.precision, state_dtype=a.state_dtype)
    if a.json:
        print(json.dumps(r, default=str))
        return 0
    logits = "last-only" if r["last_only"] else "full"
    what = {"prefill": f"prefill b={r['batch']} L={r['length']} ({logits} logits)",
            "step": f"decode step b={r['batch']}",
            "generate": f"decode loop b={r['batch']} new_tokens={r['new_tokens']}"}[r["program"]]
    pol = r["policy"]
    print(f"{r['status']}: {r['config']} {what}, {r['dtype']} (matmul precision {r['precision']}, "
          f"SSM state {pol['state_dtype']}), "
          f"scan chunk {pol['scan_chunk_size']}, prefill block {pol['prefill_block']}")
    print(f"  target      {r['target']}: {r['device_kind']}, topology {r['topology']}, program on "
          f"{r['num_devices']} of {r['topology_devices']} devices, mesh {r['mesh_shape']}")
    v = r["versions"]
    comp = {"tpu": f"libtpu {v['libtpu']}", "cuda": f"jax-cuda12-pjrt {v['jax_cuda12_pjrt']}"}.get(r["platform"],
                                                                                                 "XLA:CPU")
    print(f"  compile     {r['compile_s']:.1f} s (lowering {r['lower_s']:.1f} s); jax {v['jax']}, {comp}")
    print(f"  cost        {r['flops'] / 1e9:.4g} GFLOP, {r['bytes_accessed'] / 1e9:.4g} GB accessed (XLA), "
          f"{r['transcendentals'] / 1e6:.4g} M transcendentals ({r['cost_note']})")
    print(f"  memory      arguments {_fmt_bytes(r.get('argument_bytes'))}, "
          f"outputs {_fmt_bytes(r.get('output_bytes'))}, "
          f"temporaries {_fmt_bytes(r.get('temp_bytes'))}, aliased {_fmt_bytes(r.get('alias_bytes'))}, "
          f"code {_fmt_bytes(r.get('generated_code_bytes'))} per device")
    if r["hbm_bytes_per_device"]:
        print(f"  HBM         {_fmt_bytes(r['bytes_needed_per_device'])} of {_fmt_bytes(r['hbm_bytes_per_device'])} "
              f"per device: {'fits' if r['fits'] else 'DOES NOT FIT'}")
    print(f"  custom calls {', '.join(r['custom_calls']) or 'none'} in the program "
          f"(the compiler adds: {', '.join(r['compiler_custom_calls']) or 'none'})")
    ro = r["roofline"]
    if ro:
        x = ro["xla"]
        print(f"  roofline    min time {ro['min_time_s'] * 1e3:.4g} ms ({ro['bound']}-bound, bytes = arguments + "
              f"outputs): <= {ro['bound_tokens_per_s']:,.0f} tokens/s, MFU <= {ro['bound_mfu']:.1%}, "
              f"HBU <= {ro['bound_hbu']:.1%}")
        print(f"              with XLA's byte count: {x['min_time_s'] * 1e3:.4g} ms ({x['bound']}-bound), "
              f"<= {x['bound_tokens_per_s']:,.0f} tokens/s, <= {x['bound_tflops']:.4g} TFLOP/s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mamba2-jax", description="Pure-JAX Mamba-2 inference")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("init-random", help="write a randomly initialised checkpoint (mamba_ssm init)")
    s.add_argument("--config", required=True, help="preset name (e.g. mamba2-130m, tiny) or path to config.json")
    s.add_argument("--out", required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--dtype", default="float16", choices=["float16", "float32", "bfloat16"])
    s.add_argument("--format", default="state-spaces", choices=["state-spaces", "hf"])
    s.set_defaults(fn=_cmd_init_random)

    s = sub.add_parser("info", help="describe a checkpoint: config, parameter count, dtype, bytes")
    s.add_argument("model")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=_cmd_info)

    s = sub.add_parser("convert", help="convert between state-spaces and HF transformers layouts")
    s.add_argument("src")
    s.add_argument("dst")
    s.add_argument("--format", required=True, choices=["state-spaces", "hf"])
    s.add_argument("--dtype", default=None, choices=[None, "float16", "float32"])
    s.add_argument("--allow-nonfinite", action="store_true",
                   help="load weights holding NaN or Inf (refused by default)")
    s.set_defaults(fn=_cmd_convert)

    s = sub.add_parser("generate", help="generate text (compiled on-device decode loop)")
    s.add_argument("--model", default=None,
                   help="checkpoint dir or hub id (default: the embedded tiny model, checkpoints/mamba2-tiny-wikitext)")
    s.add_argument("--tokenizer", default=None,
                   help="dir with tokenizer.json or hub id (default: the model dir's tokenizer.json, then "
                        "$MAMBA2_JAX_DATA/gpt-neox-20b, then the checkout's ../shared/data, then the hub; "
                        "with --prompt-ids only local files are tried)")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--prompt")
    g.add_argument("--prompt-ids")
    s.add_argument("--max-new-tokens", type=int, default=64)
    s.add_argument("--greedy", action="store_true", help="greedy decoding (the default without sampling flags)")
    s.add_argument("--temperature", type=float, help="0 means greedy (as in HF transformers and vLLM)")
    s.add_argument("--top-k", type=int)
    s.add_argument("--top-p", type=float)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    s.add_argument("--precision", default=None, choices=[None, "highest", "default", "high"])
    s.add_argument("--state-dtype", default="float32", choices=list(STATE_DTYPES), help=STATE_DTYPE_HELP)
    s.add_argument("--ignore-eos", action="store_true")
    s.add_argument("--allow-nonfinite", action="store_true",
                   help="load weights holding NaN or Inf (refused by default)")
    s.add_argument("--no-decode", action="store_true", help="with --prompt-ids: print ids, do not look for a tokenizer")
    s.add_argument("--stream", action="store_true")
    s.add_argument("--stream-chunk", type=int, default=8)
    s.add_argument("--json", action="store_true")
    s.add_argument("--mesh", default=None, help="shard over devices, e.g. 'data=2,model=4' (see docs/sharding.md)")
    s.add_argument("--coordinator-address", default=None,
                   help="multi-process: host:port of process 0 (default $JAX_COORDINATOR_ADDRESS)")
    s.add_argument("--num-processes", type=int, default=None, help="multi-process: default $JAX_NUM_PROCESSES")
    s.add_argument("--process-id", type=int, default=None, help="multi-process: default $JAX_PROCESS_ID")
    s.set_defaults(fn=_cmd_generate)

    s = sub.add_parser("compile", help="compile one program for a target (TPU without a TPU) from shapes only: "
                                       "cost, memory, HBM fit, roofline")
    s.add_argument("--model", default=None,
                   help="checkpoint dir, config.json, preset (e.g. mamba2-2.7b) or hub id "
                        "(default: the embedded model)")
    s.add_argument("--target", default="tpu-v6e",
                   help="tpu-v6e | tpu-v5e | tpu-v5p | tpu-v4 | cpu (TPU targets need `make install-tpu`)")
    s.add_argument("--program", default="prefill", choices=["prefill", "step", "generate"])
    s.add_argument("--batch", type=int, default=1)
    s.add_argument("--length", type=int, default=2048, help="prefill: prompt length")
    s.add_argument("--new-tokens", type=int, default=128, help="generate: tokens of the decode loop")
    lo = s.add_mutually_exclusive_group()
    lo.add_argument("--last-only", dest="last_only", action="store_true", default=True,
                    help="prefill returns the last position's logits (default)")
    lo.add_argument("--full-logits", dest="last_only", action="store_false", help="prefill returns (b, L, V) logits")
    s.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    s.add_argument("--state-dtype", default="float32", choices=list(STATE_DTYPES), help=STATE_DTYPE_HELP)
    s.add_argument("--precision", default=None, choices=[None, "highest", "default", "high"],
                   help="matmul precision (default: the dtype's policy: float32 highest, 16-bit default)")
    s.add_argument("--mesh", default=None, help="e.g. 'data=1,model=4' (default: one device)")
    s.add_argument("--topology", default=None, help="TPU topology, e.g. v6e:2x4 (default: the smallest accepted)")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(fn=_cmd_compile)

    s = sub.add_parser("serve", help="an OpenAI-compatible server: continuous batching over fixed state slots, "
                                     "exact prefix-state reuse (docs/serving.md)")
    s.add_argument("--model", default=None,
                   help="checkpoint dir or hub id (default: the embedded tiny model, checkpoints/mamba2-tiny-wikitext)")
    s.add_argument("--tokenizer", default=None, help="dir with tokenizer.json (default: as for generate)")
    s.add_argument("--served-model-name", default=None, help="the 'model' name of the API (default: the dir name)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--slots", type=int, default=8, help="state slots: sequences decoded together")
    s.add_argument("--prefix-cache-bytes", default="1GiB", help="prefix-state cache budget (0: off), e.g. 512MiB")
    s.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    s.add_argument("--state-dtype", default="float32", choices=list(STATE_DTYPES), help=STATE_DTYPE_HELP)
    s.add_argument("--mesh", default=None, help="shard over this host's devices, e.g. 'data=2,model=1' "
                                                "(slots on 'data'; see docs/sharding.md)")
    s.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (or $MAMBA2_JAX_API_KEY)")
    s.add_argument("--max-queue", type=int, default=256, help="waiting requests before 429")
    s.add_argument("--decode-steps", type=int, default=4, help="decode steps per dispatch")
    s.add_argument("--prefill-chunk", type=int, default=256,
                   help="prompt tokens per prefill call (a power of two; also the prefix-cache block)")
    s.add_argument("--prefill-budget", type=int, default=1024,
                   help="prompt tokens per scheduler iteration (several prefill calls), about the most "
                        "decoding rows wait for between dispatches")
    s.add_argument("--max-tokens-limit", type=int, default=1 << 16, help="largest max_tokens a request may ask")
    s.add_argument("--graceful-timeout", type=float, default=60.0,
                   help="seconds SIGTERM waits for in-flight requests")
    s.add_argument("--log-level", default="warning")
    s.add_argument("--coordinator-address", default=None, help=argparse.SUPPRESS)
    s.add_argument("--num-processes", type=int, default=None, help=argparse.SUPPRESS)
    s.add_argument("--process-id", type=int, default=None, help=argparse.SUPPRESS)
    s.set_defaults(fn=_cmd_serve)
    return p


def _cmd_serve(a) -> int:
    if a.model is None:
        a.model = default_model_dir()
    for name in ("slots", "max_queue", "decode_steps", "prefill_chunk", "prefill_budget", "max_tokens_limit"):
        v = getattr(a, name)
        if v is None:
            continue
        if v < (0 if name == "max_queue" else 1):
            print(f"error: --{name.replace('_', '-')} must be >= 1, got {v}", file=sys.stderr)
            return 2
    if a.prefill_chunk & (a.prefill_chunk - 1):
        print(f"error: --prefill-chunk must be a power of two, got {a.prefill_chunk}", file=sys.stderr)
        return 2
    from .serve.server import serve

    return serve(a)


# the core's input errors, reported as "error: ..." with exit status 2 (module, class)
_INPUT_ERRORS = (("checkpoint", "CheckpointError"), ("compile", "CompileError"), ("config", "ConfigError"),
                 ("generate", "GenerationError"), ("tokenizer", "TokenizerError"), ("sharding", "MeshError"))


def _input_error(e: BaseException) -> bool:
    """Whether ``e`` is one of the core's input errors.  Only a module the command imported can have
    raised its error, so this looks in ``sys.modules`` and imports nothing: importing ``generate`` or
    ``sharding`` for their error classes would import JAX into the JAX-free commands (docs/design.md)."""
    for mod, cls in _INPUT_ERRORS:
        m = sys.modules.get(f"{__package__}.{mod}")
        if m is not None and isinstance(e, getattr(m, cls)):
            return True
    return False


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "greedy", False) and any(x is not None for x in (args.temperature, args.top_k, args.top_p)):
        print("error: --greedy cannot be combined with --temperature/--top-k/--top-p", file=sys.stderr)
        return 2
    if getattr(args, "cmd", None) == "compile" and args.model is None:
        args.model = default_model_dir()
    try:
        return args.fn(args)
    except Exception as e:
        if _input_error(e):
            print(f"error: {e}", file=sys.stderr)
            return 2
        if isinstance(e, OSError):  # disk full, permission denied: not the input's fault, but no traceback either
            print(f"error: {e}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
