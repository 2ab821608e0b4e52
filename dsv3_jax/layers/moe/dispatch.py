"""Routed-expert computation without token dropping.

`routed_experts_ragged`: sort the N·k (token, expert) assignments by expert, run each expert's SwiGLU on its
contiguous slice with a grouped GEMM (`jax.lax.ragged_dot`), unsort and combine with the routing weights.
Every assignment is computed: there is no capacity and nothing is dropped (V3 report §2.1.2 "No Token-Dropping").
`routed_experts_blocked`: the same sort, then each expert's slice is cut into blocks of `block` rows and every
block runs as plain GEMMs against its expert's weights (block_loop.py). XLA:CPU lowers ragged_dot to a dense
loop over all E experts (E× the useful FLOPs); this path costs about M·D·F, so it is the fast choice on CPU.
`routed_experts_dense`: every expert on every token, masked by the routing weights — the per-expert reference.

Legend: N tokens, k experts per token, M = N·k assignments, D model dim, F expert hidden, E experts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dsv3_jax.layers.linear import kernel_of
from dsv3_jax.layers.moe import block_capacity, block_gather, block_loop, block_switch


def _rows(a, index):
    """a[index] along axis 0 for indices known to be in bounds (no clamping or fill selects; on XLA:CPU
    those cost as much as the gather itself)."""
    return a.at[index].get(mode="promise_in_bounds")


def sort_assignments(experts, n_experts: int):
    """Order [M] that groups assignments by expert (stable), its inverse, and group sizes [E]."""
    flat = experts.reshape(-1)
    order = jnp.argsort(flat, stable=True)
    inverse = jnp.zeros_like(order).at[order].set(jnp.arange(order.shape[0], dtype=order.dtype),
                                                  unique_indices=True)  # a permutation's inverse: no 2nd sort
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
    with jax.named_scope("dispatch"):  # profiler trace names (V3 report Figure 2)
        order, inverse, sizes = sort_assignments(experts, kernel_of(w1).shape[0])  # w1 may be a MetaKernel
        xs = _rows(x, order // k)  # [M, D], assignment j of token t sits at t·k + j
    with jax.named_scope("experts"):
        ys = grouped_swiglu(xs, w1, w2, w3, sizes, dtype, gmm)
    with jax.named_scope("combine"):
        y = _rows(ys, inverse).reshape(n, k, -1)
        return jnp.einsum("nkd,nk->nd", y, weights.astype(dtype))


BLOCK_COST_ROWS = 48  # a block's fixed cost (its weight reads, a small GEMM's overhead) in rows of work


def block_rows(m: int, n_experts: int) -> int:
    """Rows per block of the blocked path for m assignments: the power of two b in [1, 128] that minimizes
    blocks(b)·(BLOCK_COST_ROWS + b), blocks(b) = ceil((m + E·(b-1)) / b) being the static bound on the blocks.
    Every block reads its expert's weights once and multiplies b rows (padding included). Reading a weight
    element alone costs about 2·FLOP/s ÷ bytes/s ≈ 12 multiply-adds on a CPU (100 GFLOP/s, 16 GB/s) whatever D
    and F are; small GEMMs add more (XLA:CPU, measured: 128-row blocks beat 64 and 256 on training batches).
    Decoding (m = k per token) gets small blocks (each reads little more than its expert), training 128."""
    cost = lambda b: -(-(m + n_experts * (b - 1)) // b) * (BLOCK_COST_ROWS + b)
    return min((1 << i for i in range(8)), key=cost)


LOOP_MIN_ROWS = 64  # blocks of at least this many rows loop over GEMMs (training); smaller ones (decoding) batch
BATCH_WEIGHT_ROWS = 7  # reading one expert's weights in place in a batched matmul, in rows of its work
BATCH_ROW_COST = 1.6  # a batched-matmul row's cost in blocked rows (measured on XLA:CPU: batched over E vs blocks)
CAPACITY_COST_ROWS = 2048  # up to this many assignments the cost model decides
CAPACITY_MAX_ROWS = 8192  # above it the loop always runs (the real-size expert-parallel shapes among them)
PARALLEL_GEMM_MACS = 2**24  # a per-expert GEMM of at least this many multiply-adds uses every core


def capacity_beats_blocks(n: int, k: int, n_experts: int, dim: int = 0, hidden: int = 0) -> bool:
    """Whether the capacity batch (block_capacity.py) beats the blocks for n tokens routed to k of n_experts
    experts of model dim `dim` and hidden `hidden`.

    Up to CAPACITY_COST_ROWS assignments (decoding, small batches): a cost model in rows of work, the batch
    costing E·(BATCH_WEIGHT_ROWS + C)·BATCH_ROW_COST with C the expected rung, the blocks
    blocks·(BLOCK_COST_ROWS + b). With 16 experts top-4 it is true from 2 to 512 tokens and false for a lone
    token (which reads its k experts, not all E). Above that, the single-thread costs tie (measured: 1.02 s
    either way for the side-by-side model's step), and what decides is threading: XLA:CPU runs the loop's
    per-block GEMMs on one core, while a batched GEMM of at least PARALLEL_GEMM_MACS per expert uses all of
    them (the side-by-side step on 2 cores: 627 → 561 ms). Measured on XLA:CPU (2-core Sapphire Rapids, jax
    0.10.2) over E 8/16/64, D 128/256, F 64/256, N 1-4096, forward and backward."""
    m = n * k
    if m > CAPACITY_MAX_ROWS:
        return False
    cap = block_capacity.expected_capacity(m, n_experts, n)
    if m > CAPACITY_COST_ROWS:
        return cap * dim * hidden >= PARALLEL_GEMM_MACS
    b = block_rows(m, n_experts)
    blocks = -(-(m + n_experts * (b - 1)) // b)
    return BATCH_ROW_COST * n_experts * (BATCH_WEIGHT_ROWS + cap) < blocks * (BLOCK_COST_ROWS + b)


TWO_GRID_MIN_ROWS = 2048  # from this many assignments the capacity batch runs a base and an overflow grid


def two_grids(m: int, n_experts: int) -> bool:
    """Whether the capacity batch of m assignments over n_experts runs two grids (block_capacity.Plan): the
    overflow grid multiplies by a copy of the fullest half's weights, which pays off when the batch is large
    (training); a decoding step (weight-bound, few rows per expert) keeps one grid."""
    return m >= TWO_GRID_MIN_ROWS and n_experts >= 4


def routed_experts_blocked(x, weights, experts, w1, w2, w3, dtype, block: int | None = None, per_expert=None):
    """Like routed_experts_ragged, with the grouped GEMM done block by block: each expert's sorted rows are cut
    into blocks of `block` rows (default: block_rows); large blocks run as a loop of plain GEMM chains
    (block_loop.py), small ones as one batched matmul over gathered weights (block_gather.py). Where one
    batched matmul over per-expert capacity slots costs less (capacity_beats_blocks: decoding batches), that
    runs instead (block_capacity.py). w3 None: w1 is the fused w13 = w1 | w3 [E, D, 2F] of inference variables
    (layer_split.py); the capacity batch then runs its gate and up projections as ONE matmul
    (block_capacity.capacity_forward), which XLA:CPU streams faster than two, the gathered blocks gather it
    whole and the looped blocks take slices. per_expert: (w13s, w2s), each expert's fused w13 [D, 2F] and w2
    [F, D] as separate arrays (inference variables, layer_split.py); a lone token's few assignments then run as
    switches over them (block_switch.py) instead of gathered blocks."""
    n, k = experts.shape
    e, f, d = w2.shape
    if block is None and per_expert is not None and w3 is None and block_switch.switches(n, k, e):
        with jax.named_scope("experts"):  # no sort: each assignment reads its expert's weights in place
            return block_switch.switched_swiglu(x, weights, experts, *per_expert, jnp.dtype(dtype)).astype(dtype)
    with jax.named_scope("dispatch"):  # profiler trace names (V3 report Figure 2)
        order, inverse, sizes = sort_assignments(experts, e)
    if block is None and capacity_beats_blocks(n, k, e, d, f):  # k distinct experts: <= n rows each
        if two_grids(n * k, e):
            caps, overflow = block_capacity.two_grid_ladders(n * k, e, n)
        else:
            caps, overflow = block_capacity.capacities(n * k, e, n), None
        with jax.named_scope("experts"):  # the capacity batch gathers from the tokens and combines into them
            if w3 is None:
                return block_capacity.capacity_forward(x, weights, order, inverse, sizes, w1, w2, k, caps,
                                                       block_rows(n * k, e), jnp.dtype(dtype), overflow)
            return block_capacity.capacity_moe(x, weights, order, inverse, sizes, w1, w2, w3, k, caps,
                                               block_rows(n * k, e), jnp.dtype(dtype), overflow)
    block = block or block_rows(n * k, e)
    looped = block >= LOOP_MIN_ROWS
    if w3 is None and looped:  # the gathered blocks take the fused w13 as it is
        w1, w3 = block_capacity.unfuse(w1, w2)
    with jax.named_scope("dispatch"):
        xs = _rows(x, order // k)
    with jax.named_scope("experts"):
        swiglu = block_loop.looped_swiglu if looped else block_gather.gathered_swiglu
        ys = swiglu(xs, sizes, w1, w2, w3, block, jnp.dtype(dtype))
    with jax.named_scope("combine"):
        return jnp.einsum("nkd,nk->nd", _rows(ys, inverse).reshape(n, k, -1), weights.astype(dtype))


def routed_experts_dense(x, weights, experts, w1, w2, w3, dtype):
    """Reference: every expert on every token, combined with the dense [N, E] weight matrix. The tokens are
    broadcast over the experts so that every matmul is batched over E and reads each expert's weights in place
    (contracting [N, D] with [E, D, F] directly makes XLA transpose a copy of all the weights first)."""
    n_experts = w1.shape[0]
    with jax.named_scope("dispatch"):  # profiler trace names (V3 report Figure 2)
        combine = jnp.sum(jax.nn.one_hot(experts, n_experts, dtype=jnp.float32) * weights[..., None], axis=1)
        xe = jnp.broadcast_to(x.astype(dtype)[None], (n_experts,) + x.shape)  # [E, N, D]
    with jax.named_scope("experts"):
        h = jax.nn.silu(jnp.einsum("end,edf->enf", xe, w1.astype(dtype))) * jnp.einsum("end,edf->enf", xe,
                                                                                       w3.astype(dtype))
        y = jnp.einsum("enf,efd->end", h, w2.astype(dtype))
    with jax.named_scope("combine"):
        return jnp.einsum("ne,end->nd", combine.astype(dtype), y)
