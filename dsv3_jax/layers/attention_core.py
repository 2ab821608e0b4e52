"""The attention core shared by MLA and the baseline attentions: masks and fp32 softmax attention.

The core stays in high precision (V3 report §3.3): scores and softmax in fp32.
Legend: B batch, T query positions, S key positions, H heads, K qk head dim, V value head dim.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = -1e30  # finite, so fully masked rows (padding) give zeros instead of NaN


def causal_mask(q_index: jnp.ndarray, k_index: jnp.ndarray, q_segment=None, k_segment=None,
                k_valid=None) -> jnp.ndarray:
    """Boolean mask [B, T, S]: key s is visible to query t iff k_index <= q_index, the segments (packed
    documents) agree, and the key slot is valid (decode caches). Indices are positions in the token stream."""
    mask = k_index[:, None, :] <= q_index[:, :, None]
    if q_segment is not None:
        mask &= q_segment[:, :, None] == k_segment[:, None, :]
    if k_valid is not None:
        mask &= k_valid[:, None, :]
    return mask


def softmax_attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, mask: jnp.ndarray,
                      scale: float) -> jnp.ndarray:
    """o[b,t,h] = Σ_s softmax_s(q·k · scale)[mask] v; q [B,T,H,K], k [B,S,H,K], v [B,S,H,V] -> [B,T,H,V]."""
    scores = jnp.einsum("bthk,bshk->bhts", q, k, preferred_element_type=jnp.float32) * scale
    return attend(scores, v, mask)


def attend(scores: jnp.ndarray, v: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    """Masked fp32 softmax over s of scores [B,H,T,S], then the weighted sum of v [B,S,H,V] -> [B,T,H,V]."""
    scores = jnp.where(mask[:, None, :, :], scores.astype(jnp.float32), NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1)
    probs = jnp.where(mask[:, None, :, :], probs, 0.0)
    return jnp.einsum("bhts,bshv->bthv", probs.astype(v.dtype), v, preferred_element_type=jnp.float32
                      ).astype(v.dtype)
