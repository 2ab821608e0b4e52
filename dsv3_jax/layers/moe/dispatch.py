"""Routed-expert computation without token dropping.

`routed_experts_ragged`: sort the N·k (token, expert) assignments by expert, run each expert's SwiGLU on its
contiguous slice with a grouped GEMM (`jax.lax.ragged_dot`), unsort and combine with the routing weights.
Every assignment is computed: there is no capacity and nothing is dropped (V3 report §2.1.2 "No Token-Dropping").
`routed_experts_dense`: every expert on every token, masked by the routing weights — the per-expert reference.

Legend: N tokens, k experts per token, M = N·k assignments, D model dim, F expert hidden, E experts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def sort_assignments(experts, n_experts: int):
    """Order [M] that groups assignments by expert (stable), its inverse, and group sizes [E]."""
    flat = experts.reshape(-1)
    order = jnp.argsort(flat, stable=True)
    inverse = jnp.argsort(order, stable=True)
    sizes = jnp.zeros((n_experts,), jnp.int32).at[flat].add(1)
    return order, inverse, sizes


def grouped_swiglu(xs, w1, w2, w3, sizes, dtype):
    """Per-group SwiGLU on rows xs [M, D] grouped contiguously by `sizes` [E]; w1,w3 [E,D,F], w2 [E,F,D]."""
    def gmm(a, w):
        return jax.lax.ragged_dot(a.astype(dtype), w.astype(dtype), sizes,
                                  preferred_element_type=jnp.float32).astype(dtype)
    return gmm(jax.nn.silu(gmm(xs, w1)) * gmm(xs, w3), w2)


def routed_experts_ragged(x, weights, experts, w1, w2, w3, dtype):
    """x [N, D], weights/experts [N, k] -> Σ_k weights · expert(x) [N, D] via sort + ragged_dot."""
    n, k = experts.shape
    order, inverse, sizes = sort_assignments(experts, w1.shape[0])
    xs = jnp.take(x, order // k, axis=0)  # [M, D], assignment j of token t sits at t·k + j
    ys = grouped_swiglu(xs, w1, w2, w3, sizes, dtype)
    y = jnp.take(ys, inverse, axis=0).reshape(n, k, -1)
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
