"""Preallocated KV cache for decoding, in the absorbed (latent) or naive (per-head K/V) layout.

MLA (V3 report §2.1.1, eq. 1-5; REFERENCE §2 "absorb"): with W_UK absorbed into the query and W_UV into the
output, attention needs per token and layer only kv_norm(c_kv) [C] and the one rope key k_pe [R] that all
heads share, (C + R) values: DeepSeek-V3 in bf16 caches 61·(512+64)·2 = 70,272 B per token. The naive layout
caches every head's key [K = N + R] and value [V]: 61·128·(192+128)·2 = 4,997,120 B per token.

Layout: `groups` maps a layer group ('dense_layers', 'moe_layers', or 'mtp' for the MTP modules) to its
arrays with a leading layer axis, [L, B, S, ...]. Slot s of row b holds the token at position s of sequence b
(prompts are right-padded, positions start at 0 in every row). `lengths[b]` counts the valid slots. Slots at
or past the length may hold stale entries (padding, rejected drafts); attention never sees them because a
query at position p only attends slots s <= p, and every slot <= p was written by a real token first.

Legend: L layers of a group, B batch, S slots (max_len), T new tokens, C kv latent, R rope dim, H heads,
K qk head dim, V value head dim.
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import numpy as np


@flax.struct.dataclass
class KVCache:
    groups: dict  # group name -> {entry name -> [L, B, S, ...]}
    lengths: jnp.ndarray  # [B] int32 valid slots per sequence
    absorb: bool = flax.struct.field(pytree_node=False, default=True)

    @property
    def batch(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def max_len(self) -> int:
        return int(jax.tree.leaves(self.groups)[0].shape[2])


def entry_shapes(cfg, absorb: bool) -> dict[str, tuple[int, ...]]:
    """Per-token, per-layer entries: absorb {'c_kv': (C,), 'k_pe': (R,)}; naive {'k': (H, K), 'v': (H, V)}."""
    if cfg.attention != "mla":
        raise ValueError(f"infer: decoding supports ModelConfig.attention='mla' only, got {cfg.attention!r}")
    if absorb:
        return {"c_kv": (cfg.kv_lora_rank,), "k_pe": (cfg.qk_rope_head_dim,)}
    return {"k": (cfg.n_heads, cfg.qk_head_dim), "v": (cfg.n_heads, cfg.v_head_dim)}


def main_layer_groups(cfg) -> dict[str, int]:
    """The main model's scanned layer groups and their sizes (model.py parameter tree)."""
    groups = {"dense_layers": cfg.n_dense_layers, "moe_layers": cfg.n_moe_layers}
    return {name: n for name, n in groups.items() if n}


def init_cache(cfg, batch: int, max_len: int, *, absorb: bool = True, dtype=None,
               layers: dict[str, int] | None = None) -> KVCache:
    """An empty cache for `batch` sequences of up to `max_len` tokens (dtype defaults to cfg.dtype).

    `layers` (group -> number of layers) defaults to the main model's groups."""
    if batch < 1:
        raise ValueError(f"init_cache: batch must be >= 1, got {batch}")
    if not 1 <= max_len <= cfg.max_seq_len:
        raise ValueError(f"init_cache: max_len must be in [1, ModelConfig.max_seq_len={cfg.max_seq_len}], "
                         f"got {max_len}")
    dtype = jnp.dtype(dtype or cfg.dtype)
    shapes = entry_shapes(cfg, absorb)
    layers = main_layer_groups(cfg) if layers is None else layers
    groups = {g: {name: jnp.zeros((n, batch, max_len) + s, dtype) for name, s in shapes.items()}
              for g, n in layers.items()}
    return KVCache(groups=groups, lengths=jnp.zeros((batch,), jnp.int32), absorb=absorb)


def cache_bytes_per_token(cfg, *, absorb: bool = True, bytes_per_value: int = 2) -> int:
    """Cache bytes per token over the main model's layers (bf16 by default; MTP modules not counted).

    absorb: n_layers·(C + R)·bytes (V3: 70,272); naive: n_layers·H·(K + V)·bytes (V3: 4,997,120)."""
    per_layer = sum(int(np.prod(s)) for s in entry_shapes(cfg, absorb).values())
    return cfg.n_layers * per_layer * bytes_per_value


def cache_bytes(cache: KVCache) -> int:
    """Bytes actually allocated by the cache's entry arrays (all groups, all slots)."""
    return sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(cache.groups))


def write_entries(kv: dict, layer, new: dict, positions) -> dict:
    """Write new entries {name: [B, T, ...]} of layer `layer` into kv {name: [L, B, S, ...]} at slots =
    positions [B, T]. Positions outside [0, S) are dropped (never wrapped), so a window that starts before
    position 0 (MTP drafting on short prompts) writes nothing there."""
    out = {}
    for name, arr in kv.items():
        slots = arr.shape[2]
        pos = jnp.where((positions >= 0) & (positions < slots), positions, slots)
        rows = jnp.arange(positions.shape[0])[:, None]
        out[name] = arr.at[layer, rows, pos].set(new[name].astype(arr.dtype), mode="drop")
    return out


def layer_view(kv: dict, layer) -> dict:
    """The [B, S, ...] arrays of one layer."""
    return {name: arr[layer] for name, arr in kv.items()}
