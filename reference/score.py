"""Reference log-likelihood scoring of token windows.

    python -m reference.score --backend {mamba_ssm_ref_cpu,transformers,mamba_ssm_triton} \
        --model DIR --windows W.npz --out OUT.npz [--batch N] [--device cpu|cuda] [--threads N]

``W.npz``: ``input_ids`` (n, T) int right-padded, ``lengths`` (n,), ``score_from`` (n,).
For window i, every target t in [score_from_i, lengths_i) is scored: log p(ids[t] | ids[:t]) from
the fp32 logits at position t-1 (so score_from_i >= 1).  The log-softmax of those fp32 logits is
taken in float64 and summed in float64.

``OUT.npz``: ``loglik`` (n,) float64 sums, ``n_scored`` (n,) int64, and ``meta_json`` (a JSON
string: backend, versions, device, dtype, timings); the same JSON is written to OUT.json.

Rows are run in batches of equal padded length T (right padding cannot change the logits of
earlier positions: every layer is causal).  ``--batch`` defaults to as many rows as keep the
(batch, T, V) fp32 logits under about 1 GiB.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from .common import ReferenceError_, run_cli, torch_provenance
from .golden import build_parser, load_backend, validate


def read_windows(path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not Path(path).is_file():
        raise ReferenceError_(f"--windows {path}: no such file")
    with np.load(path, allow_pickle=False) as z:
        missing = {"input_ids", "lengths", "score_from"} - set(z.files)
        if missing:
            raise ReferenceError_(f"{path}: missing arrays {sorted(missing)}")
        ids, lengths, score_from = z["input_ids"], z["lengths"], z["score_from"]
    if ids.ndim != 2 or lengths.shape != (ids.shape[0],) or score_from.shape != (ids.shape[0],):
        raise ReferenceError_(f"{path}: expected input_ids (n, T), lengths (n,), score_from (n,); got "
                              f"{ids.shape}, {lengths.shape}, {score_from.shape}")
    if np.any(lengths > ids.shape[1]) or np.any(lengths < 1):
        raise ReferenceError_(f"{path}: lengths must lie in [1, T={ids.shape[1]}]")
    if np.any(score_from < 1) or np.any(score_from > lengths):
        raise ReferenceError_(f"{path}: score_from must lie in [1, lengths] (position 0 has no context)")
    return ids.astype(np.int64), lengths.astype(np.int64), score_from.astype(np.int64)


def score_batch(logits, ids, lengths, score_from) -> tuple[np.ndarray, np.ndarray]:
    """logits (b, T, V) torch fp32 → (loglik float64 (b,), n_scored (b,))."""
    import torch

    b = logits.shape[0]
    ll = np.zeros(b, np.float64)
    ns = np.zeros(b, np.int64)
    for r in range(b):
        s, e = int(score_from[r]), int(lengths[r])
        if e <= s:
            continue
        lp = torch.log_softmax(logits[r, s - 1:e - 1].double(), dim=-1)
        tgt = torch.as_tensor(ids[r, s:e], device=lp.device)
        ll[r] = float(lp.gather(-1, tgt[:, None]).sum())
        ns[r] = e - s
    return ll, ns


def run(args) -> Path:
    import torch

    t0 = time.time()
    ids, lengths, score_from = read_windows(args.windows)
    model, bmeta = load_backend(args)
    n, T = ids.shape
    V = None
    loglik = np.zeros(n, np.float64)
    n_scored = np.zeros(n, np.int64)
    batch = args.batch
    t_fwd, n_fwd_tokens = 0.0, 0
    i = 0
    while i < n:
        if batch is None:
            # probe the vocabulary size with the first row, then size the batches
            probe = model.logits(torch.as_tensor(ids[:1, : min(T, 8)], device=args.device))
            V = probe.shape[-1]
            batch = max(1, int((1 << 30) // (T * V * 4)))
        j = min(n, i + batch)
        Tb = int(lengths[i:j].max())  # trim padding shared by the whole batch
        t1 = time.perf_counter()
        logits = model.logits(torch.as_tensor(ids[i:j, :Tb], device=args.device))
        if logits.is_cuda:
            torch.cuda.synchronize()
        t_fwd += time.perf_counter() - t1
        n_fwd_tokens += (j - i) * Tb
        V = logits.shape[-1]
        ll, ns = score_batch(logits, ids[i:j], lengths[i:j], score_from[i:j])
        loglik[i:j], n_scored[i:j] = ll, ns
        print(f"[{args.backend}] windows {i}..{j - 1} of {n}", file=sys.stderr)
        i = j
    meta = torch_provenance(bmeta.get("device_label", args.device), backend=args.backend,
                            model_dir=str(Path(args.model).resolve()),
                            windows_file=str(args.windows), n_windows=int(n), T=int(T), vocab=V, batch=batch,
                            dtype="float32", logsoftmax_dtype="float64", backend_meta=bmeta,
                            total_scored=int(n_scored.sum()), total_loglik=float(loglik.sum()),
                            seconds_forward=round(t_fwd, 3), forward_tokens=n_fwd_tokens,
                            seconds_per_forward_token=t_fwd / n_fwd_tokens if n_fwd_tokens else None,
                            seconds_total=round(time.time() - t0, 2))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(meta, indent=2, default=str)
    np.savez(out, loglik=loglik, n_scored=n_scored, meta_json=np.array(text))
    out.with_suffix(".json").write_text(text)
    return out


def main(argv=None) -> int:
    ap = build_parser("python -m reference.score")
    ap.add_argument("--windows", required=True, help="W.npz with input_ids, lengths, score_from")
    ap.add_argument("--out", required=True, help="OUT.npz")
    ap.add_argument("--batch", type=int, default=None, help="rows per forward (default: ~1 GiB of logits)")
    args = ap.parse_args(argv)

    def body():
        validate(args)
        if args.batch is not None and args.batch < 1:
            raise ReferenceError_("--batch must be >= 1")
        return run(args)

    return run_cli(args, body)


if __name__ == "__main__":
    sys.exit(main())
