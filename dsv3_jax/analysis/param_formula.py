"""Closed-form parameter counts of a ModelConfig, written from the equations (V3 report §2, docs/paper.md §2).

Used for the analysis-only comparison models (Qwen-2.5 72B has q/k/v biases the project's model does not
implement) and as the fallback when `dsv3_jax.model` cannot be imported. `params.param_counts` prefers the
real model's `jax.eval_shape`; the tests check both against a per-tensor reference.

Counted: the 'params' collection only. The aux-loss-free router bias (V3 report eq. 16; E per MoE layer,
14,848 values for V3) is state in the 'router' collection, reported separately as `router_state`.
"""

from __future__ import annotations

from dsv3_jax.analysis.param_types import ParamCounts
from dsv3_jax.config import ModelConfig


def attention_params(cfg: ModelConfig, qkv_bias: bool = False) -> int:
    """Parameters of one attention sub-layer (without its pre-norm)."""
    d, h = cfg.dim, cfg.n_heads
    dqk, dv = cfg.qk_head_dim, cfg.v_head_dim
    if cfg.attention == "mla":
        # V3 report eq. 1-11: q (optionally low-rank + q_norm), joint kv compression + kv_norm, output.
        if cfg.q_lora_rank:
            q = d * cfg.q_lora_rank + cfg.q_lora_rank + cfg.q_lora_rank * h * dqk
        else:
            q = d * h * dqk
        kv = d * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) + cfg.kv_lora_rank
        kv += cfg.kv_lora_rank * h * (cfg.qk_nope_head_dim + dv)
        return q + kv + h * dv * d
    # MHA / GQA baselines (layers/baseline_attention.py): wq, wk, wv, wo; no query compression.
    g = cfg.kv_heads
    bias = (h * dqk + g * dqk + g * dv) if qkv_bias else 0
    return d * h * dqk + d * g * dqk + d * g * dv + h * dv * d + bias


def dense_ffn_params(cfg: ModelConfig) -> int:
    """SwiGLU MLP w2(silu(w1 x) * w3 x) of the first n_dense_layers."""
    return 3 * cfg.dim * cfg.inter_dim


def expert_params(cfg: ModelConfig) -> int:
    """One routed (or shared) expert: a SwiGLU MLP of width moe_inter_dim (V3 report §2.1.2)."""
    return 3 * cfg.dim * cfg.moe_inter_dim


def moe_nonrouted_params(cfg: ModelConfig) -> int:
    """Gate W [E, D] plus the shared experts of one MoE layer."""
    return cfg.n_routed_experts * cfg.dim + cfg.n_shared_experts * expert_params(cfg)


def block_params(cfg: ModelConfig, moe: bool, qkv_bias: bool = False) -> tuple[int, int]:
    """(non-routed, routed) parameters of one transformer block, both RMSNorm scales included."""
    base = attention_params(cfg, qkv_bias) + 2 * cfg.dim
    if not moe:
        return base + dense_ffn_params(cfg), 0
    return base + moe_nonrouted_params(cfg), cfg.n_routed_experts * expert_params(cfg)


def mtp_module_params(cfg: ModelConfig, qkv_bias: bool = False) -> tuple[int, int]:
    """(non-routed, routed) unique parameters of one MTP module (V3 report eq. 21-23).

    enorm, hnorm, eh_proj [2D, D], one block (MoE when the model has MoE layers) and the shared head's
    own RMSNorm; the embedding and output head are shared with the main model and not counted here.
    """
    shared, routed = block_params(cfg, cfg.n_moe_layers > 0, qkv_bias)
    return shared + 3 * cfg.dim + 2 * cfg.dim * cfg.dim, routed


def formula_param_counts(cfg: ModelConfig, qkv_bias: bool = False) -> ParamCounts:
    """Closed-form ParamCounts for any ModelConfig."""
    dense_shared, _ = block_params(cfg, False, qkv_bias)
    moe_shared, moe_routed = block_params(cfg, True, qkv_bias)
    mtp_shared, mtp_routed = mtp_module_params(cfg, qkv_bias)
    n_moe = cfg.n_moe_layers
    return ParamCounts(
        config=cfg,
        embedding=cfg.vocab_size * cfg.dim,
        head=cfg.dim * cfg.vocab_size,
        final_norm=cfg.dim,
        dense_layers=cfg.n_dense_layers * dense_shared,
        moe_nonrouted=n_moe * moe_shared if n_moe else 0,
        routed=n_moe * moe_routed if n_moe else 0,
        mtp_nonrouted=cfg.mtp_depth * mtp_shared,
        mtp_routed=cfg.mtp_depth * mtp_routed,
        router_state=(n_moe + (cfg.mtp_depth if n_moe else 0)) * cfg.n_routed_experts if cfg.router_bias else 0,
        source="formula",
    )
