"""Train the embedded default model ``checkpoints/mamba2-tiny-wikitext`` (issue 7).

A small Mamba-2 trained in JAX, through the inference modules, on the WikiText-103 raw
*validation* split (the test split is used for evaluation only), written in the state-spaces
format (mamba_ssm config.json + fp16 pytorch_model.bin) with a model card.

    make train-tiny
    .venv/bin/python experiments/train_tiny.py train.steps=20 write_checkpoint=false   # smoke run
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from mamba2_jax.checkpoint import write_checkpoint
from mamba2_jax.config import Mamba2Config
from mamba2_jax.eval import windows as P
from mamba2_jax.eval.data import (
    count_bytes,
    count_words,
    raw_text_from_rows,
    rows_from_raw_file,
    split_articles,
    split_documents,
    wikitext_detokenizer,
)
from mamba2_jax.eval.provenance import provenance
from mamba2_jax.eval.results import write_document
from mamba2_jax.eval.scorer import JaxScorer
from mamba2_jax.fileio import atomic_write_bytes, atomic_write_text, sha256_file
from mamba2_jax.generate import stepwise_greedy
from mamba2_jax.loading import load_pretrained, state_dict_from_model
from mamba2_jax.paths import checkout_root
from mamba2_jax.tokenizer import load_tokenizer
from mamba2_jax.train import TokenBatcher, TrainConfig, Trainer, tokenize_documents

REPO = checkout_root() or Path.cwd()


def _path(p: str) -> Path:
    p = Path(p).expanduser()
    return p if p.is_absolute() else (REPO / p).resolve()


@dataclass
class WikiTextSplit:
    """Token streams for training on one raw WikiText file, with the last articles held out."""

    train_tokens: np.ndarray
    val_tokens: np.ndarray
    n_articles: int
    val_titles: list[str]
    source: str

    def summary(self) -> dict[str, Any]:
        return {"source": self.source, "n_articles": self.n_articles, "n_val_articles": len(self.val_titles),
                "val_titles": self.val_titles, "train_tokens": int(len(self.train_tokens)),
                "val_tokens": int(len(self.val_tokens))}


def wikitext_train_val(path: str | Path, tokenizer, val_articles: int = 3, eos_between_docs: bool = True
                       ) -> WikiTextSplit:
    """Split a raw WikiText file into articles; the last ``val_articles`` articles are the
    validation set, the rest the training set.  Each is tokenized and concatenated."""
    arts = split_articles(rows_from_raw_file(path))
    if not 0 < val_articles < len(arts):
        raise ValueError(f"val_articles={val_articles} must be in (0, {len(arts)})")
    eos = 0 if eos_between_docs else None
    tr, va = arts[:-val_articles], arts[-val_articles:]
    titles = [a.lstrip("\n").split("\n", 1)[0].strip(" =") for a in va]
    return WikiTextSplit(tokenize_documents(tokenizer, tr, eos), tokenize_documents(tokenizer, va, eos),
                         len(arts), titles, str(path))


def test_perplexities(model, tok, test_file: Path, e: DictConfig) -> dict:
    """WikiText-103 test perplexity of ``model`` under the project's protocols (mamba2_jax.eval.perplexity):
    ``strided`` (HF guide, "\\n\\n".join(rows)) and ``lm_eval_rolling`` (lm-evaluation-harness
    ``wikitext``)."""
    rows = rows_from_raw_file(test_file)
    out: dict = {"test_file_sha256": sha256_file(test_file)}
    scorer = JaxScorer(model, batch_size=int(e.batch_size), bucket=int(e.bucket), logits_chunk=int(e.logits_chunk))
    t0 = time.perf_counter()
    w = P.strided_windows(tok.encode("\n\n".join(rows)), int(e.max_length), int(e.stride))
    m = P.aggregate(w, scorer.score(w, progress=False))
    out["strided"] = {"max_length": e.max_length, "stride": e.stride, **m,
                      "implementation": "mamba2_jax.eval.scorer.JaxScorer on mamba2_jax.eval.windows.strided_windows",
                      "wall_s": round(time.perf_counter() - t0, 1)}
    print(f"strided: {out['strided']}", flush=True)
    t0 = time.perf_counter()
    docs = split_documents(raw_text_from_rows(rows))
    toks = tok.encode_batch([wikitext_detokenizer(d) for d in docs])
    w = P.lm_eval_windows(toks, int(e.max_length), 0)
    m = P.aggregate(w, scorer.score(w, progress=False), [count_words(d) for d in docs], [count_bytes(d) for d in docs])
    out["lm_eval_rolling"] = {"max_length": e.max_length, "lm_eval_version": getattr(P, "LM_EVAL_VERSION", None), **m,
                              "implementation": "mamba2_jax.eval.scorer.JaxScorer on mamba2_jax.eval.windows.lm_eval_windows",
                              "wall_s": round(time.perf_counter() - t0, 1)}
    print(f"lm_eval_rolling: {out['lm_eval_rolling']}", flush=True)
    return out


def train_stage(c: DictConfig, paths: dict, tok) -> tuple[dict, object]:
    results = paths["results_dir"]
    cfg = Mamba2Config(**OmegaConf.to_container(c.model))
    tc = TrainConfig(**OmegaConf.to_container(c.train))
    print(f"model {cfg.name}: {cfg.num_params():,} params (embedding {cfg.padded_vocab_size * cfg.d_model:,}); "
          f"train {tc}", flush=True)
    data = wikitext_train_val(paths["train_file"], tok, c.data.val_articles, c.data.eos_between_docs)
    print(f"data: {data.summary()}", flush=True)
    batcher = TokenBatcher(data.train_tokens, tc.seq_len, tc.batch_size, seed=tc.seed)

    def log(rec):
        print("step {step:4d}  loss {loss:.4f}  gnorm {grad_norm:.3f}  lr {lr:.2e}  {elapsed_s:6.1f}s".format(**rec)
              + (f"  val {rec['val_loss']:.4f}" if "val_loss" in rec else ""), flush=True)

    trainer = Trainer(cfg, tc)
    prov = provenance()  # at the start: the code version that trained
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    hist = trainer.fit(batcher, data.val_tokens, log=log)
    train_wall = time.perf_counter() - t0
    load1 = os.getloadavg()
    curve_path = results / "loss_curve.csv"
    fields = ["step", "tokens", "lr", "loss", "grad_norm", "val_loss", "elapsed_s"]
    with open(curve_path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for rec in hist:
            w.writerow({k: (round(v, 6) if isinstance(v, float) else v) for k, v in rec.items() if k in fields})
    final = hist[-1]
    metrics = {
        "model": cfg.name, "config": cfg.to_state_spaces(), "num_params": cfg.num_params(),
        "train": tc.to_dict(), "data": {**data.summary(), "train_file_sha256": sha256_file(paths["train_file"])},
        "train_wall_s": round(train_wall, 1),
        "load_average_1m_start_end": [round(load0[0], 2), round(load1[0], 2)],
        "final_train_loss": final["loss"],
        "final_train_loss_mean_last10": float(np.mean([r["loss"] for r in hist[-10:]])),
        "final_val_loss": final.get("val_loss"),
        "final_val_ppl": math.exp(final["val_loss"]) if final.get("val_loss") is not None else None,
        "loss_curve": curve_path.name,
        "loss_curve_sha256": hashlib.sha256(np.asarray([r["loss"] for r in hist], np.float64).tobytes()).hexdigest(),
        "train_provenance": prov,
    }
    model = trainer.model()
    if c.write_checkpoint:
        write_checkpoint(cfg, state_dict_from_model(model), paths["out_dir"], fmt="state-spaces", dtype="float16")
    return metrics, model


@hydra.main(config_path="pkg://mamba2_jax.eval.conf", config_name="train_tiny", version_base=None)
def main(c: DictConfig) -> None:
    """stage=all: train, write the checkpoint, evaluate it, write results and the model card.
    stage=eval: re-evaluate the written checkpoint (test perplexities, sample) and rewrite them."""
    t_start = time.perf_counter()
    paths = {k: _path(v) for k, v in c.paths.items()}
    results, out = paths["results_dir"], paths["out_dir"]
    results.mkdir(parents=True, exist_ok=True)
    tok = load_tokenizer(paths["tokenizer"])
    if c.stage == "all":
        metrics, model = train_stage(c, paths, tok)
    elif c.stage == "eval":
        metrics = json.loads((results / "metrics.json").read_text())
        metrics.setdefault("train_provenance", metrics.get("provenance"))
        model = None
    else:
        raise ValueError(f"stage={c.stage!r}: expected all | eval")
    if c.write_checkpoint:
        model = load_pretrained(str(out))  # evaluate exactly what ships (fp16 on disk, float32 compute)
        cfg = model.cfg
        metrics["checkpoint"] = {"dir": str(out.relative_to(REPO)) if out.is_relative_to(REPO) else str(out),
                                 "pytorch_model.bin_bytes": (out / "pytorch_model.bin").stat().st_size,
                                 "pytorch_model.bin_sha256": sha256_file(out / "pytorch_model.bin")}
    if c.eval.test_ppl:
        metrics["test_ppl"] = test_perplexities(model, tok, paths["test_file"], c.eval)
    ids = tok.encode(c.eval.prompt)
    gen = stepwise_greedy(model, ids, c.eval.max_new_tokens)["tokens"].tolist()
    metrics["sample"] = {"prompt": c.eval.prompt, "greedy_continuation": tok.decode(gen), "token_ids": gen}
    print(f"greedy: {c.eval.prompt!r} -> {tok.decode(gen)!r}", flush=True)
    if c.eval.get("card_note"):
        metrics["card_note"] = str(c.eval.card_note)
    metrics[f"{c.stage}_stage_wall_s"] = round(time.perf_counter() - t_start, 1)
    metrics["provenance"] = provenance()  # records the Hydra overrides and the command line
    records = [{"split": "train", "loss": metrics.get("final_train_loss")},
               {"split": "validation", "loss": metrics.get("final_val_loss"), "ppl": metrics.get("final_val_ppl")}]
    records += [{"split": "test", "protocol": k, **{m: v.get(m) for m in ("token_perplexity", "word_perplexity")}}
                for k, v in (metrics.get("test_ppl") or {}).items() if isinstance(v, dict)]
    write_document(results / "metrics.json", metrics, experiment="train_tiny", run="metrics", records=records)
    if c.write_checkpoint:
        tc = TrainConfig(**metrics["train"])
        atomic_write_text(out / "README.md", model_card(cfg, tc, metrics))
        if Path(tok.source).is_file():  # ship the tokenizer beside the weights (Apache-2.0, see the card)
            atomic_write_bytes(out / "tokenizer.json", Path(tok.source).read_bytes())
    print(f"wrote {results}/metrics.json", flush=True)


def _load(m: dict) -> str:
    la = m.get("load_average_1m_start_end")
    return f" (1-min load average {la[0]:.1f} at the start, {la[1]:.1f} at the end)" if la else ""


def _repro(m: dict) -> str:
    r = m.get("reproduction")
    if not r or not r.get("loss_curve_sha256_equal"):
        return ""
    return f" (checked: a second run at `{str(r['git_sha'])[:7]}` gave bitwise-equal losses)"


def model_card(cfg: Mamba2Config, tc: TrainConfig, m: dict) -> str:
    d, p = m["data"], m.get("test_ppl") or {}
    prov = m.get("train_provenance") or m["provenance"]
    st, lr = p.get("strided"), p.get("lm_eval_rolling")
    st_line = (f"| WikiText-103 test, `strided` ({st['max_length']}/{st['stride']}, `\"\\n\\n\".join(rows)`) "
               f"| token perplexity **{st['token_perplexity']:.1f}** (NLL {st['nll_per_token']:.4f} nats/token "
               f"over {st['n_tokens']:,} tokens) |"
               if st else "| WikiText-103 test, `strided` | not computed in this run |")
    lr_line = (f"| WikiText-103 test, `lm_eval_rolling` (lm-eval-harness `wikitext`, {lr['max_length']}) "
               f"| word perplexity **{lr['word_perplexity']:.1f}**, byte perplexity {lr['byte_perplexity']:.3f}, "
               f"bits/byte {lr['bits_per_byte']:.3f}, token perplexity {lr['token_perplexity']:.1f} |"
               if lr else "| WikiText-103 test, `lm_eval_rolling` | not computed in this run "
                          "(`make train-tiny TRAIN_ARGS=stage=eval` computes it) |")
    impl = (st or {}).get("implementation", "")
    sha = m.get("train_code_commit") or (prov.get("git") or {}).get("sha")
    return f"""# mamba2-tiny-wikitext

A tiny Mamba-2 language model trained by the mamba2-jax project, in JAX, with this repository's own
inference modules (`Mamba2LMHeadModel`, chunked SSD; `experiments/train_tiny.py`).  It is the
embedded default model: small enough to ship in git, in the **state-spaces format**
(mamba_ssm `config.json` + fp16 `pytorch_model.bin`, keyed exactly like `state-spaces/mamba2-*`).
It is a test fixture and demo model, not a useful language model.

```python
from mamba2_jax import load_pretrained
model = load_pretrained("checkpoints/mamba2-tiny-wikitext")
```

## Architecture

| field | value |
|---|---|
| d_model / n_layer | {cfg.d_model} / {cfg.n_layer} |
| expand, d_inner, headdim, nheads | {cfg.expand}, {cfg.d_inner}, {cfg.headdim}, {cfg.nheads} |
| d_state, ngroups, d_conv, chunk_size | {cfg.d_state}, {cfg.ngroups}, {cfg.d_conv}, {cfg.chunk_size} |
| vocab | {cfg.vocab_size} (GPT-NeoX-20B), padded to {cfg.padded_vocab_size}; tied LM head |
| parameters | {m['num_params']:,} ({cfg.padded_vocab_size * cfg.d_model:,} in the embedding) |
| weights on disk | fp16 `pytorch_model.bin`, {m.get('checkpoint', {}).get('pytorch_model.bin_bytes', 0):,} bytes |

## Training

* **Data**: WikiText-103 raw (`wikitext-103-raw-v1`), **validation split** (`wiki.valid.raw`,
  sha256 `{d['train_file_sha256'][:16]}…`), the only non-test split available offline.  Split into its
  {d['n_articles']} articles at the top-level ` = Title = ` headings; the **last {d['n_val_articles']} articles**
  ({', '.join(d['val_titles'])}) are held out for the validation loss; the remaining articles give
  {d['train_tokens']:,} training tokens ({d['val_tokens']:,} validation tokens), `<|endoftext|>` between articles.
  The **test split is never used for training**, only for the perplexity below.
* **Tokenizer**: GPT-NeoX-20B (`EleutherAI/gpt-neox-20b`), no BOS.
* **Init**: mamba_ssm v2.2.2 initialisation (`mamba2_jax.checkpoint.init_state_dict`, seed {tc.seed}).
* **Optimiser**: AdamW (β=({tc.b1}, {tc.b2}), weight decay {tc.weight_decay} on the embedding and projections
  only), peak lr {tc.lr:g}, {tc.warmup_steps} warm-up steps then cosine decay to {tc.lr * tc.min_lr_ratio:g},
  global-norm clipping at {tc.grad_clip}; float32.
* **Schedule**: {tc.steps} steps × {tc.batch_size} sequences × {tc.seq_len} tokens
  = {tc.steps * tc.batch_size * tc.seq_len:,} tokens (≈{tc.steps * tc.batch_size * tc.seq_len / max(d['train_tokens'], 1):.1f} epochs).
* **Wall time**: {m['train_wall_s'] / 60:.1f} min of training (including compilation) on
  {prov.get('cpu_count')} CPU cores ({prov.get('cpu_model')}), shared with other jobs{_load(m)}.{(" " + m["card_note"]) if m.get("card_note") else ""}
* **Length**: a first run of 300 steps was stopped at step 210: its validation loss stopped improving
  after step 100 (7.04 at step 100, 7.03 at 150, 7.06 at 200) while the training loss kept falling, i.e.
  the small training split was being memorised (`results/train_tiny/aborted_run_300steps.log`).
  Two 150-step probes did no better on the validation loss at step 100 (this recipe: 7.065): peak lr 6e-3
  (7.085) and 1024-token sequences × 4 (7.090, on 1024-token windows).  For scale: a unigram model of the
  training tokens (add-0.5 smoothing) has strided test perplexity ≈2,250.
* Deterministic given the seed: `make train-tiny` reproduces this checkpoint{_repro(m)}
  (loss curve in `results/train_tiny/loss_curve.csv`, everything else in `results/train_tiny/metrics.json`).
* Code version (training): `{sha}`.

## Results

| metric | value |
|---|---|
| final training loss (last step / mean of last 10) | {m['final_train_loss']:.4f} / {m['final_train_loss_mean_last10']:.4f} nats |
| validation loss (held-out articles, windows of {tc.seq_len}) | {m['final_val_loss']:.4f} nats (ppl {m['final_val_ppl']:.1f}) |
{st_line}
{lr_line}
| uniform over the 50,277 real tokens | perplexity 50,277 |

The `lm_eval_rolling` numbers are much worse than the `strided` ones because that protocol scores the
*detokenized* text (`wikitext_detokenizer`: `" @-@ "` → `"-"`, `" , "` → `", "`, ...), whereas this model
only ever saw the raw WikiText tokenization; word perplexity also divides by words rather than tokens.

Perplexities are of the fp16 checkpoint as shipped, loaded with `load_pretrained` (float32 compute),
scored with {impl or "mamba2_jax.eval.scorer.JaxScorer"}; protocol definitions are in `mamba2_jax/eval/windows.py`.

Greedy continuation of `{m['sample']['prompt']!r}` ({len(m['sample']['token_ids'])} tokens):

> {m['sample']['prompt']}{m['sample']['greedy_continuation'].replace(chr(10), ' ')}

## License

* Weights: trained by this project; released under the repository's license (Apache-2.0), with the
  attribution below.
* Training data: WikiText-103 (Merity et al. 2016, "Pointer Sentinel Mixture Models"), Creative Commons
  Attribution-ShareAlike 3.0 (CC BY-SA 3.0) and GFDL.  A model trained on it may be considered an
  adaptation; if so, CC BY-SA 3.0 share-alike terms apply to it.
* Tokenizer: `tokenizer.json` is an unmodified copy of the GPT-NeoX-20B tokenizer (EleutherAI,
  `EleutherAI/gpt-neox-20b` on the Hugging Face hub), licensed Apache-2.0; it ships here so that
  `mamba2-jax generate --prompt ...` works offline from any directory.
"""


if __name__ == "__main__":
    main()
