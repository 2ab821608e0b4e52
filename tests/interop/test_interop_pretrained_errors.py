"""from_pretrained on bad inputs: every error names the file (or tensor) and what was expected, before any
weight is read — missing tokenizer files, a vocabulary larger than the model's, a truncated shard (seen in the
header, or while reading), an index naming a missing shard, a directory that is no checkpoint."""

from __future__ import annotations

import os

import pytest

import dsv3_jax
from dsv3_jax.interop import safetensors_io as st, save_hf_checkpoint
from dsv3_jax.interop.hf_checkpoint import open_checkpoint
from dsv3_jax.interop.pretrained import load_hf_variables, variable_shardings
from tests.interop.conftest import random_variables, tiny_v3

pytest.importorskip("tokenizers")


@pytest.fixture
def checkpoint(tmp_path):
    """A tiny V3 checkpoint in shards + an index, with a 320-id tokenizer (vocab_size 320)."""
    from tests.interop.hf_fixtures import TEXT, train_bpe

    cfg = tiny_v3(vocab_size=320)
    path = save_hf_checkpoint(cfg, random_variables(cfg), str(tmp_path / "hf"), shard_size="150KB",
                              tokenizer_from=train_bpe(str(tmp_path / "tok"), [TEXT] * 4, 320))
    assert os.path.isfile(os.path.join(path, st.INDEX_FILE)) and os.path.isfile(os.path.join(path, "tokenizer.json"))
    return cfg, path


def test_loads_with_its_tokenizer(checkpoint):
    cfg, path = checkpoint
    got, variables, tok = dsv3_jax.from_pretrained(path)
    assert got == cfg.replace(init_std=got.init_std) and tok.vocab_size == 320
    assert variables["params"]["embed"]["embedding"].shape == (320, 32)


def test_missing_tokenizer_files(checkpoint):
    _, path = checkpoint
    os.remove(os.path.join(path, "tokenizer_config.json"))
    with pytest.raises(ValueError, match=r"hf/tokenizer_config.json: missing"):
        dsv3_jax.from_pretrained(path)
    os.remove(os.path.join(path, "tokenizer.json"))
    with pytest.raises(ValueError, match=r"hf/tokenizer.json: missing \(nor in .*hf/tokenizer/\)"):
        dsv3_jax.from_pretrained(path)
    assert dsv3_jax.from_pretrained(path, tokenizer=False)[2] is None  # the weights alone


def test_mismatched_vocab(tmp_path, checkpoint):
    _, path = checkpoint
    small = tiny_v3(vocab_size=64)
    other = save_hf_checkpoint(small, random_variables(small), str(tmp_path / "small"), tokenizer_from=path)
    with pytest.raises(ValueError, match=r"model.vocab_size=64 is smaller than the 320 ids of the tokenizer "
                                         r"\(.*small/tokenizer.json\)"):
        dsv3_jax.from_pretrained(other)


def test_truncated_shard(checkpoint):
    _, path = checkpoint
    shard = os.path.join(path, sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))[-1])
    ckpt = open_checkpoint(path)  # validated while the file was whole
    with open(shard, "r+b") as f:
        f.truncate(os.path.getsize(shard) - 64)
    with pytest.raises(ValueError, match=rf"{os.path.basename(shard)}: tensor '.*' is truncated"):
        load_hf_variables(ckpt, variable_shardings(ckpt.cfg))
    with pytest.raises(ValueError, match=rf"{os.path.basename(shard)}: tensor '.*' of shape .* needs \d+ "
                                         r"bytes, header gives offsets"):
        dsv3_jax.from_pretrained(path)


def test_index_naming_a_missing_file(checkpoint, tmp_path):
    _, path = checkpoint
    shard = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))[-1]
    os.remove(os.path.join(path, shard))
    with pytest.raises(ValueError, match=rf"model.safetensors.index.json: lists shard '{shard}', which does not exist"):
        dsv3_jax.from_pretrained(path)
    with pytest.raises(ValueError, match=r"neither a Hugging Face checkpoint .* nor a params directory"):
        dsv3_jax.from_pretrained(str(tmp_path))
