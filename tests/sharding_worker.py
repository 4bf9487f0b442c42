"""Subprocess side of tests/test_sharding.py (JAX must see several devices, which the pytest
process cannot: it initialised JAX with one CPU device).

    python tests/sharding_worker.py meshes       # 8 simulated CPU devices (XLA_FLAGS set by the caller)
    python tests/sharding_worker.py multihost --process-id I --num-processes N --coordinator HOST:PORT

Each prints one JSON line (prefixed ``RESULT``) that the test checks.  ``reference()`` is the
single-device computation, imported by the test itself for the multi-process comparison.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

PROMPTS = [[5, 17, 99, 3, 243], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [42]]
N_NEW = 12
BATCH = 8  # logits check batch (divides by every data axis tested)


def build(preset: str):
    """Tiny random weights (mamba2_jax.eval.oracle.perturbed_sd).  Their greedy continuations of PROMPTS
    are diverse and no step is a near-tie: the top-2 logit gap is >= 1.6e-3 of the largest logit
    (measured), far above the ~1e-6 that sharding changes in the logits."""
    from mamba2_jax.config import get_preset
    from mamba2_jax.eval.oracle import perturbed_sd

    cfg = get_preset(preset)
    return cfg, perturbed_sd(cfg, seed=4)


def windows(cfg):
    from mamba2_jax.eval import windows as ppl

    rng = np.random.default_rng(1)
    seqs = [(rng.integers(2, cfg.vocab_size, n).tolist(), f, i)
            for i, (n, f) in enumerate([(33, 1), (20, 3), (33, 10), (7, 1), (30, 2), (12, 5), (33, 1), (25, 4),
                                        (9, 2), (31, 30)])]
    return ppl.pack_windows(seqs, {"protocol": "test"})


def ids_batch(cfg):
    return np.random.default_rng(2).integers(2, cfg.vocab_size, (BATCH, 37)).astype(np.int32)


def run_all(cfg, sd, mesh, logits=True):
    """(logits of a prefill, greedy tokens, per-window log-likelihoods) for ``mesh`` (None: one device)."""
    import jax

    from mamba2_jax.eval import windows as ppl
    from mamba2_jax.eval.scorer import JaxScorer
    from mamba2_jax.generate import Generator
    from mamba2_jax.loading import model_from_state_dict
    from mamba2_jax.sharding import put_batch, to_host

    model = model_from_state_dict(cfg, sd, mesh=mesh)
    out = {}
    if logits:
        ids = ids_batch(cfg)
        x = ids if mesh is None else put_batch(ids, mesh)
        from flax import nnx

        graphdef, state = nnx.split(model)
        lg, cache = jax.jit(lambda s, x: nnx.merge(graphdef, s).prefill(x))(state, x)
        out["logits"] = to_host(lg)
        out["cache_specs"] = {"ssm": _spec(cache.ssm[0]), "conv": _spec(cache.conv[0]),
                              "seqlen": _spec(cache.seqlen)} if mesh is not None else None
    out["tokens"] = Generator(model, eos_id=None).generate(PROMPTS, N_NEW).tokens
    w = windows(cfg)
    sc = JaxScorer(model, batch_size=4, bucket=32, logits_chunk=16).score(w, progress=False)
    out["loglik"] = sc.loglik
    out["ppl"] = ppl.aggregate(w, sc)["token_perplexity"]
    return out, model


def reference(preset: str, logits: bool = True):
    cfg, sd = build(preset)
    out, _ = run_all(cfg, sd, None, logits=logits)
    return out


def _spec(x) -> list:
    """An array's PartitionSpec as a list, trailing unsharded axes dropped (P('data',) == P('data', None))."""
    sp = list(x.sharding.spec)
    while sp and sp[-1] is None:
        sp.pop()
    return sp


def _rel(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


def _cli_tokens(model_dir: str, mesh: str) -> list[int]:
    """``mamba2-jax generate --mesh ...`` on the checkpoint in ``model_dir`` (greedy, EOS ignored)."""
    import contextlib
    import io

    from mamba2_jax.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["generate", "--model", model_dir, "--prompt-ids", ",".join(map(str, PROMPTS[0])), "--no-decode",
                   "--ignore-eos", "--json", "--max-new-tokens", str(N_NEW), "--mesh", mesh])
    assert rc == 0
    out = json.loads(buf.getvalue().strip().splitlines()[-1])
    assert out["mesh"]["data"] * out["mesh"]["model"] == 8
    return out["ids"]


def _extras(cfg, sd, model, ref_tokens) -> dict:
    """On the data=2,model=4 mesh (``model``: loaded on it): the fused checkpoint layout comes back
    exactly; Generator(mesh=...) shards a plain model; streaming under a mesh equals generate; the CLI."""
    import tempfile

    from mamba2_jax.checkpoint import write_checkpoint
    from mamba2_jax.generate import Generator
    from mamba2_jax.loading import load_pretrained, model_from_state_dict, state_dict_from_model
    from mamba2_jax.sharding import make_mesh

    r = {}
    back = state_dict_from_model(model)
    r["state_dict_roundtrip"] = all(np.array_equal(back[k], np.asarray(v, np.float32)) for k, v in sd.items())
    # the same structure and mesh as ``model``: this runs the programs run_all compiled
    g = Generator(model_from_state_dict(cfg, sd), eos_id=None, mesh="data=2,model=4")
    r["generator_mesh_tokens_equal"] = bool(np.array_equal(g.generate(PROMPTS, N_NEW).tokens, ref_tokens))
    with tempfile.TemporaryDirectory() as d:
        write_checkpoint(cfg, sd, d, weights="safetensors")  # state-spaces config; no torch import for the .bin
        # streaming on the model the CLI loads from this checkpoint (load_pretrained records its path, so
        # only a model of this very checkpoint has the CLI's structure): the CLI below reuses the
        # stream's compiled prefill (the same batch-of-one prompt)
        s = Generator(load_pretrained(d, mesh=make_mesh("data=2,model=4")), eos_id=None)
        r["stream_equal"] = sum(s.stream(PROMPTS[0], N_NEW, chunk=5), []) == ref_tokens[0].tolist()
        r["cli_tokens_equal"] = _cli_tokens(d, "data=2,model=4") == ref_tokens[0].tolist()
    return r


def cmd_meshes() -> dict:
    import jax

    from mamba2_jax.loading import model_from_state_dict
    from mamba2_jax.sharding import MeshError, make_mesh

    assert len(jax.devices()) == 8, jax.devices()
    res: dict = {"runs": [], "errors": {}}
    for preset in ("tiny", "tiny-g2"):
        cfg, sd = build(preset)
        ref, _ = run_all(cfg, sd, None)
        # ngroups only matters along "model": with 2 groups, B/C are replicated for model 8 and 4 and
        # split by group for model 2; the pure data-parallel (8, 1) run is the ngroups=1 one.
        for shape in ((8, 1), (1, 8), (2, 4), (4, 2)) if cfg.ngroups == 1 else ((1, 8), (2, 4), (4, 2)):
            mesh = make_mesh({"data": shape[0], "model": shape[1]})
            got, model = run_all(cfg, sd, mesh)
            r = {"preset": preset, "ngroups": cfg.ngroups, "mesh": shape,
                 "logits_rel": _rel(got["logits"], ref["logits"]),
                 "tokens_equal": bool(np.array_equal(got["tokens"], ref["tokens"])),
                 "distinct_tokens_per_row": [len(set(t)) for t in ref["tokens"].tolist()],
                 "ppl": got["ppl"], "ppl_ref": ref["ppl"], "ppl_rel": abs(got["ppl"] - ref["ppl"]) / ref["ppl"],
                 "loglik_rel": _rel(got["loglik"], ref["loglik"]), "cache_specs": got["cache_specs"],
                 "specs": {k: _spec(v[...]) for k, v in {
                     "in_proj.z": model.backbone.layers[0].mixer.in_proj_parts["z"],
                     "in_proj.B": model.backbone.layers[0].mixer.in_proj_parts["B"],
                     "out_proj": model.backbone.layers[0].mixer.out_proj,
                     "A_log": model.backbone.layers[0].mixer.A_log,
                     "embedding": model.backbone.embedding}.items()}}
            if cfg.ngroups == 1 and shape == (2, 4):  # the extras test_mesh_extras checks (this run only)
                r.update(_extras(cfg, sd, model, ref["tokens"]))
            res["runs"].append(r)
    cfg, sd = build("tiny")  # nheads = 8

    def err(fn):
        try:
            fn()
        except MeshError as e:
            return f"MeshError: {e}"
        except Exception as e:
            return f"{type(e).__name__}: {e}"
        return None

    res["errors"]["heads"] = err(lambda: model_from_state_dict(cfg, sd, mesh=make_mesh("model=3")))
    res["errors"]["too_big"] = err(lambda: make_mesh("data=4,model=4"))
    m24 = model_from_state_dict(cfg, sd, mesh=make_mesh("data=2,model=4"))
    res["errors"]["batch"] = err(lambda: m24.init_cache(3))
    return res


def cmd_multihost(a) -> dict:
    from mamba2_jax.sharding import initialize_distributed, make_mesh

    assert initialize_distributed(a.coordinator, a.num_processes, a.process_id)
    import jax

    cfg, sd = build(a.preset)
    mesh = make_mesh(a.mesh)
    out, _ = run_all(cfg, sd, mesh, logits=False)
    return {"process_index": jax.process_index(), "process_count": jax.process_count(),
            "n_devices": len(jax.devices()), "n_local": len(jax.local_devices()),
            "tokens": out["tokens"].tolist(), "loglik": out["loglik"].tolist(), "ppl": out["ppl"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("cmd", choices=["meshes", "multihost"])
    p.add_argument("--process-id", type=int)
    p.add_argument("--num-processes", type=int)
    p.add_argument("--coordinator")
    p.add_argument("--mesh", default="data=2,model=2")
    p.add_argument("--preset", default="tiny")
    a = p.parse_args(argv)
    import jax

    jax.config.update("jax_default_matmul_precision", "highest")  # as tests/conftest.py
    res = cmd_meshes() if a.cmd == "meshes" else cmd_multihost(a)
    print("RESULT " + json.dumps(res, default=lambda x: x.tolist() if hasattr(x, "tolist") else str(x)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
