"""The GPT-NeoX-20B tokenizer used by every state-spaces/mamba2-* checkpoint.

``<|endoftext|>`` (id 0) is BOS and EOS.  As in mamba_ssm's own generation script, no BOS is
prepended by default.

Resolution order (``resolve_tokenizer``; the first that exists wins, ``Tokenizer.origin`` records it):

1. ``explicit``: the path or hub id passed in (``--tokenizer``);
2. ``model``: the model directory's own ``tokenizer.json`` (the embedded model ships one);
3. ``MAMBA2_JAX_DATA``: ``$MAMBA2_JAX_DATA/gpt-neox-20b``;
4. ``checkout``: ``<checkout>/../shared/data/gpt-neox-20b`` when running from a source checkout;
5. ``hub``: ``EleutherAI/gpt-neox-20b``.  Offline (``HF_HUB_OFFLINE`` or the hub unreachable) only
   the local HF cache is tried, and a miss fails at once with instructions.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["Tokenizer", "load_tokenizer", "resolve_tokenizer", "DEFAULT_TOKENIZER", "EOS_ID", "TokenizerError"]

DEFAULT_TOKENIZER = "EleutherAI/gpt-neox-20b"
EOS_ID = 0


class TokenizerError(ValueError):
    pass


class Tokenizer:
    def __init__(self, tok, source: str, origin: str = "explicit"):
        self._tok = tok
        self.source = source  # the file (or hub id) it was loaded from
        self.origin = origin  # which step of the resolution order found it
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


def _local_file(p: Path) -> Path | None:
    p = p / "tokenizer.json" if p.is_dir() else p
    return p if p.is_file() else None


def resolve_tokenizer(path_or_id: str | Path | None = None, model_dir: str | Path | None = None,
                      ) -> tuple[str, Path | str]:
    """``(origin, location)``: the first local ``tokenizer.json`` in the resolution order, else
    ``("hub", hub_id)``.  Nothing is loaded and the network is not touched."""
    from .paths import checkout_root

    if path_or_id is not None:
        f = _local_file(Path(path_or_id).expanduser())
        return ("explicit", f) if f is not None else ("hub", str(path_or_id))
    if model_dir is not None and (f := _local_file(Path(model_dir).expanduser() / "tokenizer.json")):
        return "model", f
    env = os.environ.get("MAMBA2_JAX_DATA")  # as given, not resolved: results record this path
    if env and (f := _local_file(Path(env).expanduser() / "gpt-neox-20b")):
        return "MAMBA2_JAX_DATA", f
    root = checkout_root()  # paths.data_dir()'s fallback, tried even when $MAMBA2_JAX_DATA lacks the tokenizer
    if root is not None and (f := _local_file(root.parent / "shared" / "data" / "gpt-neox-20b")):
        return "checkout", f
    return "hub", DEFAULT_TOKENIZER


def _how_to_point_locally() -> str:
    return ("Point at local files: --tokenizer DIR (a directory holding tokenizer.json, e.g. "
            "shared/data/gpt-neox-20b), a --model DIR that holds its own tokenizer.json, or set "
            "MAMBA2_JAX_DATA to a directory containing gpt-neox-20b/tokenizer.json. "
            "With --prompt-ids no tokenizer is needed.")


def load_tokenizer(path_or_id: str | Path | None = None, model_dir: str | Path | None = None,
                   allow_hub: bool = True) -> Tokenizer:
    """Load the tokenizer found by ``resolve_tokenizer`` (see the module docstring for the order).

    ``path_or_id``: a directory holding tokenizer.json, a tokenizer.json file, or a hub id.
    ``allow_hub=False`` raises ``TokenizerError`` instead of going to the hub.
    """
    from tokenizers import Tokenizer as HFTokenizer

    origin, where = resolve_tokenizer(path_or_id, model_dir)
    if origin != "hub":
        try:
            return Tokenizer(HFTokenizer.from_file(str(where)), str(where), origin)
        except Exception as e:
            raise TokenizerError(f"{where}: cannot load tokenizer: {e}") from None
    hub_id = str(where)
    p = Path(hub_id).expanduser()
    if not allow_hub or p.is_absolute() or p.exists() or hub_id.startswith((".", "~")) or hub_id.count("/") != 1:
        raise TokenizerError(f"no tokenizer found: {hub_id!r} is not a local tokenizer.json or directory "
                             f"holding one{'' if allow_hub else ', and the hub is not to be used'}. "
                             + _how_to_point_locally())
    from huggingface_hub import hf_hub_download

    from .hub import offline_reason

    offline = offline_reason()
    try:
        f = hf_hub_download(repo_id=hub_id, filename="tokenizer.json", local_files_only=offline is not None)
    except Exception as e:
        why = (f"offline: {offline}, and it is not in the local HF cache" if offline
               else f"the hub download failed: {type(e).__name__}")
        raise TokenizerError(f"could not load tokenizer {hub_id!r} ({why}). " + _how_to_point_locally()) from None
    return Tokenizer(HFTokenizer.from_file(f), hub_id, "hub")
