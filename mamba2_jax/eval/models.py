"""Models and checkpoints from an experiment's model spec (bench, parity and perplexity alike).

A spec is a Hydra ``model`` group entry (``mamba2_jax/eval/conf/model/<name>.yaml``), a preset
name, a checkpoint path or a hub id.  Random-init specs are written once as real checkpoints.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from ..fileio import atomic_write_text, sha256_file
from ..paths import CONF_DIR, repo_path, require_data_dir
from .oracle import perturb_state_dict

REAL_MODELS = ("mamba2-130m", "mamba2-370m", "mamba2-780m", "mamba2-1.3b", "mamba2-2.7b")
SYNTHETIC_LABEL = "synthetic weights (random init, untrained)"


def load_model_spec(name: str, conf_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """The Hydra ``model`` group entry ``mamba2_jax/eval/conf/model/<name>.yaml`` as a plain dict
    (falls back to a bare preset name if there is no such file)."""
    conf_dir = Path(conf_dir) if conf_dir else CONF_DIR
    p = conf_dir / "model" / f"{name}.yaml"
    if not p.exists():
        return {"name": name, "preset": name}
    from omegaconf import OmegaConf

    d = OmegaConf.to_container(OmegaConf.load(p), resolve=False)
    d.setdefault("name", name)
    return d


def model_config(spec: dict[str, Any], data: Path | None = None):
    """Mamba2Config for a model spec: ``config_json`` (relative to the data dir) else ``preset``."""
    from ..config import Mamba2Config, get_preset

    cj = spec.get("config_json")
    if cj:
        p = Path(cj)
        if not p.is_absolute():
            p = (data or require_data_dir()) / p
        if p.exists():
            cfg = Mamba2Config.from_json(p)
            return cfg.replace(name=spec.get("name", cfg.name))
    return get_preset(spec.get("preset", spec["name"]))


def build_model(spec: dict[str, Any] | str, dtype: str = "float32", checkpoint: str | None = None,
                seed: int = 0, precision: str | None = None, data: Path | None = None, mesh=None,
                state_dtype: str = "float32"):
    """(model, info): weights from ``checkpoint`` (or ``spec['checkpoint']``) if given, else the
    mamba_ssm-style random init of the spec's shape; ``mesh`` shards it (mamba2_jax.sharding);
    ``state_dtype`` is the SSM state's storage dtype (the precision policy, recorded in info's "policy")."""
    from ..checkpoint import init_state_dict
    from ..loading import load_pretrained, model_from_state_dict
    from ..sharding import describe_mesh

    spec = load_model_spec(spec) if isinstance(spec, str) else dict(spec)
    ckpt = checkpoint or spec.get("checkpoint")
    if ckpt:
        model = load_pretrained(ckpt, dtype=dtype, precision=precision, mesh=mesh, state_dtype=state_dtype)
        info = {"weights": "checkpoint", "checkpoint": str(ckpt), **model.source.as_dict()}
    else:
        cfg = model_config(spec, data)
        sd = init_state_dict(cfg, seed=seed)
        model = model_from_state_dict(cfg, sd, dtype=dtype, precision=precision, mesh=mesh, state_dtype=state_dtype)
        info = {"weights": "random-init", "seed": seed}
        del sd
    info.update({"model": spec.get("name", model.cfg.name), "dtype": dtype,
                 "policy": policy_record(model), "num_params": model.cfg.num_params(),
                 "mesh": describe_mesh(mesh)})
    return model, info


def model_tag(spec: Any) -> str:
    if isinstance(spec, dict) or hasattr(spec, "keys"):
        return str(spec["name"])
    return str(spec).strip("/").replace("/", "__")


def checkpoint_fingerprint(model_dir: Path) -> str:
    """sha256 over config.json and the weights file (identifies the checkpoint a golden was made from)."""
    h = hashlib.sha256()
    for name in ("config.json", "model.safetensors", "pytorch_model.bin"):
        p = model_dir / name
        if p.exists():
            h.update(name.encode())
            h.update(sha256_file(p).encode())
    return h.hexdigest()[:16]


def ensure_checkpoint(spec: Any, work_dir: Path) -> tuple[Path, dict[str, Any]]:
    """→ (local checkpoint dir, description).  Random-init specs are written once, atomically."""
    from mamba2_jax.checkpoint import init_state_dict, resolve_model_dir, write_checkpoint
    from mamba2_jax.config import get_preset

    if isinstance(spec, str) or "path" in spec:
        src = spec if isinstance(spec, str) else str(spec["path"])
        local = repo_path(src)
        d = local if local.is_dir() else resolve_model_dir(src)  # else: a hub id
        return Path(d), {"source": src, "kind": "checkpoint"}
    spec = dict(spec)
    cfg = get_preset(spec["preset"])
    if spec.get("overrides"):
        cfg = cfg.replace(**dict(spec["overrides"]))
    out = work_dir / "checkpoints" / spec["name"]
    desc = {"source": f"random init of preset {spec['preset']}", "kind": "random-init",
            "seed": int(spec.get("seed", 0)),
            "stored_dtype": spec.get("stored_dtype", "float32"), "perturb": bool(spec.get("perturb", False)),
            "overrides": dict(spec.get("overrides") or {})}
    stamp = out / ".spec.json"
    if not (stamp.exists() and json.loads(stamp.read_text()) == desc):
        sd = init_state_dict(cfg, seed=desc["seed"])
        if desc["perturb"]:
            sd = perturb_state_dict(sd, desc["seed"])
        write_checkpoint(cfg, sd, out, fmt="state-spaces", dtype=desc["stored_dtype"])
        atomic_write_text(stamp, json.dumps(desc))
    return out, desc


def model_fingerprint(model_dir: Path) -> dict[str, Any]:
    files = {}
    for name in ("config.json", "pytorch_model.bin", "model.safetensors"):
        f = model_dir / name
        if f.exists():
            st = f.stat()
            files[name] = [st.st_size, st.st_mtime_ns]
    return {"dir": str(model_dir.resolve()), "files": files}


def synthetic_checkpoint(cfg) -> Path:
    """A small random-init checkpoint (GPT-NeoX vocabulary) written once under the work dir."""
    from mamba2_jax.checkpoint import init_state_dict, write_checkpoint
    from mamba2_jax.config import Mamba2Config

    s = cfg.synthetic
    name = f"synthetic-d{s.d_model}-l{s.n_layer}-s{s.seed}"
    out = repo_path(cfg.paths.work_dir) / "models" / name
    if not ((out / "config.json").exists() and (out / "pytorch_model.bin").exists()):
        mcfg = Mamba2Config(name=name, d_model=int(s.d_model), n_layer=int(s.n_layer), d_state=int(s.d_state),
                            headdim=int(s.headdim), chunk_size=int(s.chunk_size))
        write_checkpoint(mcfg, init_state_dict(mcfg, seed=int(s.seed)), out)
        atomic_write_text(
            out / "SYNTHETIC_WEIGHTS.txt",
            f"Random initialisation (mamba_ssm init scheme, seed {s.seed}); NOT a trained model.\n"
            f"Written by experiments/perplexity.py for pipeline runs until a trained checkpoint exists.\n")
        print(f"[perplexity] wrote synthetic checkpoint {out}", file=sys.stderr, flush=True)
    return out


def resolve_model(name: str, cfg) -> dict[str, Any]:
    """Model name → {name, label, dir, weights, source}."""
    from mamba2_jax.checkpoint import resolve_model_dir

    tiny = repo_path(cfg.paths.tiny_wikitext)
    if name == "auto":
        name = "tiny-wikitext" if (tiny / "config.json").exists() else "synthetic"
    if name == "synthetic":
        d = synthetic_checkpoint(cfg)
        return {"name": d.name, "label": d.name, "dir": str(d), "weights": SYNTHETIC_LABEL, "synthetic": True,
                "source": "experiments/perplexity.py synthetic_checkpoint()"}
    if name == "tiny-wikitext":
        if not (tiny / "config.json").exists():
            raise FileNotFoundError(f"tiny-wikitext: {tiny} does not exist yet (it is being trained); "
                                    f"use models=[synthetic] meanwhile")
        return {"name": "mamba2-tiny-wikitext", "label": "mamba2-tiny-wikitext", "dir": str(tiny),
                "weights": "trained (project checkpoint, experiments/train_tiny.py)", "synthetic": False,
                "source": str(tiny)}
    p = repo_path(name)
    if p is not None and p.is_dir():
        return {"name": p.name, "label": p.name, "dir": str(p), "weights": "local checkpoint", "synthetic": False,
                "source": str(p)}
    short = name.removeprefix("state-spaces/")
    if short in REAL_MODELS:
        local = repo_path(cfg.paths.checkpoints_dir) / short
        if (local / "config.json").exists():
            return {"name": short, "label": short, "dir": str(local), "synthetic": False,
                    "weights": f"pretrained state-spaces/{short} (local copy)", "source": str(local)}
        hub = f"state-spaces/{short}"
        return {"name": short, "label": short, "dir": str(resolve_model_dir(hub)), "synthetic": False,
                "weights": f"pretrained {hub}", "source": f"hub:{hub}"}
    d = resolve_model_dir(name)  # hub id owner/name (raises a clear CheckpointError offline)
    label = name.replace("/", "__")
    return {"name": name, "label": label, "dir": str(d), "weights": f"hub {name}", "synthetic": False,
            "source": f"hub:{name}"}


def policy_record(model) -> dict | None:
    """What results record of ``model.policy`` (``loading.ModelPolicy.as_dict``; None without one)."""
    pol = getattr(model, "policy", None)
    return None if pol is None else pol.as_dict()
