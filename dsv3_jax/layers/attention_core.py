"""The attention core shared by MLA and the baseline attentions: masks and fp32 softmax attention.

The core stays in high precision (V3 report §3.3): scores and softmax in fp32.
Long sequences run over blocks of queries (`over_query_blocks`): the fp32 scores of V3's 128 heads at 4096
tokens are 8 GiB per sequence, so when one sequence's [H, T, S] scores exceed SCORE_BLOCK_BYTES the queries are
split into blocks, each block's attention is rematerialized in the backward, and only q, k, v (not the
probabilities) are kept: the memory shape of a flash-attention kernel (the analytic estimate's assumption,
analysis/activations.py). Each query row is computed by the same operations as without blocks; short
sequences (every test) take the single-block path unchanged.
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


SCORE_BLOCK_BYTES = 256 * 2**20  # fp32 scores of one sequence's query block: [H, block, S] · 4 B at most


def query_block(n_queries: int, n_keys: int, n_heads: int) -> int:
    """Queries per block: all of them when one sequence's fp32 scores fit SCORE_BLOCK_BYTES, else the largest
    power of two dividing n_queries that does."""
    if n_heads * n_queries * n_keys * 4 <= SCORE_BLOCK_BYTES:
        return n_queries
    block = 1
    while n_queries % (2 * block) == 0 and n_heads * 2 * block * n_keys * 4 <= SCORE_BLOCK_BYTES:
        block *= 2
    return block


def over_query_blocks(fn, blocked: tuple, shared: tuple, n_keys: int, n_heads: int):
    """fn(*blocked, *shared) -> [B, T, ...], run block by block over the query axis (axis 1 of every `blocked`
    array: queries and their mask rows) with each block rematerialized in the backward (module docstring)."""
    b, t = blocked[0].shape[:2]
    block = query_block(t, n_keys, n_heads)
    if block >= t:
        return fn(*blocked, *shared)
    n = t // block
    split = lambda a: jnp.moveaxis(a.reshape((b, n, block) + a.shape[2:]), 1, 0)
    out = jax.lax.map(jax.checkpoint(lambda parts: fn(*parts, *shared)), tuple(split(a) for a in blocked))
    return jnp.moveaxis(out, 0, 1).reshape((b, t) + out.shape[3:])


def softmax_attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, mask: jnp.ndarray,
                      scale: float) -> jnp.ndarray:
    """o[b,t,h] = Σ_s softmax_s(q·k · scale)[mask] v; q [B,T,H,K], k [B,S,H,K], v [B,S,H,V] -> [B,T,H,V]."""
    def core(q, mask, k, v):
        scores = jnp.einsum("bthk,bshk->bhts", q, k, preferred_element_type=jnp.float32) * scale
        return attend(scores, v, mask)
    return over_query_blocks(core, (q, mask), (k, v), k.shape[1], q.shape[2])


def attend(scores: jnp.ndarray, v: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    """Masked fp32 softmax over s of scores [B,H,T,S], then the weighted sum of v [B,S,H,V] -> [B,T,H,V]."""
    scores = jnp.where(mask[:, None, :, :], scores.astype(jnp.float32), NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1)
    probs = jnp.where(mask[:, None, :, :], probs, 0.0)
    return jnp.einsum("bhts,bshv->bthv", probs.astype(v.dtype), v, preferred_element_type=jnp.float32
                      ).astype(v.dtype)
