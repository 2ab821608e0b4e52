"""One transformer block over new tokens with a KV cache, from the block's parameter dict.

The same math as layers/block.py (pre-norm residual, REFERENCE §2 "Block"), reusing the layers' pure
functions: mla_queries / mla_latents / attend_absorbed / mla_output (V3 report eq. 1-11),
swiglu, and the DeepSeekMoE router and dispatch (eq. 12-16) with the aux-loss-free bias steering selection
exactly as in training. The training layers have no decode mode; this module is the decode counterpart.

absorb (default): cache kv_norm(c_kv) and k_pe; W_UK is absorbed into q and W_UV into the output.
naive: cache the expanded per-head k = [k_nope; k_pe] and v; ordinary softmax attention over them.

Legend: B batch, T new tokens, S cache slots, D model dim, H heads, N qk nope dim, R rope dim,
K = N + R, V value head dim, C kv latent, E routed experts.
"""

from __future__ import annotations

import jax.numpy as jnp

from dsv3_jax.infer.cache import layer_view, write_entries
from dsv3_jax.layers import attention_core
from dsv3_jax.layers.linear import matmul_fn
from dsv3_jax.layers.mla import attend_absorbed, mla_latents, mla_output, mla_queries
from dsv3_jax.layers.mlp import swiglu
from dsv3_jax.layers.moe import dispatch, router
from dsv3_jax.layers.norms import rms_norm
from dsv3_jax.layers.rope import frequencies_for


def expand_kv(c_kv, k_pe, wkv_b, n_heads: int, nope_dim: int, mm):
    """Naive path: per-head keys k [B,T,H,K] = [c_kv W_UK; k_pe] and values v [B,T,H,V] = c_kv W_UV (eq. 2-5),
    computed as layers/mla.py attend_naive does (one wkv_b matmul, then the per-head split)."""
    kv = mm(c_kv, wkv_b).reshape(c_kv.shape[:2] + (n_heads, -1))  # [B,T,H,N+V]
    k_nope, v = kv[..., :nope_dim], kv[..., nope_dim:]
    k_pe = jnp.broadcast_to(k_pe[:, :, None, :], k_pe.shape[:2] + (n_heads, k_pe.shape[-1]))
    return jnp.concatenate([k_nope, k_pe.astype(k_nope.dtype)], axis=-1), v


def mla_cached(cfg, p, x, positions, mask, kv, layer, absorb: bool):
    """MLA for new tokens x [B,T,D] at positions [B,T]: write their cache entries into layer `layer` of kv,
    then attend over the layer's cache (mask [B,T,S]). Returns (out [B,T,D], kv)."""
    mm = matmul_fn(cfg)
    freqs = frequencies_for(cfg)
    h, n = cfg.n_heads, cfg.qk_nope_head_dim
    q_nope, q_pe = mla_queries(x, p, positions, freqs, h, n, cfg.norm_eps, mm)
    c_kv, k_pe = mla_latents(x, p, positions, freqs, cfg.kv_lora_rank, cfg.norm_eps, mm)
    if absorb:
        kv = write_entries(kv, layer, {"c_kv": c_kv, "k_pe": k_pe}, positions)
        cached = layer_view(kv, layer)
        o = attend_absorbed(q_nope, q_pe, cached["c_kv"], cached["k_pe"], p["wkv_b"], mask, cfg.softmax_scale)
    else:
        k, v = expand_kv(c_kv, k_pe, p["wkv_b"], h, n, mm)
        kv = write_entries(kv, layer, {"k": k, "v": v}, positions)
        cached = layer_view(kv, layer)
        q = jnp.concatenate([q_nope, q_pe.astype(q_nope.dtype)], axis=-1)
        o = attention_core.softmax_attention(q, cached["k"].astype(q.dtype), cached["v"].astype(q.dtype), mask,
                                             cfg.softmax_scale)
    return mla_output(o, p["wo"], mm), kv


def moe_ffn(cfg, p, bias, x):
    """DeepSeekMoE on x [B,T,D] (as layers/moe/layer.py MoE, without the training statistics).

    `bias` [E] is the aux-loss-free correction from the `router` collection: it only steers selection."""
    b, t, d = x.shape
    tokens = x.reshape(b * t, d)
    r = router.route(tokens, p["gate"], bias if cfg.router_bias else None, score_func=cfg.score_func,
                     n_groups=cfg.n_expert_groups, topk_groups=cfg.n_limited_groups, k=cfg.n_activated_experts,
                     route_scale=cfg.route_scale)
    impl = dispatch.routed_experts_ragged if cfg.moe_impl == "ragged" else dispatch.routed_experts_dense
    e = p["routed_experts"]
    y = impl(tokens, r.weights, r.experts, e["w1"], e["w2"], e["w3"], jnp.dtype(cfg.dtype))
    if cfg.n_shared_experts:
        s = p["shared_experts"]
        y = y + swiglu(tokens, s["w1"], s["w2"], s["w3"], matmul_fn(cfg))
    return y.reshape(b, t, d).astype(x.dtype)


def block_cached(cfg, p, bias, x, positions, mask, kv, layer, absorb: bool, moe: bool):
    """x += MLA(attn_norm(x)); x += FFN(ffn_norm(x)) for new tokens x [B,T,D]. Returns (x, kv)."""
    a, kv = mla_cached(cfg, p["attn"], rms_norm(x, p["attn_norm"]["scale"], cfg.norm_eps), positions, mask,
                       kv, layer, absorb)
    x = x + a
    h = rms_norm(x, p["ffn_norm"]["scale"], cfg.norm_eps)
    if moe:
        y = moe_ffn(cfg, p["moe"], bias, h)
    else:
        y = swiglu(h, p["mlp"]["w1"], p["mlp"]["w2"], p["mlp"]["w3"], matmul_fn(cfg))
    return x + y, kv


def cache_mask(positions, n_slots: int):
    """[B,T,S]: query at position p sees slots s <= p (slot = position; stale slots > p stay hidden)."""
    slots = jnp.broadcast_to(jnp.arange(n_slots, dtype=jnp.int32), (positions.shape[0], n_slots))
    return attention_core.causal_mask(positions, slots)
