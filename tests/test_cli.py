import json

import numpy as np
import pytest

from mamba2_jax.cli import main


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli") / "tiny"
    assert main(["init-random", "--config", "tiny-g2", "--out", str(d), "--seed", "1", "--dtype", "float16"]) == 0
    return d


def test_init_random_info_convert(ckpt, tmp_path, capsys):
    assert (ckpt / "config.json").exists() and (ckpt / "pytorch_model.bin").exists()
    assert main(["info", str(ckpt), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "state-spaces" and info["stored_dtypes"] == ["float16"]
    assert info["config"]["ngroups"] == 2
    assert main(["convert", str(ckpt), str(tmp_path / "hf"), "--format", "hf"]) == 0
    capsys.readouterr()
    assert main(["info", str(tmp_path / "hf"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == "hf"


def test_generate_json_ids(ckpt, capsys):
    assert main(["generate", "--model", str(ckpt), "--prompt-ids", "3,4,5", "--no-decode",
                 "--max-new-tokens", "6", "--ignore-eos", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["ids"]) == 6 and out["prompt_ids"] == [3, 4, 5]
    assert out["policy"]["matmul_precision"] == "highest"
    assert out["decode_tok_s"] > 0 and out["prefill_s"] > 0


def test_generate_text_with_local_tokenizer(data_dir, tmp_path, capsys):
    # a real-vocabulary (50277 → 50288) tiny model, so tokenizer ids are in range
    from mamba2_jax.config import get_preset

    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps(get_preset("tiny").replace(vocab_size=50277).to_state_spaces()))
    d = tmp_path / "realvocab"
    assert main(["init-random", "--config", str(cfg_file), "--out", str(d)]) == 0
    assert main(["generate", "--model", str(d), "--tokenizer", str(data_dir / "gpt-neox-20b"),
                 "--prompt", "Hello world", "--max-new-tokens", "3", "--ignore-eos", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert out["prompt_ids"] == [12092, 1533]
    assert isinstance(out["text"], str) and len(out["ids"]) == 3


@pytest.mark.parametrize("args,msg", [
    (["--prompt-ids", "1,999999", "--no-decode"], "outside"),
    (["--prompt-ids", "1", "--no-decode", "--max-new-tokens", "0"], "positive"),
    (["--prompt-ids", "", "--no-decode"], "empty"),
])
def test_generate_bad_input(ckpt, capsys, args, msg):
    assert main(["generate", "--model", str(ckpt), *args]) == 2
    assert msg in capsys.readouterr().err


def test_offline_hub_model(capsys):
    assert main(["info", "state-spaces/mamba2-130m"]) == 2
    assert "local directory" in capsys.readouterr().err
