"""Routed-expert computation without token dropping.

`routed_experts_ragged`: sort the N·k (token, expert) assignments by expert, run each expert's SwiGLU on its
contiguous slice with a grouped GEMM (`jax.lax.ragged_dot`), unsort and combine with the routing weights.
Every assignment is computed: there is no capacity and nothing is dropped (V3 report §2.1.2 "No Token-Dropping").
`routed_experts_blocked`: the same sort, but each expert's slice is padded to a multiple of `block` rows so
the grouped GEMM becomes a batched matmul over blocks (each block belongs to one expert). XLA:CPU lowers
ragged_dot to a dense loop over all E experts (E× the useful FLOPs); this path costs about M·D·F, so it is
the fast choice on CPU. It gathers one weight matrix per block (block_matmul recomputes that gather in the
backward rather than saving it), which is too much memory at GPU scale.
`routed_experts_dense`: every expert on every token, masked by the routing weights — the per-expert reference.

Legend: N tokens, k experts per token, M = N·k assignments, D model dim, F expert hidden, E experts.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from dsv3_jax import sharding
from dsv3_jax.layers.linear import kernel_of


def _rows(a, index):
    """a[index] along axis 0 for indices known to be in bounds (no clamping or fill selects; on XLA:CPU
    those cost as much as the gather itself)."""
    return a.at[index].get(mode="promise_in_bounds")


def sort_assignments(experts, n_experts: int):
    """Order [M] that groups assignments by expert (stable), its inverse, and group sizes [E]."""
    flat = experts.reshape(-1)
    order = jnp.argsort(flat, stable=True)
    inverse = jnp.argsort(order, stable=True)
    sizes = jnp.zeros((n_experts,), jnp.int32).at[flat].add(1)
    return order, inverse, sizes


def ragged_matmul(dtype):
    """The default grouped GEMM: jax.lax.ragged_dot in `dtype` with fp32 accumulation."""
    return lambda a, w, sizes: jax.lax.ragged_dot(a.astype(dtype), w.astype(dtype), sizes,
                                                  preferred_element_type=jnp.float32).astype(dtype)


def grouped_swiglu(xs, w1, w2, w3, sizes, dtype, gmm=None):
    """Per-group SwiGLU on rows xs [M, D] grouped contiguously by `sizes` [E]; w1,w3 [E,D,F], w2 [E,F,D].
    `gmm(a, w, sizes)` is the grouped GEMM (default: ragged_dot in `dtype`; or the FP8 one of quant/)."""
    gmm = gmm or ragged_matmul(dtype)
    return gmm(jax.nn.silu(gmm(xs, w1, sizes)) * gmm(xs, w3, sizes), w2, sizes)


def routed_experts_ragged(x, weights, experts, w1, w2, w3, dtype, gmm=None):
    """x [N, D], weights/experts [N, k] -> Σ_k weights · expert(x) [N, D] via sort + grouped GEMM."""
    n, k = experts.shape
    order, inverse, sizes = sort_assignments(experts, kernel_of(w1).shape[0])  # w1 may be a MetaKernel
    xs = _rows(x, order // k)  # [M, D], assignment j of token t sits at t·k + j
    ys = grouped_swiglu(xs, w1, w2, w3, sizes, dtype, gmm)
    y = _rows(ys, inverse).reshape(n, k, -1)
    return jnp.einsum("nkd,nk->nd", y, weights.astype(dtype))


BLOCK_COST_ROWS = 48  # a block's fixed cost (its weight gather, a small GEMM's overhead) in rows of work


def block_rows(m: int, n_experts: int) -> int:
    """Rows per block of the blocked path for m assignments: the power of two b in [1, 128] that minimizes
    blocks(b)·(BLOCK_COST_ROWS + b), blocks(b) = ceil((m + E·(b-1)) / b) being the static bound on the blocks.
    Every block gathers its expert's weights once and multiplies b rows (padding included). Reading a weight
    element alone costs about 2·FLOP/s ÷ bytes/s ≈ 12 multiply-adds on a CPU (100 GFLOP/s, 16 GB/s) whatever D
    and F are; small batched GEMMs add more (XLA:CPU, measured: 128-row blocks beat 64 on training batches).
    Decoding (m = k per token) gets blocks of 1 (each assignment reads only its expert), training 128."""
    cost = lambda b: -(-(m + n_experts * (b - 1)) // b) * (BLOCK_COST_ROWS + b)
    return min((1 << i for i in range(8)), key=cost)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def block_matmul(xb, w, block_expert, dtype):
    """y [J, b, O] = xb [J, b, I] · w[block_expert[j]] [I, O] for blocks j sorted by expert.

    The backward recomputes the per-block weight gather instead of keeping it as a residual ([J, I, O] per
    weight and layer, which a scan over layers would stack), and sums the per-block weight gradients into
    their experts with a sorted segment sum."""
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
    # Inside shard_map, w may be invariant along axes the tokens vary over (the local experts of an EP rank are
    # shared by its data shards): its cotangent is the sum over those axes (the transpose of the implicit pvary).
    extra = tuple(sorted(sharding.varying_axes(dw) - sharding.varying_axes(w)))
    if extra:
        dw = jax.lax.psum(dw, extra)
    return dx, dw.astype(w.dtype), None


block_matmul.defvjp(_block_matmul_fwd, _block_matmul_bwd)


def routed_experts_blocked(x, weights, experts, w1, w2, w3, dtype, block: int | None = None):
    """Like routed_experts_ragged, with the grouped GEMM done as a batched matmul over padded blocks of `block`
    rows (default: block_rows), each block belonging to one expert."""
    n, k = experts.shape
    e, m = w1.shape[0], n * k
    block = block or block_rows(m, e)
    order, inverse, sizes = sort_assignments(experts, e)
    padded = (sizes + block - 1) // block * block
    start = jnp.cumsum(sizes) - sizes  # first sorted row of each expert
    pstart = jnp.cumsum(padded) - padded  # first padded row of each expert
    n_blocks = -(-(m + e * (block - 1)) // block)  # static upper bound on the padded blocks
    expert_of_row = jnp.sort(experts.reshape(-1))
    dest = pstart[expert_of_row] + jnp.arange(m) - start[expert_of_row]  # padded slot of each sorted row
    buf = jnp.zeros((n_blocks * block, x.shape[1]), x.dtype).at[dest].set(_rows(x, order // k),
                                                                           unique_indices=True)
    block_expert = jnp.minimum(jnp.searchsorted(jnp.cumsum(padded), jnp.arange(n_blocks) * block, side="right"),
                               e - 1)
    xb = buf.reshape(n_blocks, block, -1).astype(dtype)
    bmm = lambda a, w: block_matmul(a, w, block_expert, dtype)
    yb = bmm(jax.nn.silu(bmm(xb, w1)) * bmm(xb, w3), w2).reshape(n_blocks * block, -1)
    y = _rows(_rows(yb, dest), inverse).reshape(n, k, -1)
    return jnp.einsum("nkd,nk->nd", y, weights.astype(dtype))


def routed_experts_dense(x, weights, experts, w1, w2, w3, dtype):
    """Reference: every expert on every token, combined with the dense [N, E] weight matrix."""
    n_experts = w1.shape[0]
    combine = jnp.sum(jax.nn.one_hot(experts, n_experts, dtype=jnp.float32) * weights[..., None], axis=1)
    xd = x.astype(dtype)
    h = jax.nn.silu(jnp.einsum("nd,edf->enf", xd, w1.astype(dtype))) * jnp.einsum("nd,edf->enf", xd,
                                                                                   w3.astype(dtype))
    y = jnp.einsum("enf,efd->end", h, w2.astype(dtype))
    return jnp.einsum("ne,end->nd", combine.astype(dtype), y)
