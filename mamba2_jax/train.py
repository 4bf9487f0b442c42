"""Training utilities: language-model loss, an optax train step, and token batching.

Training runs through exactly the modules used for inference: the model is a
:class:`~mamba2_jax.model.Mamba2LMHeadModel` built by :func:`mamba2_jax.loading.model_from_state_dict`,
the forward pass is its ``hidden_states`` (the inference prefill, under the model's prefill policy) and
its ``token_logprobs`` (the LM head and log-softmax, chunked; shared with scoring), and the
gradients are taken with respect to the model's ``nnx.Param`` state (``nnx.split`` / ``nnx.merge``).

The cross-entropy over the (padded) vocabulary is computed in token chunks under
``jax.checkpoint``, so the full (tokens × vocab) logits tensor is never materialised — with the
50,288-entry GPT-NeoX vocabulary that tensor would dominate memory.

Everything here is deterministic given the seed: initial weights come from
:func:`mamba2_jax.checkpoint.init_state_dict`, batches from a seeded numpy generator.

A core module (``docs/design.md``): it takes token streams and imports nothing from the evaluation
package; the corpus is the caller's (``experiments/train_tiny.py`` reads WikiText through
:mod:`mamba2_jax.eval.data`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from .checkpoint import init_state_dict
from .config import Mamba2Config
from .generate import program_key
from .loading import model_from_state_dict
from .model import Mamba2LMHeadModel
from .params import GLOBAL_PARAMS, LAYER_PARAMS

__all__ = [
    "TrainConfig", "tokenize_documents", "TokenBatcher", "lm_loss", "make_optimizer",
    "weight_decay_mask", "Trainer", "eval_loss",
]

F32 = jnp.float32


# ------------------------------------------------------------------------------ data
def tokenize_documents(tokenizer, docs: list[str], eos_id: int | None = 0) -> np.ndarray:
    """Tokenize each document and concatenate them, separated by ``eos_id`` (None: no separator)."""
    out: list[np.ndarray] = []
    for ids in tokenizer.encode_batch(docs):
        out.append(np.asarray(ids, np.int32))
        if eos_id is not None:
            out.append(np.asarray([eos_id], np.int32))
    return np.concatenate(out) if out else np.zeros((0,), np.int32)


class TokenBatcher:
    """Deterministic batches of ``seq_len + 1`` contiguous tokens drawn from one token stream.

    Each epoch cuts the stream into non-overlapping windows, starting at an offset in
    ``[0, seq_len)`` drawn per epoch, and visits the windows in a random order; batches run on
    across epoch boundaries.  Everything is a function of ``(seed, step)``.
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, seed: int = 0):
        self.tokens = np.asarray(tokens, np.int32)
        self.seq_len, self.batch_size, self.seed = int(seq_len), int(batch_size), int(seed)
        if len(self.tokens) < 2 * (self.seq_len + 1):
            raise ValueError(f"{len(self.tokens)} tokens are too few for seq_len={seq_len}")
        self._epochs: dict[int, np.ndarray] = {}

    def _epoch_windows(self, epoch: int) -> np.ndarray:
        if epoch not in self._epochs:
            rng = np.random.default_rng([self.seed, epoch])
            w = self.seq_len + 1
            off = int(rng.integers(0, self.seq_len))
            n = (len(self.tokens) - off) // w
            starts = off + w * np.arange(n)
            self._epochs = {epoch: starts[rng.permutation(n)]}  # keep one epoch cached
        return self._epochs[epoch]

    @property
    def windows_per_epoch(self) -> int:
        """Windows in epoch 0 (later epochs differ by at most one, through their offset)."""
        return len(self._epoch_windows(0))

    def batch(self, step: int) -> np.ndarray:
        """(batch_size, seq_len + 1) int32 for training step ``step``."""
        rows = []
        flat = step * self.batch_size
        # walk epochs until the batch is full (a batch may straddle an epoch boundary)
        epoch, idx = 0, flat
        while True:
            n = len(self._epoch_windows(epoch))
            if idx < n:
                break
            idx -= n
            epoch += 1
        while len(rows) < self.batch_size:
            starts = self._epoch_windows(epoch)
            take = starts[idx: idx + self.batch_size - len(rows)]
            rows.extend(int(s) for s in take)
            epoch, idx = epoch + 1, 0
        w = self.seq_len + 1
        return np.stack([self.tokens[s:s + w] for s in rows])


# ------------------------------------------------------------------------------ loss
def lm_loss(model: Mamba2LMHeadModel, tokens: jax.Array, weights: jax.Array | None = None,
            xent_chunk: int = 1024) -> jax.Array:
    """Mean next-token cross-entropy (nats) of ``tokens`` (b, l+1): inputs ``[:, :-1]``, targets ``[:, 1:]``.

    ``weights`` (b, l) optionally weights each target (0 = ignore).  The forward pass is the
    inference prefill (chunked SSD, zero initial cache) followed by the tied LM head.
    """
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    b, l = inputs.shape
    h, _ = model.hidden_states(inputs)
    w = jnp.ones((b, l), F32) if weights is None else weights.astype(F32)
    lp = model.token_logprobs(h.reshape(b * l, -1), targets.reshape(-1), xent_chunk)
    return -jnp.sum(lp * w.reshape(-1)) / jnp.maximum(jnp.sum(w), 1.0)


# ------------------------------------------------------------------------------ optimiser
@dataclass(frozen=True)
class TrainConfig:
    steps: int = 300
    batch_size: int = 16
    seq_len: int = 256
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 30
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    seed: int = 0
    xent_chunk: int = 1024
    eval_every: int = 50
    log_every: int = 10

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# parameters that get weight decay: the parameter table's ``decay`` rows (the matrices)
_DECAY = {s.name for s in (*LAYER_PARAMS, *GLOBAL_PARAMS) if s.decay}


def _path_names(path) -> list[str]:
    out = []
    for k in path:
        name = getattr(k, "key", None) or getattr(k, "name", None)
        if name is not None:
            out.append(str(name))
    return out


def weight_decay_mask(params) -> Any:
    return jax.tree_util.tree_map_with_path(lambda p, _: any(n in _DECAY for n in _path_names(p)), params)


def make_optimizer(tc: TrainConfig) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW with linear warm-up then cosine decay to ``min_lr_ratio·lr``, after global-norm clipping."""
    sched = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=tc.lr, warmup_steps=tc.warmup_steps,
        decay_steps=max(tc.steps, tc.warmup_steps + 1), end_value=tc.lr * tc.min_lr_ratio)
    tx = optax.chain(
        optax.clip_by_global_norm(tc.grad_clip),
        optax.adamw(sched, b1=tc.b1, b2=tc.b2, eps=tc.eps, weight_decay=tc.weight_decay,
                    mask=weight_decay_mask),
    )
    return tx, sched


# ------------------------------------------------------------------------------ trainer
_STEPS: dict[tuple[Any, TrainConfig], tuple[Callable, Callable]] = {}


def _compiled_steps(graphdef, tc: TrainConfig):
    """Jitted (train_step, eval_step) for one model structure (``generate.program_key`` of its
    graphdef) and training config; cached so that trainers of the same structure share one
    compilation, and only they.  ``_STEPS.clear()`` forgets them."""
    key = (program_key(graphdef), tc)
    if key not in _STEPS:
        _STEPS[key] = _build_steps(graphdef, tc)
    return _STEPS[key]


def _build_steps(graphdef, tc: TrainConfig):
    tx, _ = make_optimizer(tc)
    chunk = tc.xent_chunk

    def loss_of(params, rest, tokens, weights):
        return lm_loss(nnx.merge(graphdef, params, rest), tokens, weights, chunk)

    @partial(jax.jit, donate_argnums=(0, 1))
    def train_step(params, opt_state, rest, tokens):
        loss, grads = jax.value_and_grad(loss_of)(params, rest, tokens, None)
        gnorm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, loss, gnorm

    @jax.jit
    def eval_step(params, rest, tokens, weights):
        return loss_of(params, rest, tokens, weights)

    return train_step, eval_step


class Trainer:
    """Holds (graphdef, params, opt_state) and a jitted, state-donating train step.

    >>> tr = Trainer(cfg, TrainConfig(steps=100))
    >>> loss = tr.step(batch)            # batch: (b, seq_len + 1) int32
    >>> model = tr.model()               # a Mamba2LMHeadModel with the current weights
    """

    def __init__(self, cfg: Mamba2Config, tc: TrainConfig, init_sd: dict[str, np.ndarray] | None = None):
        self.cfg, self.tc = cfg, tc
        sd = init_sd if init_sd is not None else init_state_dict(cfg, seed=tc.seed)
        model = model_from_state_dict(cfg, sd, dtype="float32")
        self.graphdef, self.params, self.rest = nnx.split(model, nnx.Param, ...)
        self.tx, self.schedule = make_optimizer(tc)
        self.opt_state = self.tx.init(self.params)
        self.n_steps = 0
        self._train_step, self._eval_step = _compiled_steps(self.graphdef, tc)

    def step(self, tokens: np.ndarray) -> tuple[float, float]:
        """One optimiser step on ``tokens`` (b, seq_len+1).  Returns (loss, grad global norm) before the update."""
        self.params, self.opt_state, loss, gnorm = self._train_step(self.params, self.opt_state, self.rest,
                                                                    jnp.asarray(tokens, jnp.int32))
        self.n_steps += 1
        return float(loss), float(gnorm)

    def lr(self, step: int | None = None) -> float:
        return float(self.schedule(self.n_steps if step is None else step))

    def model(self) -> Mamba2LMHeadModel:
        return nnx.merge(self.graphdef, self.params, self.rest)

    def evaluate(self, tokens: np.ndarray, batch_size: int | None = None) -> float:
        return eval_loss(self._eval_step, self.params, self.rest, tokens, self.tc.seq_len,
                         batch_size or self.tc.batch_size)

    def fit(self, batcher: TokenBatcher, val_tokens: np.ndarray | None = None,
            log: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
        """Run ``tc.steps`` steps; returns the history (one record per logged step)."""
        tc = self.tc
        hist: list[dict[str, Any]] = []
        t0 = time.perf_counter()
        for s in range(self.n_steps, tc.steps):
            lr = self.lr(s)
            loss, gnorm = self.step(batcher.batch(s))
            if not math.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {loss} at step {s}")
            rec = {"step": s + 1, "loss": loss, "grad_norm": gnorm, "lr": lr,
                   "tokens": (s + 1) * tc.batch_size * tc.seq_len, "elapsed_s": time.perf_counter() - t0}
            last = s + 1 == tc.steps
            if val_tokens is not None and (last or (tc.eval_every and (s + 1) % tc.eval_every == 0)):
                rec["val_loss"] = self.evaluate(val_tokens)
                rec["elapsed_s"] = time.perf_counter() - t0
            if log and (last or (s + 1) % max(tc.log_every, 1) == 0 or s == 0 or "val_loss" in rec):
                log(rec)
            hist.append(rec)
        return hist


def eval_loss(eval_step, params, rest, tokens: np.ndarray, seq_len: int, batch_size: int) -> float:
    """Token-weighted mean loss over non-overlapping windows of ``seq_len + 1`` tokens that share
    their boundary token (every token after the first is a target exactly once).  A short final
    window is right-padded and masked."""
    tokens = np.asarray(tokens, np.int32)
    n_t = len(tokens) - 1
    starts = list(range(0, n_t, seq_len))
    total, count = 0.0, 0
    for i in range(0, len(starts), batch_size):
        group = starts[i:i + batch_size]
        toks = np.zeros((batch_size, seq_len + 1), np.int32)
        w = np.zeros((batch_size, seq_len), np.float32)
        for j, s in enumerate(group):
            seg = tokens[s:s + seq_len + 1]
            toks[j, :len(seg)] = seg
            w[j, :len(seg) - 1] = 1.0
        m = float(eval_step(params, rest, jnp.asarray(toks), jnp.asarray(w)))
        c = float(w.sum())
        total += m * c
        count += c
    return total / max(count, 1.0)
