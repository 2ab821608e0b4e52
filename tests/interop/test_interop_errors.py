"""Bad checkpoints fail with a ValueError naming the tensor / field / file and the expected and found shape."""

from __future__ import annotations

import json
import os

import ml_dtypes
import numpy as np
import pytest

from dsv3_jax.interop import load_hf_checkpoint, save_hf_checkpoint
from tests.interop.conftest import random_variables, read_checkpoint, tiny_v3, write_checkpoint


@pytest.fixture(scope="module")
def good_module(tmp_path_factory):
    cfg = tiny_v3()
    out = save_hf_checkpoint(cfg, random_variables(cfg), str(tmp_path_factory.mktemp("good") / "hf"))
    with open(os.path.join(out, "config.json")) as f:
        return json.load(f), read_checkpoint(out)


@pytest.fixture
def good(good_module):
    """(config dict, tensors) of a valid tiny V3 checkpoint with an MTP layer (fresh copies per test)."""
    return dict(good_module[0]), dict(good_module[1])


def _load(tmp_path, config, tensors, **kw):
    write_checkpoint(str(tmp_path / "ckpt"), config, tensors)
    return load_hf_checkpoint(str(tmp_path / "ckpt"), **kw)


def test_missing_tensor(tmp_path, good):
    config, tensors = good
    del tensors["model.layers.2.mlp.experts.7.up_proj.weight"]
    with pytest.raises(ValueError, match=r"missing tensor 'model.layers.2.mlp.experts.7.up_proj.weight', "
                                         r"expected shape \(16, 32\)"):
        _load(tmp_path, config, tensors)


def test_missing_mtp_tensor_suggests_mtp_false(tmp_path, good):
    config, tensors = good
    tensors = {k: v for k, v in tensors.items() if not k.startswith("model.layers.4.")}
    with pytest.raises(ValueError, match="model.layers.4.*mtp=False"):
        _load(tmp_path, config, tensors)
    cfg, variables = _load(tmp_path / "b", config, tensors, mtp=False)
    assert cfg.mtp_depth == 0


def test_wrong_shape(tmp_path, good):
    config, tensors = good
    tensors = dict(tensors)
    tensors["model.layers.1.self_attn.kv_b_proj.weight"] = np.zeros((32, 13), np.float32)
    with pytest.raises(ValueError, match=r"'model.layers.1.self_attn.kv_b_proj.weight' in .*model.safetensors: "
                                         r"expected shape \(32, 12\), found \(32, 13\)"):
        _load(tmp_path, config, tensors)


def test_unknown_config_field(tmp_path, good):
    config, tensors = good
    with pytest.raises(ValueError, match="config.json field 'use_magic': unknown"):
        _load(tmp_path, dict(config, use_magic=True), tensors)


def test_unexpected_tensor(tmp_path, good):
    config, tensors = good
    tensors = dict(tensors, **{"model.layers.0.self_attn.q_proj.weight": np.zeros((24, 32), np.float32)})
    with pytest.raises(ValueError, match=r"unexpected tensor 'model.layers.0.self_attn.q_proj.weight' \(24, 32\)"):
        _load(tmp_path, config, tensors)


def test_rotary_buffers_are_ignored(tmp_path, good):
    config, tensors = good
    tensors = dict(tensors, **{"model.layers.0.self_attn.rotary_emb.inv_freq": np.ones(2, np.float32)})
    _load(tmp_path, config, tensors)


def test_fp8_without_scale(tmp_path, good):
    config, tensors = good
    name = "model.layers.0.mlp.down_proj.weight"
    tensors = dict(tensors, **{name: tensors[name].astype(ml_dtypes.float8_e4m3fn)})
    with pytest.raises(ValueError, match=rf"{name}.*FP8.*'{name}_scale_inv' is missing, expected shape \(1, 1\)"):
        _load(tmp_path, config, tensors)
    tensors[name + "_scale_inv"] = np.ones((2, 1), np.float32)
    with pytest.raises(ValueError, match=rf"{name}_scale_inv.*\(1, 1\).*\(32, 48\).*found \(2, 1\)"):
        _load(tmp_path / "b", config, tensors)


def test_mtp_copy_must_equal_main_tensor(tmp_path, good):
    config, tensors = good
    name = "model.layers.4.shared_head.head.weight"
    tensors = dict(tensors, **{name: tensors[name] + 1.0})
    with pytest.raises(ValueError, match=rf"'{name}'.*differs from the main model's 'lm_head.weight'"):
        _load(tmp_path, config, tensors)


def test_not_a_checkpoint(tmp_path, good):
    with pytest.raises(ValueError, match="no config.json"):
        load_hf_checkpoint(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps(good[0]))
    with pytest.raises(ValueError, match="no model.safetensors or model.safetensors.index.json"):
        load_hf_checkpoint(str(tmp_path))


def test_truncated_shard(tmp_path, good):
    config, tensors = good
    write_checkpoint(str(tmp_path / "ckpt"), config, tensors)
    path = tmp_path / "ckpt" / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"model.safetensors: tensor '.*' of shape .* needs \d+ bytes"):
        load_hf_checkpoint(str(tmp_path / "ckpt"))


def test_index_pointing_to_missing_shard(tmp_path, good):
    config, tensors = good
    write_checkpoint(str(tmp_path / "ckpt"), config, tensors, n_shards=2)
    os.remove(tmp_path / "ckpt" / "model-00002-of-00002.safetensors")
    with pytest.raises(ValueError, match="lists shard 'model-00002-of-00002.safetensors', which does not exist"):
        load_hf_checkpoint(str(tmp_path / "ckpt"))
