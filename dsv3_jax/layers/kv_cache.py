"""The KV cache the attention layers read and write during prefill, decoding and drafting.

One forward serves every mode (docs/architecture.md): attention takes an optional `CacheSlot` and returns the
updated one. A cache group (one scanned stack of blocks, or the MTP modules) keeps its layers' entries
stacked, {name: [L, B, S, ...]}; a `CacheSlot` is that stack plus the index of the layer it stands for, so a
block writes its new entries in place (a scatter into the stack that lax.scan carries) and reads its own
layer. Entries per token and layer (docs/numerics.md "KV cache"):

    latent (MLA, absorbed, V3 report §2.1.1):  c_kv [C] (after kv_norm) and the shared rope key k_pe [R]
    per_head (MLA naive, MHA, GQA):            k [G, K] (rope applied) and v [G, V]

Slot s of row b holds the token at position s (prompts are right-padded and start at position 0 in every
row). `KVCache.lengths[b]` counts the valid slots; slots past it may hold stale entries (padding, rejected
drafts), which no query sees: a query at position p attends slots s <= p only, all written by real tokens.
Legend: L layers of a group, B batch, S slots, T new tokens, C kv latent, R rope dim, G kv heads, K qk head
dim, V value head dim.
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp

from dsv3_jax.layers.attention_core import causal_mask

LATENT_ENTRIES = ("c_kv", "k_pe")
PER_HEAD_ENTRIES = ("k", "v")


@flax.struct.dataclass
class CacheSlot:
    """Layer `layer` of a group's stacked entries {name: [L, B, S, ...]}."""

    entries: dict
    layer: jnp.ndarray  # int32 scalar

    @property
    def latent(self) -> bool:
        """True for the absorbed MLA layout (c_kv, k_pe), False for per-head keys and values."""
        return "c_kv" in self.entries

    @property
    def n_slots(self) -> int:
        return next(iter(self.entries.values())).shape[2]

    def write(self, new: dict, positions) -> "CacheSlot":
        """Store new entries {name: [B, T, ...]} at slots = positions [B, T]. Positions outside [0, S) are
        dropped, never wrapped (an MTP window starting before position 0 writes nothing there)."""
        if set(new) != set(self.entries):
            raise ValueError(f"cache: expected entries {sorted(self.entries)}, got {sorted(new)} (a cache made "
                             "for another attention layout)")
        rows = jnp.arange(positions.shape[0])[:, None]
        out = {}
        for name, arr in self.entries.items():
            slots = arr.shape[2]
            pos = jnp.where((positions >= 0) & (positions < slots), positions, slots)
            out[name] = arr.at[self.layer, rows, pos].set(new[name].astype(arr.dtype), mode="drop")
        return self.replace(entries=out)

    def read(self, n_slots: int | None = None) -> dict:
        """This layer's entries {name: [B, S, ...]}, or of its first n_slots slots only (static): what a mask
        [B, T, n_slots] covers (a prefill from an empty cache sees slots < T; model.DeepSeekV3.extend)."""
        if n_slots is not None and not 1 <= n_slots <= self.n_slots:
            raise ValueError(f"cache read: n_slots must be in [1, {self.n_slots}], got {n_slots}")
        return {name: arr[self.layer, :, :n_slots] for name, arr in self.entries.items()}


@flax.struct.dataclass
class KVCache:
    """The model's cache: {group: stacked entries} for the main model's stacks (param_tree.STACKS) or the
    MTP modules ('mtp'), and the valid length of every sequence."""

    groups: dict  # group name -> {entry name -> [L, B, S, ...]}
    lengths: jnp.ndarray  # [B] int32
    absorb: bool = flax.struct.field(pytree_node=False, default=True)  # latent (True) or per-head layout

    @property
    def batch(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def max_len(self) -> int:
        return int(jax.tree.leaves(self.groups)[0].shape[2])


def cache_mask(positions, n_slots: int):
    """[B, T, S]: the query at position p sees slots s <= p (slot = position; stale slots > p stay hidden)."""
    slots = jnp.broadcast_to(jnp.arange(n_slots, dtype=jnp.int32), (positions.shape[0], n_slots))
    return causal_mask(positions, slots)
