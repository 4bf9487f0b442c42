"""jax.export of the suite's programs (mamba2_jax.compile.export_program): what another runtime would load."""

import pytest

from mamba2_jax.compile import export_program
from mamba2_jax.config import Mamba2Config

TINY = Mamba2Config(name="tiny-export", d_model=32, n_layer=2, vocab_size=64, d_state=8, headdim=8, chunk_size=8)


@pytest.mark.parametrize("program", ["step", "generate"])
def test_exported_signature_is_serializable_dtypes_only(program):
    """Every argument and result of the exported program has a plain dtype: a typed PRNG key (the decode
    loop's carry holds one) has no serialization in jax.export, so it must travel as its uint32 data
    (the generate program's results carried it as ``key<fry>`` and failed to serialize)."""
    r = export_program(TINY, program, platforms=("cpu",), batch=1, new_tokens=4, dtype="float32")
    assert r["io_dtypes"] and not [d for d in r["io_dtypes"] if "key<" in d], r["io_dtypes"]
    assert r["custom_calls"] == [] or r["custom_calls"] == {}
