"""Where things live: the checkout (if any), the shared data directory, results, packaged configs.

The package works from an installed wheel.  Nothing here assumes a repository checkout; when the
package does sit inside one (``<root>/mamba2_jax`` beside ``<root>/pyproject.toml``), the
checkout's conventions are used as defaults: ``<root>/../shared/data`` for data and
``<root>/results`` for results.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["PACKAGE_DIR", "CONF_DIR", "checkout_root", "data_dir", "require_data_dir", "results_dir",
           "default_model_dir"]

PACKAGE_DIR = Path(__file__).resolve().parent
CONF_DIR = PACKAGE_DIR / "eval" / "conf"


def checkout_root() -> Path | None:
    """The repository root when running from a source checkout, else None (an installed wheel)."""
    root = PACKAGE_DIR.parent
    if (root / "pyproject.toml").is_file() and (root / "experiments").is_dir():
        return root
    return None


def data_dir(override: str | os.PathLike | None = None) -> Path | None:
    """The shared data directory: ``override``, else ``$MAMBA2_JAX_DATA``, else ``../shared/data``
    beside the checkout.  None when none of these is given or exists.  A relative override is
    taken relative to the checkout (or the cwd)."""
    if override:
        p = Path(override).expanduser()
        return (p if p.is_absolute() else (checkout_root() or Path.cwd()) / p).resolve()
    env = os.environ.get("MAMBA2_JAX_DATA")
    if env:
        return Path(env).expanduser().resolve()
    root = checkout_root()
    if root is not None and (root.parent / "shared" / "data").is_dir():
        return (root.parent / "shared" / "data").resolve()
    return None


def require_data_dir(override: str | os.PathLike | None = None) -> Path:
    """:func:`data_dir`, or a clear error saying how to supply one."""
    d = data_dir(override)
    if d is None:
        raise FileNotFoundError("no data directory: pass paths.data_dir=DIR or set MAMBA2_JAX_DATA "
                                "(a directory holding mamba2-configs/, gpt-neox-20b/, wikitext-103-raw-v1/)")
    return d


def results_dir(override: str | os.PathLike | None = None) -> Path:
    """Where results go: ``override``, else ``$MAMBA2_JAX_RESULTS``, else ``<checkout>/results``,
    else ``./results``.  A relative override is taken relative to the checkout (or the cwd)."""
    base = checkout_root() or Path.cwd()
    p = override or os.environ.get("MAMBA2_JAX_RESULTS")
    if p:
        p = Path(p).expanduser()
        return (p if p.is_absolute() else base / p).resolve()
    return (base / "results").resolve()


def default_model_dir() -> Path:
    """The embedded default model shipped with the checkout (``checkpoints/mamba2-tiny-wikitext``)."""
    root = checkout_root()
    return (root if root is not None else Path.cwd()) / "checkpoints" / "mamba2-tiny-wikitext"


def repo_path(p: str | os.PathLike | None) -> Path | None:
    """``p`` as an absolute path: relative paths (in experiment configs) are taken relative to the
    checkout, else the working directory; None stays None."""
    if p is None:
        return None
    p = Path(str(p)).expanduser()
    return p if p.is_absolute() else ((checkout_root() or Path.cwd()) / p)
