"""The attention core shared by MLA and the baseline attentions: masks and fp32 softmax attention.

The core stays in high precision (V3 report §3.3): scores and softmax in fp32. Full-sequence (training) attention
is causal, so `causal_attention` skips the key blocks above the diagonal: query block i only scores keys
[0, end of block i), which with 4 blocks does 10/16 of the work of the full [T, T] scores.
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


def causal_blocks(t: int) -> int:
    """Query blocks for causal attention over t positions: 4 from 256 positions, 2 from 128, else 1."""
    return 4 if t >= 256 and t % 4 == 0 else 2 if t >= 128 and t % 2 == 0 else 1


def causal_attention(q, k, v, mask, scale: float, blocks: int | None = None):
    """softmax_attention for a full sequence whose mask is causal in the token index (key s visible to query t
    only if s <= t; segments may restrict it further): identical results, without the work above the diagonal.
    q [B,T,H,K], k [B,T,H,K], v [B,T,H,V], mask [B,T,T] -> [B,T,H,V]."""
    t = q.shape[1]
    n = blocks or causal_blocks(t)
    if n == 1 or k.shape[1] != t:
        return softmax_attention(q, k, v, mask, scale)
    c = t // n
    outs = [softmax_attention(q[:, i * c:(i + 1) * c], k[:, :(i + 1) * c], v[:, :(i + 1) * c],
                              mask[:, i * c:(i + 1) * c, :(i + 1) * c], scale) for i in range(n)]
    return jnp.concatenate(outs, axis=1)
