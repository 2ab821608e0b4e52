"""The attention-kind registry (ModelConfig.attention): which module a Block uses and which KV caches it has.

    "mla"  Multi-head Latent Attention (V3 report §2.1.1): latent cache (absorbed) or per-head cache
    "mha"  standard multi-head attention (ablation baseline): per-head cache
    "gqa"  grouped-query attention with ModelConfig.n_kv_heads kv heads (ablation baseline): per-head cache

Every module has the signature `Module(cfg)(x, positions, mask, cache=None) -> (y, cache)`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from dsv3_jax import param_tree
from dsv3_jax.layers import baseline_attention, mla
from dsv3_jax.registry import Registry


@dataclasses.dataclass(frozen=True)
class AttentionKind:
    module: type  # Flax module class taking cfg
    has_latent_cache: bool
    cache_entries: Callable  # (cfg, latent: bool) -> {entry name: per-token shape}


ATTENTIONS = Registry("attention", "attention kind")
ATTENTIONS.register("mla", AttentionKind(mla.MLA, True, mla.cache_entries))
ATTENTIONS.register("mha", AttentionKind(baseline_attention.GQA, False, baseline_attention.cache_entries))
ATTENTIONS.register("gqa", AttentionKind(baseline_attention.GQA, False, baseline_attention.cache_entries))


def attention_module(cfg, mesh=None):
    """The attention module of a Block, named as the parameter tree expects; `mesh`: the activation mesh its
    weights are gathered on at use (None: one device)."""
    return ATTENTIONS.get(cfg.attention).module(cfg, mesh=mesh, name=param_tree.ATTN)


def default_latent(cfg) -> bool:
    """The cache layout decoding uses unless told otherwise: latent where the attention has one."""
    return ATTENTIONS.get(cfg.attention).has_latent_cache


def cache_entries(cfg, latent: bool) -> dict[str, tuple[int, ...]]:
    """Per-token, per-layer KV-cache entries of the model's attention in the chosen layout."""
    return ATTENTIONS.get(cfg.attention).cache_entries(cfg, latent)
