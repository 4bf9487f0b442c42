"""Write a golden file for one backend, checkpoint and prompt set.

    python -m reference.golden --backend {mamba_ssm_ref_cpu,transformers,mamba_ssm_triton,llama_cpp} \
        --model DIR --prompts PROMPTS.json --out OUT.npz [--n-new 64] [--device cpu|cuda]
        [--tf32 on|off] [--triton-f32 default|ieee] [--cuda-graph auto|on|off] [--threads N]

Each backend must run in its own process (see reference/README.md): this module imports only
the chosen backend.  The prompts file holds token ids (the parity experiment tokenizes them with
the GPT-NeoX tokenizer); see ``reference.common`` for the golden layout.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from mamba2_jax.eval.golden import GoldenWriter

from .common import BACKENDS, ReferenceError_, load_prompts, run_cli, step_record, torch_provenance


def build_parser(prog: str = "python -m reference.golden") -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    ap.add_argument("--backend", required=True, choices=BACKENDS)
    ap.add_argument("--model", required=True, help="checkpoint directory (state-spaces or HF layout)")
    ap.add_argument("--device", default=None,
                    help="cpu | cuda (default: cpu; for mamba_ssm_triton cuda if available, else cpu = the Triton "
                         "interpreter)")
    ap.add_argument("--tf32", choices=("on", "off"), default="off",
                    help="mamba_ssm_triton: torch cuBLAS/cuDNN TF32 flags (default off)")
    ap.add_argument("--triton-f32", choices=("default", "ieee"), default="default",
                    help="mamba_ssm_triton: 'ieee' exports TRITON_F32_DEFAULT=ieee before Triton loads")
    ap.add_argument("--cuda-graph", choices=("auto", "on", "off"), default="auto",
                    help="mamba_ssm_triton: decode with CUDA graphs (generate(cg=True)); auto: on for CUDA, "
                         "off on CPU")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads on CPU")
    return ap


def add_golden_args(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    ap.add_argument("--prompts", required=True, help="JSON prompts file with input_ids")
    ap.add_argument("--out", required=True, help="output .npz (a .json with the metadata is written beside it)")
    ap.add_argument("--n-new", type=int, default=64, help="greedy tokens per prompt (default 64)")
    return ap


def validate(args: argparse.Namespace) -> argparse.Namespace:
    """Check backend/device combinations; fills in the default device.  Raises ReferenceError_."""
    if args.device is None:
        args.device = "cpu"
        if args.backend == "mamba_ssm_triton":
            import torch

            args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device not in ("cpu", "cuda") and not args.device.startswith("cuda:"):
        raise ReferenceError_(f"--device {args.device!r}: expected cpu or cuda[:N]")
    if args.backend == "mamba_ssm_triton" and args.device == "cpu" and (
            args.tf32 == "on" or args.triton_f32 != "default" or args.cuda_graph == "on"):
        raise ReferenceError_("--tf32 on / --triton-f32 ieee / --cuda-graph on need --device cuda (on CPU "
                              "mamba_ssm_triton runs the Triton interpreter)")
    if args.backend in ("mamba_ssm_ref_cpu", "llama_cpp") and args.device != "cpu":
        raise ReferenceError_(f"--backend {args.backend} is a CPU reference: --device must be cpu")
    if args.backend != "mamba_ssm_triton" and (args.tf32 == "on" or args.triton_f32 != "default"):
        raise ReferenceError_("--tf32 / --triton-f32 only apply to --backend mamba_ssm_triton")
    if getattr(args, "n_new", 1) < 1:
        raise ReferenceError_("--n-new must be >= 1")
    if not Path(args.model).is_dir():
        raise ReferenceError_(f"--model {args.model}: not a directory")
    return args


def load_backend(args: argparse.Namespace):
    """Import only the chosen backend and load the model → (adapter, backend metadata)."""
    import torch

    torch.set_float32_matmul_precision("highest")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.backend == "mamba_ssm_ref_cpu":
        from . import ref_cpu

        model, meta = ref_cpu.load(args.model, args.device)
        meta = {**meta, "functions": ref_cpu.FUNCTIONS, "shims": ref_cpu.SHIMS}
    elif args.backend == "transformers":
        from . import hf_backend

        model, meta = hf_backend.load(args.model, args.device)
    elif args.backend == "llama_cpp":
        from . import llama_backend

        model, meta = llama_backend.load(args.model, args.device, threads=args.threads)
    else:
        from . import triton_backend

        cuda_graph = args.cuda_graph == "on" or (args.cuda_graph == "auto" and args.device.startswith("cuda"))
        model, meta = triton_backend.load(args.model, args.device, tf32=args.tf32 == "on",
                                          triton_f32=args.triton_f32, cuda_graph=cuda_graph)
    return model, meta


def greedy_steps(model, ids, n_new: int, first_logits, cache):
    """Plain greedy: step 0 from the prefill logits, then the backend's recurrent step (the cache
    returned by ``prefill`` is advanced in place).  A backend with its own ``greedy`` uses that."""
    import torch

    if hasattr(model, "greedy"):
        return [step_record(r) for r in model.greedy(ids, n_new)]
    steps = [step_record(first_logits)]
    for _ in range(n_new - 1):
        tok = torch.tensor([steps[-1]["token"]], dtype=torch.long, device=ids.device)
        steps.append(step_record(model.step(tok, cache)[0]))
    return steps


def timing_summary(model, prompts, prefill_s, greedy_s, n_new: int) -> dict:
    """Seconds per prefill token (the hidden-state forward, summed over prompts / prompt tokens) and
    per decode step (a backend's own per-step times if it has them, else the greedy loop's time over
    its n_new - 1 recurrent steps; step 0 reuses the prefill logits)."""
    n_tok = sum(len(p["input_ids"]) for p in prompts)
    out = {"prefill_seconds": [round(x, 4) for x in prefill_s], "prefill_tokens": n_tok,
           "prefill_seconds_per_token": sum(prefill_s) / n_tok if n_tok else None,
           "greedy_seconds": [round(x, 4) for x in greedy_s]}
    if hasattr(model, "timing_summary"):
        own = model.timing_summary()
        out.update(own)
        out["decode_seconds_per_step"] = own.get("decode_step_seconds_median")
    else:
        steps = len(prompts) * (n_new - 1)
        out["decode_seconds_per_step"] = sum(greedy_s) / steps if steps else None
        out["timer"] = "time.perf_counter around prefill and around the greedy step loop"
    return out


def run(args: argparse.Namespace) -> Path:
    import torch

    t0 = time.time()
    model, bmeta = load_backend(args)
    prompts = load_prompts(args.prompts)
    w = GoldenWriter()
    timings, prefill_s, greedy_s = [], [], []
    for i, p in enumerate(prompts):
        t1 = time.time()
        ids = torch.tensor([p["input_ids"]], dtype=torch.long, device=args.device)
        t2 = time.perf_counter()
        logits, hidden, cache = model.prefill(ids)
        prefill_s.append(time.perf_counter() - t2)
        t2 = time.perf_counter()
        steps = greedy_steps(model, ids, args.n_new, logits[0, -1], cache)
        greedy_s.append(time.perf_counter() - t2)
        w.add(i, p["id"], p["input_ids"], None if hidden is None else hidden[:, 0], logits[0], steps)
        timings.append(round(time.time() - t1, 3))
        print(f"[{args.backend}] prompt {p['id']}: T={len(p['input_ids'])} {timings[-1]:.1f}s", file=sys.stderr)
    meta = torch_provenance(bmeta.get("device_label", args.device), backend=args.backend,
                            model_dir=str(Path(args.model).resolve()),
                            prompts_file=str(args.prompts), n_new=args.n_new, backend_meta=bmeta,
                            dtype="float32", seconds_per_prompt=timings, seconds_total=round(time.time() - t0, 2),
                            timing=timing_summary(model, prompts, prefill_s, greedy_s, args.n_new))
    return w.write(args.out, meta)


def main(argv=None) -> int:
    ap = add_golden_args(build_parser())
    args = ap.parse_args(argv)

    def body():
        validate(args)
        return run(args)

    return run_cli(args, body)


if __name__ == "__main__":
    sys.exit(main())
