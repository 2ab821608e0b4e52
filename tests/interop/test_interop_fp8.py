"""FP8 128x128 block dequantization (docs/paper.md §3) and loading FP8 checkpoints laid out as DeepSeek's."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from dsv3_jax.interop import FP8Weight, dequantize_variables, fp8_blocks, load_hf_checkpoint, save_hf_checkpoint
from dsv3_jax.interop.hf_config import config_to_hf
from dsv3_jax.interop.hf_names import model_slots, shared_copy_slots, variable_shapes, slot_shape
from tests.interop.conftest import (dequantize_reference, quantize_deepseek_fp8, read_checkpoint, tiny_v3,
                                    write_checkpoint)


@pytest.mark.parametrize("shape", [(576, 300), (130, 129), (100, 50), (256, 384)])
def test_dequantize_matches_block_rule(shape):
    rng = np.random.default_rng(0)
    q = rng.uniform(-448, 448, shape).astype(ml_dtypes.float8_e4m3fn)
    scale = rng.uniform(1e-4, 1e-2, (-(-shape[0] // 128), -(-shape[1] // 128))).astype(np.float32)
    np.testing.assert_array_equal(fp8_blocks.dequantize(q, scale), dequantize_reference(q, scale))


def test_dequantize_stacked_and_bf16():
    rng = np.random.default_rng(1)
    q = rng.uniform(-448, 448, (3, 200, 260)).astype(ml_dtypes.float8_e4m3fn)
    scale = rng.uniform(1e-4, 1e-2, (3, 2, 3)).astype(np.float32)
    want = np.stack([dequantize_reference(q[i], scale[i]) for i in range(3)])
    np.testing.assert_array_equal(fp8_blocks.dequantize(q, scale), want)
    assert fp8_blocks.dequantize(q, scale, ml_dtypes.bfloat16).dtype == ml_dtypes.bfloat16


def test_quantize_reference_roundtrip_error():
    """Sanity of the test's own quantizer: e4m3 keeps ~3 mantissa bits, so |err| <= 2^-4 relative per block."""
    w = np.random.default_rng(2).standard_normal((576, 300)).astype(np.float32)
    q, s = quantize_deepseek_fp8(w)
    assert s.shape == (5, 3)
    err = np.abs(dequantize_reference(q, s) - w)
    assert np.all(err <= np.abs(w) * 2.0**-4 + 1e-6 + s.max() * 2.0**-9)


def test_wrong_scale_shape_names_tensor():
    q = np.zeros((576, 300), ml_dtypes.float8_e4m3fn)
    with pytest.raises(ValueError, match=r"wkv_a.*\(5, 3\).*\(576, 300\).*\(4, 3\)"):
        fp8_blocks.dequantize(q, np.ones((4, 3), np.float32), name="wkv_a")


def _fp8_checkpoint(tmp_path, cfg):
    """A DeepSeek-style FP8 checkpoint: every 2-D Linear weight in e4m3 + weight_scale_inv, except the embedding,
    the output head and the router gate (kept high precision, V3 report §3.3). Returns (dir, expected floats)."""
    rng = np.random.default_rng(3)
    shapes = variable_shapes(cfg)
    tensors, expected = {}, {}
    for slot in model_slots(cfg) + shared_copy_slots(cfg):
        shape = slot_shape(slot, shapes[slot.path])
        if slot.hf_name in expected:
            continue
        w = (0.05 * rng.standard_normal(shape)).astype(np.float32)
        embed = slot.hf_name.endswith("embed_tokens.weight")
        head = slot.hf_name.endswith(("lm_head.weight", "shared_head.head.weight"))
        if embed or head:  # the MTP layers' copies must equal the originals
            w = expected.setdefault("model.embed_tokens.weight" if embed else "lm_head.weight", w)
        if len(shape) == 2 and not (embed or head or slot.hf_name.endswith("mlp.gate.weight")):
            q, s = quantize_deepseek_fp8(w)
            tensors[slot.hf_name], tensors[slot.hf_name + "_scale_inv"] = q, s
            w = dequantize_reference(q, s)
        else:
            tensors[slot.hf_name] = w
        expected[slot.hf_name] = w
    write_checkpoint(str(tmp_path / "fp8"), config_to_hf(cfg, fp8=True, dtype="bfloat16"), tensors, n_shards=3)
    return str(tmp_path / "fp8"), tensors, expected


FP8_CFG = dict(vocab_size=70, dim=160, inter_dim=272, moe_inter_dim=130, n_layers=2, n_dense_layers=1,
               n_heads=2, n_routed_experts=4, n_expert_groups=2, n_limited_groups=1, n_activated_experts=2,
               q_lora_rank=0, kv_lora_rank=136, qk_nope_head_dim=64, qk_rope_head_dim=8, v_head_dim=72)


def test_load_fp8_checkpoint_dequantizes_per_block(tmp_path):
    cfg = tiny_v3(**FP8_CFG)
    path, tensors, expected = _fp8_checkpoint(tmp_path, cfg)
    assert tensors["model.layers.0.self_attn.kv_a_proj_with_mqa.weight_scale_inv"].shape == (2, 2)  # 144 x 160
    got_cfg, variables = load_hf_checkpoint(path)
    assert got_cfg == cfg.replace(init_std=got_cfg.init_std)
    shapes = variable_shapes(cfg)
    for slot in model_slots(cfg):
        leaf = variables
        for key in slot.path:
            leaf = leaf[key]
        got = leaf[slot.index] if slot.index else leaf
        np.testing.assert_array_equal(got.T if slot.transpose else got, expected[slot.hf_name], err_msg=slot.hf_name)
        assert got.shape == shapes[slot.path][len(slot.index):]


def test_keep_fp8_and_roundtrip(tmp_path):
    cfg = tiny_v3(**FP8_CFG)
    path, tensors, _ = _fp8_checkpoint(tmp_path, cfg)
    _, dequantized = load_hf_checkpoint(path)
    _, kept = load_hf_checkpoint(path, keep_fp8=True)
    wkv_a = kept["params"]["dense_layers"]["attn"]["wkv_a"]
    assert isinstance(wkv_a, FP8Weight) and wkv_a.value.dtype == ml_dtypes.float8_e4m3fn
    assert wkv_a.value.shape == (1, 160, 144) and wkv_a.scale_inv.shape == (1, 2, 2)
    np.testing.assert_array_equal(wkv_a.value[0].T.view(np.uint8),
                                  tensors["model.layers.0.self_attn.kv_a_proj_with_mqa.weight"].view(np.uint8))
    assert not isinstance(kept["params"]["moe_layers"]["moe"]["gate"], FP8Weight)  # stored high precision
    import jax
    same = jax.tree.map(np.array_equal, dequantize_variables(kept), dequantized)
    assert all(jax.tree.leaves(same))
    save_hf_checkpoint(cfg, kept, str(tmp_path / "again"), shard_size="100KB")
    again = read_checkpoint(str(tmp_path / "again"))
    assert set(again) == set(tensors)
    for name, arr in tensors.items():
        assert again[name].dtype == arr.dtype, name
        np.testing.assert_array_equal(again[name].view(np.uint8), arr.view(np.uint8), err_msg=name)
