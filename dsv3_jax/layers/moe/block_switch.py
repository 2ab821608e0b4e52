"""The routed experts of a lone token (or a few assignments) as one `lax.switch` per assignment over per-expert
weight buffers: y_t = Σ_j g_tj · SwiGLU_{e_tj}(x_t), branch e multiplying by expert e's own w13 [D, 2F] and
w2 [F, D] arrays, read in place.

The decoding form of the blocked backend for a single token. Its gathered blocks (block_gather.py) copy each
chosen expert's weights out of the stacked [E, D, 2F] and [E, F, D] arrays before multiplying; XLA copies a
static slice of a stacked array as well, so only weights that are separate buffers are read without a copy.
Inference variables hold such per-expert copies beside the stacked ones where the stacks are unrolled
(layer_split.py, `per_expert`); the capacity batch of larger batches keeps reading the stacked arrays, which
one batched matmul streams faster than E separate ones.

Legend: N tokens, k experts per token, D model dim, F expert hidden, E experts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

MAX_ROWS = 8  # at most this many assignments (N·k) take the switches: each is a branch over E experts, compiled


def switches(n: int, k: int, n_experts: int) -> bool:
    """Whether n tokens routed to k of n_experts experts run as switches: at most MAX_ROWS assignments, and at
    most half the experts' weights read (or a lone token's k). Measured on the side-by-side model (16 experts
    top-4, XLA:CPU, 2 cores), 64-token greedy generations against the gathered blocks (batch 1) or the
    capacity batch: batch 1 0.86x the time, batch 2 (8 assignments) 0.77x, batch 4 (16) 1.05x."""
    m = n * k
    return m <= MAX_ROWS and (m <= n_experts // 2 or n == 1)


def switched_swiglu(x, weights, experts, w13s, w2s, dtype):
    """y [N, D] fp32 = Σ_j weights[t, j] · SwiGLU_{experts[t, j]}(x_t) for x [N, D], weights/experts [N, k];
    w13s: E arrays w1 | w3 [D, 2F], w2s: E arrays [F, D] (expert e's weights, separate buffers)."""
    n, k = experts.shape
    if n * k > MAX_ROWS:
        raise ValueError(f"switched_swiglu: {n} tokens x {k} experts = {n * k} assignments; expected at most "
                         f"{MAX_ROWS} (one switch each; larger batches run the capacity batch)")
    f = w2s[0].shape[0]
    dot = lambda a, w: jnp.dot(a.astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32)  # noqa: E731

    def expert(e):
        def run(row):  # [1, D] -> [1, D]
            h = dot(row, w13s[e])  # [1, 2F]: the gate and up projections in one product
            return dot(jax.nn.silu(h[:, :f]) * h[:, f:], w2s[e])
        return run

    branches = [expert(e) for e in range(len(w13s))]
    ys = jnp.stack([jnp.concatenate([jax.lax.switch(experts[t, j], branches, x[t:t + 1]) for j in range(k)])
                    for t in range(n)])  # [N, k, D]
    return jnp.einsum("nkd,nk->nd", ys, weights.astype(jnp.float32))
