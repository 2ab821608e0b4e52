"""Baseline attentions for ablations: standard multi-head (MHA) and grouped-query (GQA) attention.

Not part of DeepSeek-V3; they let experiments compare MLA against the usual layouts at comparable size.
RoPE (with the same YaRN settings) rotates the whole qk head dim here. Like MLA they take an optional
per-head KV cache (k after rope, v; G kv heads) and return it updated, so a model trained with them decodes
through the same forward.
Legend: B batch, T/S positions, D model dim, H query heads, G kv heads, K qk head dim, V value head dim.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from dsv3_jax.layers import attention_core
from dsv3_jax.layers.kv_cache import CacheSlot
from dsv3_jax.layers.linear import fp8_kernel, matmul_fn, normal_init, weight
from dsv3_jax.layers.rope import apply_rope, rope_frequencies


def gqa_attention(x, p, positions, mask, n_heads: int, n_kv_heads: int, freqs, scale: float, mm,
                  cache: CacheSlot | None = None):
    """x [B,T,D] -> (y [B,T,D], cache); each of the G kv heads serves H/G query heads (G = H is MHA)."""
    b, t = x.shape[:2]
    q = mm(x, p["wq"]).reshape(b, t, n_heads, -1)
    k = mm(x, p["wk"]).reshape(b, t, n_kv_heads, -1)
    v = mm(x, p["wv"]).reshape(b, t, n_kv_heads, -1)
    q, k = apply_rope(q, positions, freqs), apply_rope(k, positions, freqs)
    if cache is not None:
        cache = cache.write({"k": k, "v": v}, positions)
        kv = cache.read(mask.shape[-1])  # the slots the mask covers
        k, v = kv["k"].astype(q.dtype), kv["v"].astype(q.dtype)
    rep = n_heads // n_kv_heads
    k, v = jnp.repeat(k, rep, axis=2), jnp.repeat(v, rep, axis=2)
    attend = attention_core.softmax_attention if cache is not None else attention_core.causal_attention
    o = attend(q, k, v, mask, scale)
    return mm(o.reshape(b, t, -1), p["wo"]), cache


def cache_entries(cfg, latent: bool) -> dict[str, tuple[int, ...]]:
    """Per-token, per-layer cache entries {k: (G, K), v: (G, V)}; there is no latent layout."""
    if latent:
        raise ValueError(f"ModelConfig.attention={cfg.attention!r} has no latent KV cache (that is MLA's); "
                         "make the cache with absorb=False")
    return {"k": (cfg.kv_heads, cfg.qk_head_dim), "v": (cfg.kv_heads, cfg.v_head_dim)}


class GQA(nn.Module):
    """Holds wq [D,H·K], wk [D,G·K], wv [D,G·V], wo [H·V,D]."""

    cfg: "object"
    mesh: Any = None  # the activation mesh: weights gathered at use (linear.weight)

    @nn.compact
    def __call__(self, x, positions, mask, cache: CacheSlot | None = None, norm=None):
        """norm: the block's attention RMSNorm, applied to x first (kept as under remat="none": the paper's
        recompute regions, layers/recompute.py, cover MLA only)."""
        c = self.cfg
        x = x if norm is None else norm(x)
        h, g, k, v = c.n_heads, c.kv_heads, c.qk_head_dim, c.v_head_dim

        def w(name, shape, axes):
            return fp8_kernel(self, name, weight(self, name, shape, axes, normal_init(c.init_std), self.mesh), c)

        p = {"wq": w("wq", (c.dim, h * k), ("embed", "heads")),
             "wk": w("wk", (c.dim, g * k), ("embed", "heads")),
             "wv": w("wv", (c.dim, g * v), ("embed", "heads")),
             "wo": w("wo", (h * v, c.dim), ("heads", "embed"))}
        freqs = rope_frequencies(k, c.rope_theta, yarn=c.yarn_active, factor=c.rope_factor,
                                 original_seq_len=c.original_seq_len, beta_fast=c.beta_fast, beta_slow=c.beta_slow)
        return gqa_attention(x, p, positions, mask, h, g, freqs, c.softmax_scale, matmul_fn(c), cache)
