"""config.json <-> ModelConfig (docs/paper.md §1), including the YaRN mscale mapping and strict field checks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dsv3_jax.config import ModelConfig
from dsv3_jax.interop.hf_config import config_from_hf, config_to_hf
from dsv3_jax.layers.rope import rope_frequencies
from tests.interop.conftest import tiny_v2, tiny_v3

# deepseek-ai/DeepSeek-V3 config.json (fields as published).
V3_JSON = {
    "architectures": ["DeepseekV3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "auto_map": {"AutoConfig": "configuration_deepseek.DeepseekV3Config"}, "aux_loss_alpha": 0.001,
    "bos_token_id": 0, "eos_token_id": 1, "ep_size": 1, "first_k_dense_replace": 3, "hidden_act": "silu",
    "hidden_size": 7168, "initializer_range": 0.02, "intermediate_size": 18432, "kv_lora_rank": 512,
    "max_position_embeddings": 163840, "model_type": "deepseek_v3", "moe_intermediate_size": 2048,
    "moe_layer_freq": 1, "n_group": 8, "n_routed_experts": 256, "n_shared_experts": 1, "norm_topk_prob": True,
    "num_attention_heads": 128, "num_experts_per_tok": 8, "num_hidden_layers": 61, "num_key_value_heads": 128,
    "num_nextn_predict_layers": 1, "pretraining_tp": 1, "q_lora_rank": 1536, "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64, "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3",
                                                    "quant_method": "fp8", "weight_block_size": [128, 128]},
    "rms_norm_eps": 1e-06, "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0,
                                            "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096,
                                            "type": "yarn"},
    "rope_theta": 10000, "routed_scaling_factor": 2.5, "scoring_func": "sigmoid", "seq_aux": True,
    "tie_word_embeddings": False, "topk_group": 4, "topk_method": "noaux_tc", "torch_dtype": "bfloat16",
    "transformers_version": "4.33.1", "use_cache": True, "v_head_dim": 128, "vocab_size": 129280,
}
# deepseek-ai/DeepSeek-V2-Lite config.json (fields as published).
V2_LITE_JSON = {
    "architectures": ["DeepseekV2ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "aux_loss_alpha": 0.001, "bos_token_id": 100000, "eos_token_id": 100001, "first_k_dense_replace": 1,
    "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 10944,
    "kv_lora_rank": 512, "max_position_embeddings": 163840, "model_type": "deepseek_v2",
    "moe_intermediate_size": 1408, "moe_layer_freq": 1, "n_group": 1, "n_routed_experts": 64,
    "n_shared_experts": 2, "norm_topk_prob": False, "num_attention_heads": 16, "num_experts_per_tok": 6,
    "num_hidden_layers": 27, "num_key_value_heads": 16, "pretraining_tp": 1, "q_lora_rank": None,
    "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "rms_norm_eps": 1e-06,
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 0.707, "mscale_all_dim": 0.707,
                     "original_max_position_embeddings": 4096, "type": "yarn"},
    "rope_theta": 10000, "routed_scaling_factor": 1.0, "scoring_func": "softmax", "seq_aux": True,
    "tie_word_embeddings": False, "topk_group": 1, "topk_method": "greedy", "torch_dtype": "bfloat16",
    "transformers_version": "4.33.1", "use_cache": True, "v_head_dim": 128, "vocab_size": 102400,
}


def hf_softmax_scale(d):
    """transformers' DeepseekV3Attention.scaling: qk_head_dim^-0.5 · m(mscale_all_dim)² (yarn_get_mscale)."""
    r = d["rope_scaling"]
    m = 0.1 * r["mscale_all_dim"] * math.log(r["factor"]) + 1.0
    return (d["qk_nope_head_dim"] + d["qk_rope_head_dim"]) ** -0.5 * m * m


def test_v3_config_maps_to_official_v3():
    cfg, fp8 = config_from_hf(V3_JSON)
    assert fp8
    assert cfg == ModelConfig(max_seq_len=163840)  # the defaults are the official V3 671B config
    assert cfg.softmax_scale == pytest.approx(0.135234, abs=1e-6)  # docs/paper.md §2 [derived]
    assert cfg.softmax_scale == pytest.approx(hf_softmax_scale(V3_JSON), rel=1e-12)


def test_v2_lite_config_maps_to_official_16b():
    cfg, fp8 = config_from_hf(V2_LITE_JSON)
    assert not fp8
    want = dict(vocab_size=102400, dim=2048, inter_dim=10944, moe_inter_dim=1408, n_layers=27, n_dense_layers=1,
                n_heads=16, n_routed_experts=64, n_shared_experts=2, n_activated_experts=6, n_expert_groups=1,
                n_limited_groups=1, route_scale=1.0, score_func="softmax", router_bias=False, q_lora_rank=0,
                mscale=0.707, mtp_depth=0)
    assert {k: getattr(cfg, k) for k in want} == want
    assert cfg.softmax_scale == pytest.approx(0.114721, abs=1e-6)
    assert cfg.softmax_scale == pytest.approx(hf_softmax_scale(V2_LITE_JSON), rel=1e-12)


def test_v2_group_limited_greedy():
    d = dict(V2_LITE_JSON, n_group=8, topk_group=3, topk_method="group_limited_greedy", n_routed_experts=160)
    cfg, _ = config_from_hf(d)
    assert (cfg.n_expert_groups, cfg.n_limited_groups, cfg.router_bias) == (8, 3, False)


def test_transformers5_rope_parameters_layout():
    d = dict(V3_JSON)
    rope = dict(d.pop("rope_scaling"), rope_type="yarn", rope_theta=d.pop("rope_theta"))
    del rope["type"]
    assert config_from_hf(dict(d, rope_parameters=rope))[0] == config_from_hf(V3_JSON)[0]


def test_yarn_frequencies_match_hf_formula():
    """transformers' _compute_yarn_parameters (truncate=True) written out; our rope must give the same."""
    dim, base, factor, orig = 64, 10000.0, 40.0, 4096

    def corr(rot):
        return dim * math.log(orig / (rot * 2 * math.pi)) / (2 * math.log(base))
    low, high = max(math.floor(corr(32)), 0), min(math.ceil(corr(1)), dim - 1)
    ramp = np.clip((np.arange(dim // 2) - low) / (high - low), 0, 1)
    pos = base ** (np.arange(0, dim, 2) / dim)
    extrap = 1 - ramp
    want = (1 / (factor * pos)) * (1 - extrap) + (1 / pos) * extrap
    got = rope_frequencies(dim, base, yarn=True, factor=factor, original_seq_len=orig, beta_fast=32, beta_slow=1)
    np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.parametrize("cfg", [tiny_v3(), tiny_v2(), tiny_v2(n_expert_groups=1, n_limited_groups=1),
                                 tiny_v3(q_lora_rank=0, mscale=0.0, mtp_depth=2)])
def test_config_roundtrip(cfg):
    d = config_to_hf(cfg)
    back, fp8 = config_from_hf(d)
    assert not fp8 and back == cfg.replace(init_std=back.init_std)


@pytest.mark.parametrize("field, value, match", [
    ("sliding_window", 4096, "'sliding_window'"),
    ("hidden_act", "gelu", "'hidden_act'.*'silu'.*'gelu'"),
    ("scoring_func", "softmax", "'scoring_func'"),
    ("topk_method", "greedy", "'topk_method'"),
    ("norm_topk_prob", False, "'norm_topk_prob'"),
    ("tie_word_embeddings", True, "'tie_word_embeddings'"),
    ("model_type", "llama", "'model_type'"),
    ("quantization_config", {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [64, 64]},
     "quantization_config.weight_block_size"),
    ("quantization_config", {"quant_method": "fp8", "group_size": 32}, "quantization_config.group_size"),
])
def test_bad_field_is_named(field, value, match):
    with pytest.raises(ValueError, match=match):
        config_from_hf(dict(V3_JSON, **{field: value}))


@pytest.mark.parametrize("rope, match", [
    (dict(mscale=0.707), "rope_scaling.mscale.*attention_factor"),
    (dict(truncate=False), "rope_scaling.truncate"),
    (dict(type="longrope"), "rope_scaling.rope_type"),
    (dict(low_freq_factor=1.0), "rope_scaling.low_freq_factor"),
])
def test_bad_rope_field_is_named(rope, match):
    with pytest.raises(ValueError, match=match):
        config_from_hf(dict(V3_JSON, rope_scaling=dict(V3_JSON["rope_scaling"], **rope)))


def test_missing_field_is_named():
    d = dict(V3_JSON)
    del d["kv_lora_rank"]
    with pytest.raises(ValueError, match="'kv_lora_rank'.*missing"):
        config_from_hf(d)


def test_invalid_value_names_hf_field():
    with pytest.raises(ValueError, match="'num_experts_per_tok'.*n_activated_experts"):
        config_from_hf(dict(V3_JSON, num_experts_per_tok=200))


def test_mtp_false_drops_depth():
    assert config_from_hf(V3_JSON, mtp=False)[0].mtp_depth == 0


def test_export_rejects_non_hf_models():
    with pytest.raises(ValueError, match="ModelConfig.attention"):
        config_to_hf(tiny_v3(attention="mha"))
    with pytest.raises(ValueError, match="ModelConfig.router_bias"):
        config_to_hf(tiny_v3(router_bias=False))
