"""Preallocated KV caches for decoding, in the latent (absorbed MLA) or per-head layout.

MLA (V3 report §2.1.1, eq. 1-5; docs/numerics.md "KV cache"): with W_UK absorbed into the query and W_UV into
the output, attention needs per token and layer only kv_norm(c_kv) [C] and the one rope key k_pe [R] that
all heads share: DeepSeek-V3 in bf16 caches 61·(512+64)·2 = 70,272 B per token. The per-head layout caches
every head's key [K = N + R] and value [V]: 61·128·(192+128)·2 = 4,997,120 B per token. MHA/GQA models
(ablation baselines) have only the per-head layout, with their G kv heads.

The cache data structure (`KVCache`, `CacheSlot`) is the attention layers' (layers/kv_cache.py): groups map a
layer group (the main model's stacks, param_tree.STACKS, or MTP_GROUP for the MTP modules) to stacked entries
[L, B, S, ...]. The layout is chosen here, when the cache is made (`absorb`).
Legend: L layers of a group, B batch, S slots (max_len).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from dsv3_jax import param_tree as pt
from dsv3_jax.layers import attention
from dsv3_jax.layers.kv_cache import CacheSlot, KVCache

MTP_GROUP = "mtp"  # the MTP modules' cache group (module k uses layer k)

__all__ = ["KVCache", "CacheSlot", "MTP_GROUP", "init_cache", "cache_layout", "cache_bytes_per_token",
           "cache_bytes"]


def cache_layout(cfg, absorb: bool | None) -> bool:
    """True for the latent layout. None = the attention's default (latent for MLA, per-head otherwise)."""
    return attention.default_latent(cfg) if absorb is None else bool(absorb)


def init_cache(cfg, batch: int, max_len: int, *, absorb: bool | None = None, dtype=None,
               layers: dict[str, int] | None = None) -> KVCache:
    """An empty cache for `batch` sequences of up to `max_len` tokens (dtype defaults to cfg.dtype).

    absorb: the latent layout (MLA only) or the per-head one; None = the attention kind's default.
    layers (group -> number of layers) defaults to the main model's stacks; {MTP_GROUP: D} for the drafter."""
    if batch < 1:
        raise ValueError(f"init_cache: batch must be >= 1, got {batch}")
    if not 1 <= max_len <= cfg.max_seq_len:
        raise ValueError(f"init_cache: max_len must be in [1, ModelConfig.max_seq_len={cfg.max_seq_len}], "
                         f"got {max_len}")
    latent = cache_layout(cfg, absorb)
    dtype = jnp.dtype(dtype or cfg.dtype)
    shapes = attention.cache_entries(cfg, latent)
    layers = pt.stack_sizes(cfg) if layers is None else layers
    keys = [(g, name) for g in layers for name in shapes]
    arrays, lengths = _zeros(tuple((layers[g], batch, max_len) + shapes[name] for g, name in keys), dtype, batch)
    groups = {g: {} for g in layers}
    for (g, name), arr in zip(keys, arrays):
        groups[g][name] = arr
    return KVCache(groups=groups, lengths=lengths, absorb=latent)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _zeros(shapes: tuple, dtype, batch: int):
    """(zero entry arrays of these shapes, int32 zero lengths [batch]) made by one program: one dispatch for the
    whole cache instead of one per array (each about 0.1 ms on the CPU, against a 10 ms short prefill)."""
    return tuple(jnp.zeros(s, dtype) for s in shapes), jnp.zeros((batch,), jnp.int32)


def cache_bytes_per_token(cfg, *, absorb: bool | None = None, bytes_per_value: int = 2) -> int:
    """Cache bytes per token over the main model's layers (bf16 by default; MTP modules not counted).

    latent: n_layers·(C + R)·bytes (V3: 70,272); per-head: n_layers·G·(K + V)·bytes (V3: 4,997,120)."""
    per_layer = sum(int(np.prod(s)) for s in attention.cache_entries(cfg, cache_layout(cfg, absorb)).values())
    return cfg.n_layers * per_layer * bytes_per_value


def cache_bytes(cache: KVCache) -> int:
    """Bytes actually allocated by the cache's entry arrays (all groups, all slots)."""
    return sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(cache.groups))
