"""Grouped SwiGLU as ONE batched matmul over row blocks: the blocks of block_loop.Blocks, each multiplied by a
gathered copy of its expert's weights, [J, b, D] x [J, D, F].

The decoding form of the blocked backend: with a few rows per block (decoding has k rows per token) the copy
is no more than the weight reads the GEMMs need anyway, and one batched op beats a loop of tiny GEMMs, each
paying a loop iteration's overhead. For training-size blocks block_loop.py is faster (it reads the weights in
place). Exact either way: every row is multiplied by its own expert; rows of a block past its valid count are
other experts' rows, computed and never read back.

Legend: M sorted rows, D model dim, F expert hidden, E experts, J blocks, b rows per block.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from dsv3_jax import sharding
from dsv3_jax.layers.moe.block_capacity import unfuse
from dsv3_jax.layers.moe.block_loop import Blocks


def _rows(a, index):
    return a.at[index].get(mode="promise_in_bounds")  # in bounds by construction: no clamping selects


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def block_matmul(xb, w, block_expert, dtype):
    """y [J, b, O] = xb [J, b, I] · w[block_expert[j]] [I, O]. The backward gathers the weights again rather
    than keeping the [J, I, O] copy as a residual, and sums the per-block weight gradients per expert."""
    return jnp.einsum("jbi,jio->jbo", xb, _rows(w, block_expert).astype(dtype),
                      preferred_element_type=jnp.float32).astype(dtype)


def _block_matmul_fwd(xb, w, block_expert, dtype):
    return block_matmul(xb, w, block_expert, dtype), (xb, w, block_expert)


def _block_matmul_bwd(dtype, res, dy):
    xb, w, block_expert = res
    w_t = _rows(jnp.swapaxes(w, 1, 2), block_expert).astype(dtype)  # [J, O, I]
    dx = jnp.einsum("jbo,joi->jbi", dy, w_t, preferred_element_type=jnp.float32).astype(xb.dtype)
    dw = jnp.einsum("jbi,jbo->jio", xb.astype(dtype), dy, preferred_element_type=jnp.float32)
    dw = jax.ops.segment_sum(dw, block_expert, num_segments=w.shape[0], indices_are_sorted=True)
    # Inside shard_map, w may be invariant along axes the tokens vary over (an EP rank's local experts are
    # shared by its data shards): its cotangent is the sum over those axes (the transpose of the pvary).
    extra = tuple(sorted(sharding.varying_axes(dw) - sharding.varying_axes(w)))
    return dx, (jax.lax.psum(dw, extra) if extra else dw).astype(w.dtype), None


block_matmul.defvjp(_block_matmul_fwd, _block_matmul_bwd)


def gathered_swiglu(xs, sizes, w1, w2, w3, block: int, dtype):
    """The same function as block_loop.looped_swiglu: ys [M, D], row r through its group's SwiGLU.

    w3 None: w1 is the fused w13 = w1 | w3 [E, D, 2F] of inference variables (layer_split.py), gathered and
    multiplied as one [J, D, 2F] block instead of two [J, D, F] ones: one gather and one matmul fewer per layer
    (measured: single-token decoding of the side-by-side model in 0.75-0.91x the time, the same tokens)."""
    m = xs.shape[0]
    blocks = Blocks(sizes, m, block)
    xp = jnp.concatenate([xs.astype(dtype), jnp.zeros((block, xs.shape[1]), dtype)])
    xb = _rows(xp, blocks.row[:, None] + jnp.arange(block)[None, :])  # [J, b, D]
    bmm = lambda a, w: block_matmul(a, w, blocks.expert, dtype)  # noqa: E731
    if w3 is None:
        a, b = unfuse(bmm(xb, w1), w2)  # the [J, b, 2F] product's halves
    else:
        a, b = bmm(xb, w1), bmm(xb, w3)
    yb = bmm(jax.nn.silu(a) * b, w2)  # [J, b, D]
    group = jnp.repeat(jnp.arange(sizes.shape[0]), sizes, total_repeat_length=m)  # expert of each sorted row
    local = jnp.arange(m) - blocks.first_row[group]
    return yb[blocks.first_block[group] + local // block, local % block]
