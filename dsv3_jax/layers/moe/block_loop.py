"""Grouped SwiGLU as a loop over row blocks: each expert's contiguous rows are cut into blocks of b rows and
every block is one plain GEMM chain against its own expert's weights, read in place.

This is the CPU form of the grouped GEMM (what `jax.lax.ragged_dot` does on GPU): exact, no capacity, and
about M·D·F work plus at most one partly filled block per expert. Compared with gathering one weight matrix
per block and running a batched matmul, it never copies the weights (the gather cost as much as the GEMMs on
XLA:CPU), builds no zero-padded row buffer, and its weight gradients accumulate in place per expert.

The forward keeps the two up-projections h1 = x·W1, h3 = x·W3 [M, F] for the backward (what autodiff of the
unfused SwiGLU would keep); the backward walks the same blocks once more.

Legend: M sorted rows (assignments), D model dim, F expert hidden, E experts, J blocks, b rows per block.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from dsv3_jax import sharding


class Blocks:
    """The static bound J on the blocks of m rows over e experts, and per block (traced, [J]): its expert,
    its first sorted row and its number of valid rows (blocks past the used count have 0 valid rows)."""

    def __init__(self, sizes, m: int, block: int):
        e = sizes.shape[0]
        self.block, self.count = block, -(-(m + e * (block - 1)) // block)
        per_expert = (sizes + block - 1) // block
        first_block = jnp.cumsum(per_expert) - per_expert
        first_row = jnp.cumsum(sizes) - sizes
        j = jnp.arange(self.count, dtype=jnp.int32)
        expert = jnp.clip(jnp.searchsorted(jnp.cumsum(per_expert), j, side="right"), 0, e - 1).astype(jnp.int32)
        local = j - first_block[expert]
        self.first_block, self.first_row = first_block, first_row
        self.used = jnp.sum(per_expert).astype(jnp.int32)
        self.expert = expert
        self.row = (first_row[expert] + local * block).astype(jnp.int32)
        self.valid = jnp.where(j < self.used, jnp.clip(sizes[expert] - local * block, 0, block), 0).astype(jnp.int32)


def _pad(a, rows: int):
    return jnp.concatenate([a, jnp.zeros((rows,) + a.shape[1:], a.dtype)])


def _take(a, row, rows: int):
    return jax.lax.dynamic_slice_in_dim(a, row, rows)


def _put(a, part, row, mask):
    """a with rows [row, row + len(part)) replaced by part where mask [rows, 1] (the rest kept)."""
    return jax.lax.dynamic_update_slice_in_dim(a, jnp.where(mask, part, _take(a, row, part.shape[0])), row, 0)


def _dot(a, b, dtype, spec="ij,jk->ik"):
    return jnp.einsum(spec, a, b.astype(dtype), preferred_element_type=jnp.float32)


def _accumulate(acc, e, part):
    """acc[e] += part, written as a slice update so the loop carry is updated in place."""
    return jax.lax.dynamic_update_index_in_dim(acc, jax.lax.dynamic_index_in_dim(acc, e, keepdims=False) + part,
                                               e, 0)


def _loop(blocks: Blocks, body, carry):
    def step(j, c):
        return body(blocks.expert[j], blocks.row[j], (jnp.arange(blocks.block) < blocks.valid[j])[:, None], c)
    return jax.lax.fori_loop(0, blocks.used, step, carry)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def looped_swiglu(xs, sizes, w1, w2, w3, block: int, dtype):
    """Σ-free grouped SwiGLU: ys [M, D] with ys[r] = (silu(xs[r]·W1[e]) ⊙ xs[r]·W3[e])·W2[e], e the group of
    row r; rows are grouped contiguously by `sizes` [E]; w1, w3 [E, D, F], w2 [E, F, D]."""
    return _forward(xs, sizes, w1, w2, w3, block, dtype)[0]


def _forward(xs, sizes, w1, w2, w3, block, dtype):
    m, f = xs.shape[0], w1.shape[2]
    blocks = Blocks(sizes, m, block)
    xp = _pad(xs.astype(dtype), block)

    def body(e, row, mask, c):
        y, h1, h3 = c
        x = _take(xp, row, block)
        a, b = _dot(x, w1[e], dtype), _dot(x, w3[e], dtype)
        out = _dot((jax.nn.silu(a) * b).astype(dtype), w2[e], dtype)
        return _put(y, out.astype(dtype), row, mask), _put(h1, a, row, mask), _put(h3, b, row, mask)

    init = (jnp.zeros((m + block, w2.shape[2]), dtype), jnp.zeros((m + block, f), jnp.float32),
            jnp.zeros((m + block, f), jnp.float32))
    y, h1, h3 = _loop(blocks, body, sharding.vary_like(init, xs, w1, w2, w3))  # shard_map: carries vary alike
    return y[:m], (xs, sizes, h1, h3, w1, w2, w3)


def _fwd(xs, sizes, w1, w2, w3, block, dtype):
    return _forward(xs, sizes, w1, w2, w3, block, dtype)


def _bwd(block, dtype, res, dy):
    xs, sizes, h1, h3, w1, w2, w3 = res
    m = dy.shape[0]
    blocks = Blocks(sizes, m, block)
    xp = _pad(xs.astype(dtype), block)
    dyp = _pad(dy.astype(dtype), block)

    def body(e, row, mask, c):
        dx, d1, d2, d3 = c
        x, g_out = _take(xp, row, block), jnp.where(mask, _take(dyp, row, block), 0)
        a, b = _take(h1, row, block), _take(h3, row, block)
        s = jax.nn.sigmoid(a)
        act = a * s
        d2 = _accumulate(d2, e, _dot((act * b).astype(dtype), g_out, dtype, "bf,bd->fd"))
        dg = _dot(g_out, w2[e], dtype, "bd,fd->bf")
        da, db = dg * b * (s + act * (1 - s)), dg * act  # d silu(a)/da = s·(1 + a·(1 − s))
        da, db = da.astype(dtype), db.astype(dtype)
        d1 = _accumulate(d1, e, _dot(x, da, dtype, "bd,bf->df"))
        d3 = _accumulate(d3, e, _dot(x, db, dtype, "bd,bf->df"))
        part = _dot(da, w1[e], dtype, "bf,df->bd") + _dot(db, w3[e], dtype, "bf,df->bd")
        return _put(dx, part, row, mask), d1, d2, d3

    zeros = lambda w: jnp.zeros(w.shape, jnp.float32)
    init = (jnp.zeros((m + block, xp.shape[1]), jnp.float32), zeros(w1), zeros(w2), zeros(w3))
    dx, d1, d2, d3 = _loop(blocks, body, sharding.vary_like(init, xp, dy, w1, w2, w3))
    grads = []
    for g, w in ((d1, w1), (d2, w2), (d3, w3)):
        # Inside shard_map, w may be invariant along axes the tokens vary over (an EP rank's local experts are
        # shared by its data shards): its cotangent is the sum over those axes (the transpose of the pvary).
        extra = tuple(sorted(sharding.varying_axes(g) - sharding.varying_axes(w)))
        grads.append((jax.lax.psum(g, extra) if extra else g).astype(w.dtype))
    return (dx[:m].astype(xs.dtype), None, *grads)


looped_swiglu.defvjp(_fwd, _bwd)
