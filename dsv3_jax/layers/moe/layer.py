"""The DeepSeekMoE layer (V3 report §2.1.2, eq. 12): shared experts plus k of E fine-grained routed experts.

    h' = Σ_shared FFN_s(u) + Σ_{i ∈ TopK} g_i FFN_i(u)       (the shared output is added unweighted)

The router bias (aux-loss-free balancing, eq. 16) lives in the non-trainable `router` collection, so no
optimizer or weight decay ever touches it; the training loop updates it from the returned expert counts.
Legend: B batch, T positions, N = B·T tokens, D model dim, E routed experts, F expert hidden.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from dsv3_jax.layers.linear import fp8_kernel, grouped_matmul_fn, normal_init
from dsv3_jax.layers.mlp import MLP
from dsv3_jax.layers.moe import dispatch, router
from dsv3_jax.parallel import expert

ROUTER_COLLECTION = "router"
IMPLS = {"ragged": dispatch.routed_experts_ragged, "blocked": dispatch.routed_experts_blocked,
         "dense": dispatch.routed_experts_dense}


class RoutedExperts(nn.Module):
    """Holds the stacked expert weights w1, w3 [E, D, F] and w2 [E, F, D]. Returns y [N, D], or with
    moe_impl="ep" (y, comm bytes [6]) from parallel/expert.py. With moe_impl="ep" inside a shard_map manual
    over the expert axis (the pipeline's stages) the weights are this rank's E/X experts."""

    cfg: "object"

    @nn.compact
    def __call__(self, x, weights, experts):
        c = self.cfg
        e, d, f = c.n_routed_experts, c.dim, c.moe_inter_dim
        if c.moe_impl == "ep":
            e //= expert.manual_expert_ranks()

        def w(name, shape, axes):
            return self.param(name, nn.with_logical_partitioning(normal_init(c.init_std), axes), shape, jnp.float32)

        w1 = w("w1", (e, d, f), ("expert", "embed", "mlp"))
        w2 = w("w2", (e, f, d), ("expert", "mlp", "embed"))
        w3 = w("w3", (e, d, f), ("expert", "embed", "mlp"))
        if c.moe_impl == "ep":
            return expert.routed_experts_ep(x, weights, experts, w1, w2, w3, c)
        if c.moe_impl == "ragged":
            w1, w2, w3 = (fp8_kernel(self, n, k, c) for n, k in (("w1", w1), ("w2", w2), ("w3", w3)))
            return dispatch.routed_experts_ragged(x, weights, experts, w1, w2, w3, jnp.dtype(c.dtype),
                                                  grouped_matmul_fn(c))
        return IMPLS[c.moe_impl](x, weights, experts, w1, w2, w3, jnp.dtype(c.dtype))


class MoE(nn.Module):
    """Router + routed experts + shared experts. Returns (y [B,T,D], stats) with stats = {counts [E],
    balance_f [B,E], balance_p [B,E]} for the bias update and the sequence-wise balance loss (plus
    comm_bytes [6] with moe_impl="ep")."""

    cfg: "object"

    @nn.compact
    def __call__(self, x):
        c = self.cfg
        b, t, d = x.shape
        gate_w = self.param("gate", nn.with_logical_partitioning(normal_init(c.init_std), ("embed", None)),
                            (d, c.n_routed_experts), jnp.float32)
        bias = None
        if c.router_bias:
            bias = self.variable(ROUTER_COLLECTION, "bias", jnp.zeros, (c.n_routed_experts,), jnp.float32).value
        tokens = x.reshape(b * t, d)
        r = router.route(tokens, gate_w, bias, score_func=c.score_func, n_groups=c.n_expert_groups,
                         topk_groups=c.n_limited_groups, k=c.n_activated_experts, route_scale=c.route_scale)
        y = RoutedExperts(c, name="routed_experts")(tokens, r.weights, r.experts)
        y, comm = y if c.moe_impl == "ep" else (y, None)
        if c.n_shared_experts:
            y = y + MLP(c, c.n_shared_experts * c.moe_inter_dim, name="shared_experts")(tokens)
        f, p = router.balance_terms(r.scores.reshape(b, t, -1), r.experts.reshape(b, t, -1),
                                    c.n_routed_experts, c.n_activated_experts)
        stats = {"counts": router.expert_counts(r.experts, c.n_routed_experts), "balance_f": f, "balance_p": p}
        if comm is not None:
            stats["comm_bytes"] = comm  # [6] node_routing.COMM_FIELDS
        return y.reshape(b, t, d).astype(x.dtype), stats
