"""KV-cache size per token for MLA, GQA and MHA (Insights §2.1.2, Table 1; V3 report §2.1.1).

All sizes are bytes per token summed over layers; bf16 (2 bytes per value) is the paper's convention.
- MLA ("absorb" decode, docs/paper.md §2): each layer caches the normalized latent c_kv [kv_lora_rank] and the
  one shared RoPE key k_pe [qk_rope_head_dim]: V3 61·(512+64)·2 = 70,272 B.
- GQA: each layer caches a key [d_k] and a value [d_v] per KV head: Qwen-2.5 72B 80·8·(128+128)·2 =
  327,680 B; LLaMA-3.1 405B 126·8·256·2 = 516,096 B.
- MHA is GQA with one KV head per query head; "MLA naive" caches MLA's full per-head keys and values.
"""

from __future__ import annotations

from dsv3_jax.config import ModelConfig

BF16_BYTES = 2


def mla_kv_bytes_per_token(n_layers: int, kv_lora_rank: int, rope_dim: int, bytes_per_value: int = BF16_BYTES) -> int:
    """MLA latent cache: layers · (c_kv + shared k_pe) · bytes."""
    return n_layers * (kv_lora_rank + rope_dim) * bytes_per_value


def gqa_kv_bytes_per_token(n_layers: int, n_kv_heads: int, k_head_dim: int, v_head_dim: int,
                           bytes_per_value: int = BF16_BYTES) -> int:
    """GQA cache: layers · kv_heads · (d_k + d_v) · bytes."""
    return n_layers * n_kv_heads * (k_head_dim + v_head_dim) * bytes_per_value


def mha_kv_bytes_per_token(n_layers: int, n_heads: int, k_head_dim: int, v_head_dim: int,
                           bytes_per_value: int = BF16_BYTES) -> int:
    """MHA cache: GQA with n_kv_heads == n_heads."""
    return gqa_kv_bytes_per_token(n_layers, n_heads, k_head_dim, v_head_dim, bytes_per_value)


def kv_bytes_per_token(cfg: ModelConfig, bytes_per_value: int = BF16_BYTES, mla_naive: bool = False) -> int:
    """Bytes of KV cache per token of `cfg` (main model layers; MTP's cache is not counted).

    mla_naive=True gives the size MLA would need without absorption (full per-head k [192] and v [128]).
    """
    if cfg.attention == "mla" and not mla_naive:
        return mla_kv_bytes_per_token(cfg.n_layers, cfg.kv_lora_rank, cfg.qk_rope_head_dim, bytes_per_value)
    heads = cfg.n_heads if cfg.attention == "mla" else cfg.kv_heads
    return gqa_kv_bytes_per_token(cfg.n_layers, heads, cfg.qk_head_dim, cfg.v_head_dim, bytes_per_value)


def kv_cache_bytes(cfg: ModelConfig, context_len: int, batch: int = 1, bytes_per_value: int = BF16_BYTES) -> int:
    """Whole cache for `batch` sequences of `context_len` tokens."""
    if context_len < 0 or batch < 0:
        raise ValueError(f"kv_cache_bytes: context_len and batch must be >= 0, got {context_len}, {batch}")
    return kv_bytes_per_token(cfg, bytes_per_value) * context_len * batch
