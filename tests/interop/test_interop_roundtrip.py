"""Export -> load is exact; outputs are written atomically."""

from __future__ import annotations

import json
import os

import jax
import ml_dtypes
import numpy as np
import pytest

from dsv3_jax.interop import load_hf_checkpoint, safetensors_io, save_hf_checkpoint
from tests.interop.conftest import random_variables, read_checkpoint, read_safetensors, tiny_v2, tiny_v3


def _assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape, jax.tree_util.keystr(path)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("cfg", [tiny_v3(), tiny_v2()], ids=["v3_mtp_qlora", "v2_no_qlora"])
def test_export_load_exact(tmp_path, cfg):
    variables = random_variables(cfg)
    out = save_hf_checkpoint(cfg, variables, str(tmp_path / "hf"), shard_size="20KB")
    files = sorted(os.listdir(out))
    assert "config.json" in files and "model.safetensors.index.json" in files and len(files) > 4
    with open(os.path.join(out, "model.safetensors.index.json")) as f:
        index = json.load(f)
    tensors = read_checkpoint(out)
    assert set(index["weight_map"]) == set(tensors)
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in tensors.values())
    got_cfg, got = load_hf_checkpoint(out)
    assert got_cfg == cfg.replace(init_std=got_cfg.init_std)
    _assert_trees_equal(variables, got)


def test_hf_layout_of_exported_tensors(tmp_path):
    cfg = tiny_v3()
    variables = random_variables(cfg)
    tensors = read_checkpoint(save_hf_checkpoint(cfg, variables, str(tmp_path / "hf")))
    p = variables["params"]
    np.testing.assert_array_equal(tensors["lm_head.weight"], p["head"]["kernel"].T)
    np.testing.assert_array_equal(tensors["model.layers.3.mlp.experts.5.down_proj.weight"],
                                  p["moe_layers"]["moe"]["routed_experts"]["w2"][1, 5].T)
    np.testing.assert_array_equal(tensors["model.layers.3.mlp.gate.e_score_correction_bias"],
                                  variables["router"]["moe_layers"]["moe"]["bias"][1])
    np.testing.assert_array_equal(tensors["model.layers.4.eh_proj.weight"], p["mtp_0"]["eh_proj"]["kernel"].T)
    np.testing.assert_array_equal(tensors["model.layers.4.embed_tokens.weight"], p["embed"]["embedding"])
    np.testing.assert_array_equal(tensors["model.layers.4.shared_head.head.weight"], p["head"]["kernel"].T)
    np.testing.assert_array_equal(tensors["model.layers.4.mlp.gate.e_score_correction_bias"],
                                  variables["router"]["mtp_0"]["block"]["moe"]["bias"])
    assert tensors["model.layers.0.self_attn.q_a_proj.weight"].shape == (16, 32)


def test_bf16_export_and_load(tmp_path):
    cfg = tiny_v3()
    variables = random_variables(cfg)
    out = save_hf_checkpoint(cfg, variables, str(tmp_path / "hf"), dtype=ml_dtypes.bfloat16)
    single = read_safetensors(os.path.join(out, "model.safetensors"))
    assert single["model.embed_tokens.weight"].dtype == ml_dtypes.bfloat16
    assert single["model.layers.2.mlp.gate.e_score_correction_bias"].dtype == np.float32  # router stays fp32
    _, got = load_hf_checkpoint(out, dtype=ml_dtypes.bfloat16)
    want = jax.tree.map(lambda x: x.astype(ml_dtypes.bfloat16), variables)
    want["router"] = variables["router"]
    _assert_trees_equal(want, got)


def test_load_without_mtp(tmp_path):
    cfg = tiny_v3()
    out = save_hf_checkpoint(cfg, random_variables(cfg), str(tmp_path / "hf"))
    got_cfg, got = load_hf_checkpoint(out, mtp=False)
    assert got_cfg.mtp_depth == 0 and "mtp_0" not in got["params"] and "mtp_0" not in got["router"]


def test_failed_export_leaves_nothing(tmp_path, monkeypatch):
    cfg = tiny_v3()
    calls = []

    def failing_write(path, entries, metadata=None):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        return real_write(path, entries, metadata)
    real_write = safetensors_io.write_file
    monkeypatch.setattr(safetensors_io, "write_file", failing_write)
    with pytest.raises(OSError, match="disk full"):
        save_hf_checkpoint(cfg, random_variables(cfg), str(tmp_path / "hf"), shard_size="20KB")
    assert os.listdir(tmp_path) == []


def test_existing_output_is_kept_unless_overwrite(tmp_path):
    cfg = tiny_v3()
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="already exists"):
        save_hf_checkpoint(cfg, random_variables(cfg), str(tmp_path / "hf"))
    assert os.listdir(tmp_path / "hf") == ["keep.txt"]
    save_hf_checkpoint(cfg, random_variables(cfg), str(tmp_path / "hf"), overwrite=True)
    assert "keep.txt" not in os.listdir(tmp_path / "hf") and sorted(os.listdir(tmp_path)) == ["hf"]


def test_export_checks_the_tree(tmp_path):
    cfg = tiny_v3()
    variables = random_variables(cfg)
    variables["params"]["moe_layers"]["attn"]["wo"] = np.zeros((2, 16, 31), np.float32)
    with pytest.raises(ValueError, match=r"params/moe_layers/attn/wo: expected shape \(2, 16, 32\), found \(2, 16, 31\)"):
        save_hf_checkpoint(cfg, variables, str(tmp_path / "hf"))
    variables = random_variables(cfg)
    del variables["router"]
    with pytest.raises(ValueError, match="missing router/moe_layers/moe/bias"):
        save_hf_checkpoint(cfg, variables, str(tmp_path / "hf"))
    assert not os.path.exists(tmp_path / "hf")
