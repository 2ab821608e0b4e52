"""The models of the papers' tables as ModelConfigs (analysis only: the cost model, never trained here).

- DeepSeek-V3 671B and V2-Lite 16B: the same fields as configs/deepseek_v3.py and configs/deepseek_v2_lite.py
  (a test keeps them equal), repeated here so `dsv3-report` works from an installed package without configs/.
- DeepSeek-V2 236B: official inference/configs/config_236B.json (docs/paper.md §1); DeepSeek-V2 paper: 236B total,
  21B activated.
- Qwen-2.5 72B and LLaMA-3.1 405B as dense GQA models (n_dense_layers == n_layers), from their released
  Hugging Face config.json: Qwen2.5-72B hidden 8192, 80 layers, 64 q / 8 kv heads, head dim 128, FFN 29568,
  vocab 152064, untied, q/k/v biases; Llama-3.1-405B hidden 16384, 126 layers, 128 q / 8 kv heads, head
  dim 128, FFN 53248, vocab 128256, untied, no biases.
  ModelConfig splits a head into nope + rope parts; both dense models rotate the whole head, and only the sum
  (128) matters to the cost model, so it is written 64 + 64. Their RoPE scaling is not modelled (YaRN off).
"""

from __future__ import annotations

import dataclasses

from dsv3_jax.analysis.param_formula import formula_param_counts
from dsv3_jax.analysis.param_types import ParamCounts
from dsv3_jax.analysis.params import param_counts
from dsv3_jax.config import ModelConfig

_V3 = dict(
    vocab_size=129280, dim=7168, inter_dim=18432, moe_inter_dim=2048, n_layers=61, n_dense_layers=3,
    n_heads=128, n_routed_experts=256, n_shared_experts=1, n_activated_experts=8, n_expert_groups=8,
    n_limited_groups=4, score_func="sigmoid", route_scale=2.5, router_bias=True, q_lora_rank=1536,
    kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, mscale=1.0, mtp_depth=1)
_V2 = dict(
    vocab_size=102400, dim=5120, inter_dim=12288, moe_inter_dim=1536, n_layers=60, n_dense_layers=1,
    n_heads=128, n_routed_experts=160, n_shared_experts=2, n_activated_experts=6, n_expert_groups=8,
    n_limited_groups=3, score_func="softmax", route_scale=16.0, router_bias=False, q_lora_rank=1536,
    kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, mscale=1.0, mtp_depth=0)
_V2_LITE = dict(
    vocab_size=102400, dim=2048, inter_dim=10944, moe_inter_dim=1408, n_layers=27, n_dense_layers=1,
    n_heads=16, n_routed_experts=64, n_shared_experts=2, n_activated_experts=6, n_expert_groups=1,
    n_limited_groups=1, score_func="softmax", route_scale=1.0, router_bias=False, q_lora_rank=0,
    kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, mscale=0.707, mtp_depth=0)
_YARN = dict(max_seq_len=16384, original_seq_len=4096, rope_theta=10000.0, rope_factor=40.0, beta_fast=32,
             beta_slow=1)


def dense_gqa(vocab: int, dim: int, ffn: int, layers: int, heads: int, kv_heads: int, head_dim: int,
              rope_theta: float, norm_eps: float, max_seq_len: int) -> ModelConfig:
    """A dense decoder with GQA attention and SwiGLU FFNs as a ModelConfig (no MoE, no MTP, no YaRN)."""
    return ModelConfig(
        vocab_size=vocab, dim=dim, inter_dim=ffn, moe_inter_dim=ffn, n_layers=layers, n_dense_layers=layers,
        n_heads=heads, attention="gqa", n_kv_heads=kv_heads, q_lora_rank=0,
        qk_nope_head_dim=head_dim // 2, qk_rope_head_dim=head_dim // 2, v_head_dim=head_dim,
        n_routed_experts=0, n_shared_experts=0, n_activated_experts=0, router_bias=False, mtp_depth=0,
        max_seq_len=max_seq_len, original_seq_len=max_seq_len, rope_theta=rope_theta, norm_eps=norm_eps)


@dataclasses.dataclass(frozen=True)
class PaperModel:
    """A model of the papers' tables: its config and how its parameters are counted."""

    name: str
    cfg: ModelConfig
    qkv_bias: bool = False  # a detail ModelConfig cannot express (Qwen's q/k/v projection biases)
    analysis_only: bool = False  # True: counted with the closed form (the project's model is not this model)

    def counts(self) -> ParamCounts:
        if self.analysis_only:
            return formula_param_counts(self.cfg, qkv_bias=self.qkv_bias)
        return param_counts(self.cfg)


def deepseek_v3() -> PaperModel:
    return PaperModel("DeepSeek-V3 671B", ModelConfig(**_V3, **_YARN))


def deepseek_v2() -> PaperModel:
    return PaperModel("DeepSeek-V2 236B", ModelConfig(**_V2, **_YARN))


def deepseek_v2_lite() -> PaperModel:
    return PaperModel("DeepSeek-V2-Lite 16B", ModelConfig(**_V2_LITE, **_YARN))


def qwen25_72b() -> PaperModel:
    cfg = dense_gqa(152064, 8192, 29568, 80, 64, 8, 128, rope_theta=1e6, norm_eps=1e-6, max_seq_len=131072)
    return PaperModel("Qwen-2.5 72B", cfg, qkv_bias=True, analysis_only=True)


def llama31_405b() -> PaperModel:
    cfg = dense_gqa(128256, 16384, 53248, 126, 128, 8, 128, rope_theta=5e5, norm_eps=1e-5, max_seq_len=131072)
    return PaperModel("LLaMA-3.1 405B", cfg, analysis_only=True)


def paper_models() -> dict[str, PaperModel]:
    """Short key -> PaperModel for every model in the report."""
    return {"v3": deepseek_v3(), "v2": deepseek_v2(), "v2_lite": deepseek_v2_lite(), "qwen72b": qwen25_72b(),
            "llama405b": llama31_405b()}
