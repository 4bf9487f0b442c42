"""The GPT-NeoX-20B tokenizer used by every state-spaces/mamba2-* checkpoint.

``<|endoftext|>`` (id 0) is BOS and EOS.  As in mamba_ssm's own generation script, no BOS is
prepended by default.  Loaded from a local directory (``tokenizer.json``) or from the hub.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["Tokenizer", "load_tokenizer", "DEFAULT_TOKENIZER", "EOS_ID", "TokenizerError"]

DEFAULT_TOKENIZER = "EleutherAI/gpt-neox-20b"
EOS_ID = 0


class TokenizerError(ValueError):
    pass


class Tokenizer:
    def __init__(self, tok, source: str):
        self._tok = tok
        self.source = source
        self.eos_id = EOS_ID
        self.bos_id = EOS_ID
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return ([self.bos_id] + ids) if add_bos else ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)


def _default_local() -> Path | None:
    base = os.environ.get("MAMBA2_JAX_DATA")
    if base and (Path(base) / "gpt-neox-20b" / "tokenizer.json").exists():
        return Path(base) / "gpt-neox-20b"
    return None


def load_tokenizer(path_or_id: str | Path | None = None) -> Tokenizer:
    """A directory holding tokenizer.json, a tokenizer.json file, or a hub id.

    With no argument: ``$MAMBA2_JAX_DATA/gpt-neox-20b`` if present, else the hub id
    ``EleutherAI/gpt-neox-20b``.
    """
    from tokenizers import Tokenizer as HFTokenizer

    if path_or_id is None:
        path_or_id = _default_local() or DEFAULT_TOKENIZER
    p = Path(path_or_id).expanduser()
    if p.is_dir():
        p = p / "tokenizer.json"
    if p.is_file():
        try:
            return Tokenizer(HFTokenizer.from_file(str(p)), str(p))
        except Exception as e:  # noqa: BLE001
            raise TokenizerError(f"{p}: cannot load tokenizer: {e}") from None
    try:
        from huggingface_hub import hf_hub_download

        f = hf_hub_download(repo_id=str(path_or_id), filename="tokenizer.json")
    except Exception as e:  # noqa: BLE001
        raise TokenizerError(
            f"could not load tokenizer {str(path_or_id)!r}: not a local directory or tokenizer.json, and the hub "
            f"download failed ({type(e).__name__}). Offline, pass a local directory that holds tokenizer.json, "
            f"e.g. --tokenizer ../shared/data/gpt-neox-20b, or set MAMBA2_JAX_DATA."
        ) from None
    return Tokenizer(HFTokenizer.from_file(f), str(path_or_id))
