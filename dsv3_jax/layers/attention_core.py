"""The attention core shared by MLA and the baseline attentions: masks and fp32 softmax attention.

The core stays in high precision (V3 report §3.3): scores and softmax in fp32. Two ways of bounding the work and
the memory compose:
- Full-sequence (training) attention is causal, so `causal_attention` skips the key blocks above the diagonal:
  query block i only scores keys [0, end of block i), which with 4 blocks does 10/16 of the work of the full
  [T, T] scores.
- Long sequences run over blocks of queries (`over_query_blocks`, inside every `softmax_attention`, so also
  inside each causal block): the fp32 scores of V3's 128 heads at 4096 tokens are 8 GiB per sequence, so when
  the batch's [B, H, T, S] scores exceed SCORE_BLOCK_BYTES the queries are split into blocks, each block's
  attention is rematerialized in the backward, and only q, k, v (not the probabilities) are kept: the memory
  shape of a flash-attention kernel (the analytic estimate's assumption, analysis/activations.py).
Each query row is computed by the same operations as without blocks; short sequences take the single-block path.
`masked_attention` is the one softmax attention under both: heads-major batched GEMMs and a closed-form backward
from the kept probabilities.
Legend: B batch, T query positions, S key positions, H heads, K qk head dim, V value head dim.
"""

from __future__ import annotations

import functools

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


SCORE_BLOCK_BYTES = 256 * 2**20  # fp32 scores of one query block of the whole batch: [B, H, block, S] · 4 B
MIN_QUERY_BLOCK = 128  # the block never shrinks below this (B is the global batch under GSPMD: per device less)


def query_block(n_queries: int, n_keys: int, n_heads: int, batch: int = 1) -> int:
    """Queries per block: all of them when the batch's fp32 scores fit SCORE_BLOCK_BYTES, else the largest
    power of two dividing n_queries that does (at least MIN_QUERY_BLOCK when that divides n_queries)."""
    row = batch * n_heads * n_keys * 4
    if row * n_queries <= SCORE_BLOCK_BYTES:
        return n_queries
    block = 1
    while n_queries % (2 * block) == 0 and (row * 2 * block <= SCORE_BLOCK_BYTES or 2 * block <= MIN_QUERY_BLOCK):
        block *= 2
    return block


def over_query_blocks(fn, blocked: tuple, shared: tuple, n_keys: int, n_heads: int):
    """fn(*blocked, *shared) -> [B, T, ...], run block by block over the query axis (axis 1 of every `blocked`
    array: queries and their mask rows; the last one is the boolean mask), the backward recomputing each block
    (module docstring)."""
    b, t = blocked[0].shape[:2]
    block = query_block(t, n_keys, n_heads, b)
    if block >= t:
        return fn(*blocked, *shared)
    return _blocked(fn, t // block)(blocked[:-1], blocked[-1], shared)


def _blocked(fn, n: int):
    """The blocked computation as a custom_vjp: its residuals are its inputs whatever remat policy surrounds it
    (an outer jax.checkpoint policy that saves dots would otherwise keep every block's scores)."""
    split = lambda a: jnp.moveaxis(a.reshape((a.shape[0], n, a.shape[1] // n) + a.shape[2:]), 1, 0)
    merge = lambda a: jnp.moveaxis(a, 0, 1).reshape((a.shape[1], a.shape[0] * a.shape[2]) + a.shape[3:])
    block_fn = lambda parts, mask, shared: fn(*parts, mask, *shared)

    @jax.custom_vjp
    def run(parts, mask, shared):
        return merge(jax.lax.map(lambda xs: block_fn(xs[0], xs[1], shared), (tuple(map(split, parts)), split(mask))))

    def fwd(parts, mask, shared):
        return run(parts, mask, shared), (parts, mask, shared)

    def bwd(res, g):
        parts, mask, shared = res

        def body(acc, xs):
            p, m, gb = xs
            _, pull = jax.vjp(lambda p, sh: block_fn(p, m, sh), p, shared)
            dp, dsh = pull(gb)
            return jax.tree.map(jnp.add, acc, dsh), dp
        acc = jax.tree.map(jnp.zeros_like, shared)
        dsh, dparts = jax.lax.scan(body, acc, (tuple(map(split, parts)), split(mask), split(g)))
        return tuple(map(merge, dparts)), None, dsh

    run.defvjp(fwd, bwd)
    return run


def softmax_attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, mask: jnp.ndarray,
                      scale: float) -> jnp.ndarray:
    """o[b,t,h] = Σ_s softmax_s(q·k · scale)[mask] v; q [B,T,H,K], k [B,S,H,K], v [B,S,H,V] -> [B,T,H,V]."""
    core = lambda q, mask, k, v: masked_attention(q, k, v, mask, scale)  # noqa: E731
    return over_query_blocks(core, (q, mask), (k, v), k.shape[1], q.shape[2])


def causal_blocks(t: int) -> int:
    """Query blocks for causal attention over t positions: 4 from 256 positions, 2 from 128, else 1."""
    return 4 if t >= 256 and t % 4 == 0 else 2 if t >= 128 and t % 2 == 0 else 1


def causal_attention(q, k, v, mask, scale: float, blocks: int | None = None):
    """softmax_attention for a full sequence whose mask is causal in the token index (key s visible to query t
    only if s <= t; segments may restrict it further): identical results, without the work above the diagonal.
    q [B,T,H,K], k [B,T,H,K], v [B,T,H,V], mask [B,T,T] -> [B,T,H,V]. When no block needs query blocks of its
    own, the operands go heads-major once for all the causal blocks (not once per block)."""
    b, t, h = q.shape[:3]
    n = blocks or causal_blocks(t)
    if n == 1 or k.shape[1] != t:
        return softmax_attention(q, k, v, mask, scale)
    c = t // n
    if query_block(c, t, h, b) < c:  # long sequences: every causal block runs over query blocks
        outs = [softmax_attention(q[:, i * c:(i + 1) * c], k[:, :(i + 1) * c], v[:, :(i + 1) * c],
                                  mask[:, i * c:(i + 1) * c, :(i + 1) * c], scale) for i in range(n)]
        return jnp.concatenate(outs, axis=1)
    qh, kh, vh = map(_heads_major, (q, k, v))
    return _heads_major(causal_heads_major(qh, kh, vh, mask, scale, n))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def causal_heads_major(qh, kh, vh, mask, scale: float, n: int):
    """o [B,H,T,V] of causal_attention on heads-major operands in n causal blocks: query block i attends to the
    keys [0, end of block i) (heads_major_attention's math per block). One custom_vjp over all the blocks, so
    the backward assembles dk and dv key block by key block, Σ over the query blocks that saw it, instead of
    autodiff zero-padding every block's [0, end) gradient to full length and summing the n padded arrays
    (measured on the side-by-side model's training step: 0.92x the time pinned to one core, level on two)."""
    return _causal_forward(qh, kh, vh, mask, scale, n)[0]


def _causal_blocks(qh, kh, vh, mask, n):
    """Per causal block i: (q rows of block i, keys and values [0, end_i), the mask rows)."""
    c = qh.shape[2] // n
    return [(qh[:, :, i * c:(i + 1) * c], kh[:, :, :(i + 1) * c], vh[:, :, :(i + 1) * c],
             mask[:, i * c:(i + 1) * c, :(i + 1) * c]) for i in range(n)]


def _causal_forward(qh, kh, vh, mask, scale, n):
    outs, probs = [], []
    for q, k, v, m in _causal_blocks(qh, kh, vh, mask, n):
        o, (*_, p) = _attention_forward(q, k, v, m, scale)
        outs.append(o)
        probs.append(p)
    return jnp.concatenate(outs, axis=2), (qh, kh, vh, mask, tuple(probs))


def _causal_backward(scale, n, res, doh):
    qh, kh, vh, mask, probs = res
    c = qh.shape[2] // n
    grads = [_attention_backward(scale, (q, k, v, p), doh[:, :, i * c:(i + 1) * c])[:3]
             for i, ((q, k, v, _), p) in enumerate(zip(_causal_blocks(qh, kh, vh, mask, n), probs))]

    def by_key_block(which):  # key block j: the sum of its rows over the query blocks i >= j that saw it
        return jnp.concatenate([sum(grads[i][which][:, :, j * c:(j + 1) * c] for i in range(j, n))
                                for j in range(n)], axis=2)
    dq = jnp.concatenate([g[0] for g in grads], axis=2)
    return dq, by_key_block(1), by_key_block(2), None


causal_heads_major.defvjp(_causal_forward, _causal_backward)


def masked_attention(q, k, v, mask, scale: float):
    """o [B,T,H,V] = Σ_s softmax_s(q·k·scale)[mask] v over q [B,T,H,K], k [B,S,H,K], v [B,S,H,V], mask [B,T,S];
    rows with no visible key give zeros. Heads-major inside (one transpose per operand, batched GEMMs over
    [B, H]: heads_major_attention)."""
    return _heads_major(heads_major_attention(*map(_heads_major, (q, k, v)), mask, scale))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def heads_major_attention(qh, kh, vh, mask, scale: float):
    """o [B,H,T,V] over qh [B,H,T,K], kh [B,H,S,K], vh [B,H,S,V], mask [B,T,S]: masked_attention on heads-major
    operands. The backward is the closed-form softmax gradient from the kept probabilities,
    ds = p·(dp − Σ p·dp), instead of autodiff through the max/exp/sum/where chain (the same math in fewer passes
    over [B,H,T,S])."""
    return _attention_forward(qh, kh, vh, mask, scale)[0]


def _heads_major(a):
    return jnp.swapaxes(a, 1, 2)  # [B, T, H, X] <-> [B, H, T, X]


def _attention_forward(qh, kh, vh, mask, scale):
    # The mask enters as an additive bias [B,1,T,S] (0 or NEG_INF) rather than a select over [B,H,T,S]: the
    # sum rounds to exactly NEG_INF where hidden, XLA:CPU fuses it into the softmax's passes instead of
    # materializing the masked scores, and the softmax is written out so that zeroing the rows with no
    # visible key is a [B,1,T,1] condition on its normalization (the probabilities are the same numbers).
    bias = jnp.where(mask, 0.0, NEG_INF).astype(jnp.float32)[:, None]
    scores = jnp.einsum("bhtk,bhsk->bhts", qh, kh, preferred_element_type=jnp.float32) * scale + bias
    unnormalized = jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True))
    seen = jnp.any(mask, axis=-1)[:, None, :, None]
    probs = jnp.where(seen, unnormalized / jnp.sum(unnormalized, axis=-1, keepdims=True), 0.0)
    o = jnp.einsum("bhts,bhsv->bhtv", probs.astype(vh.dtype), vh, preferred_element_type=jnp.float32)
    return o.astype(vh.dtype), (qh, kh, vh, probs)


def _attention_backward(scale, res, doh):
    qh, kh, vh, probs = res
    f32 = lambda spec, a, b: jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)  # noqa: E731
    # dv and dk contract over the query axis t, the rows of p and ds. XLA:CPU runs a GEMM whose contraction is
    # the lhs's major axis on a slow path; transposing p and ds first (one pass each) makes both GEMMs plain
    # row-major ones, about 40% off this backward on CPU. The scale goes onto dq and dk ([.., K]) rather than
    # ds ([.., T, S]), where XLA:CPU materializes it as a full broadcast operand of the fused GEMM.
    p_t = jnp.swapaxes(probs, -1, -2)  # [B,H,S,T]
    dv = f32("bhst,bhtv->bhsv", p_t.astype(doh.dtype), doh)
    dp = f32("bhtv,bhsv->bhts", doh, vh)
    ds = probs * (dp - jnp.sum(probs * dp, axis=-1, keepdims=True))  # zero where masked (p = 0 there)
    dq = f32("bhts,bhsk->bhtk", ds.astype(kh.dtype), kh) * scale
    dk = f32("bhst,bhtk->bhsk", jnp.swapaxes(ds, -1, -2).astype(qh.dtype), qh) * scale
    return dq.astype(qh.dtype), dk.astype(kh.dtype), dv.astype(vh.dtype), None


heads_major_attention.defvjp(_attention_forward, _attention_backward)
