"""mamba2_jax: pure-JAX Mamba-2 inference (chunked SSD prefill, O(1) cached decode)."""

from .cache import Mamba2Cache
from .checkpoint import CheckpointError, load_pretrained, save_pretrained
from .config import ConfigError, Mamba2Config, get_preset
from .model import Mamba2LMHeadModel

__version__ = "0.1.0"
__all__ = ["Mamba2Config", "Mamba2Cache", "Mamba2LMHeadModel", "load_pretrained", "save_pretrained",
           "get_preset", "ConfigError", "CheckpointError", "__version__"]
