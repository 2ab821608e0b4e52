"""The DeepSeekMoE layer (V3 report §2.1.2, eq. 12): shared experts plus k of E fine-grained routed experts.

    h' = Σ_shared FFN_s(u) + Σ_{i ∈ TopK} g_i FFN_i(u)       (the shared output is added unweighted)

The router bias (aux-loss-free balancing, eq. 16) lives in the non-trainable `router` collection, so no
optimizer or weight decay ever touches it; the training loop updates it from the returned expert counts.
The routed experts run through the backend ModelConfig.moe_impl names (experts.py); expert parallelism
gets its frozen context (ep.ExpertParallel) from the model, never from an ambient mesh.
Legend: B batch, T positions, N = B·T tokens, D model dim, E routed experts, F expert hidden.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from dsv3_jax import param_tree as pt
from dsv3_jax import sharding
from dsv3_jax.layers.linear import fp8_kernel, grouped_matmul_fn, normal_init, weight
from dsv3_jax.layers.mlp import MLP
from dsv3_jax.layers.moe import experts as expert_backends
from dsv3_jax.layers.moe import router
from dsv3_jax.layers.moe.ep import ExpertParallel, activation_mesh
from dsv3_jax.layers.recompute import regions_on
from dsv3_jax.layers.resolve import resolve_config

ROUTER_COLLECTION = pt.ROUTER


class RoutedExperts(nn.Module):
    """Holds the stacked expert weights w1, w3 [E, D, F] and w2 [E, F, D] (this rank's E/X experts when the
    parallel context runs inside a shard_map over the expert axis). Returns (y [N, D], comm bytes or None).
    Inference variables may hold w13 = w1 | w3 [E, D, 2F] in place of w1 and w3, and beside them per-expert
    copies of w13 and w2 (layer_split.py)."""

    cfg: "object"
    parallel: ExpertParallel | None = None

    @nn.compact
    def __call__(self, x, weights, experts):
        c = resolve_config(self.cfg)  # a no-op inside DeepSeekV3 (resolved in its setup); standalone use too
        e = (self.parallel or ExpertParallel()).local_experts(c.n_routed_experts)
        d, f = c.dim, c.moe_inter_dim
        backend = expert_backends.backend(c.moe_impl)

        def w(name, shape, axes):
            kernel = weight(self, name, shape, axes, normal_init(c.init_std), activation_mesh(self.parallel))
            return fp8_kernel(self, name, kernel, c) if backend.delayed_fp8 else kernel

        if self.has_variable(pt.PARAMS, pt.FUSED_UP):  # inference variables (layer_split.py)
            return self._fused(backend, c, x, weights, experts, w("w2", (e, f, d), ("expert", "mlp", "embed")))
        w1 = w("w1", (e, d, f), ("expert", "embed", "mlp"))
        w2 = w("w2", (e, f, d), ("expert", "mlp", "embed"))
        w3 = w("w3", (e, d, f), ("expert", "embed", "mlp"))
        return backend.fn(x, weights, experts, w1, w2, w3, cfg=c, ctx=self.parallel, gmm=grouped_matmul_fn(c))

    def _fused(self, backend, c, x, weights, experts, w2):
        """The routed experts over the fused gate|up weight w13 [E, D, 2F] the variables hold instead of w1, w3."""
        w13 = self.get_variable(pt.PARAMS, pt.FUSED_UP)
        want = (w2.shape[0], c.dim, 2 * c.moe_inter_dim)
        if backend.fused is None or tuple(w13.shape) != want:
            raise ValueError(f"params {pt.ROUTED}/{pt.FUSED_UP}: the fused gate|up weight needs a moe_impl with a "
                             f"fused form ('blocked') and shape {want}; got moe_impl={c.moe_impl!r}, shape "
                             f"{tuple(w13.shape)} (split_layers only fuses where that holds)")
        if not self.has_variable(pt.PARAMS, pt.PER_EXPERT):
            return backend.fused(x, weights, experts, w13, w2, cfg=c)
        return backend.fused(x, weights, experts, w13, w2, cfg=c, per_expert=self._per_expert(w13, w2))

    def _per_expert(self, w13, w2):
        """(w13s, w2s): the per-expert copies of w13 and w2 the variables hold beside them (layer_split.py)."""
        held = self.get_variable(pt.PARAMS, pt.PER_EXPERT)
        n, shapes = w13.shape[0], {pt.FUSED_UP: tuple(w13.shape[1:]), "w2": tuple(w2.shape[1:])}
        if set(held) != {str(e) for e in range(n)}:
            raise ValueError(f"params {pt.ROUTED}/{pt.PER_EXPERT}: expected one entry per expert, '0' .. "
                             f"'{n - 1}', got {sorted(held)}")
        for e in range(n):
            for name, want in shapes.items():
                got = held[str(e)].get(name)
                if got is None or tuple(got.shape) != want:
                    raise ValueError(f"params {pt.ROUTED}/{pt.PER_EXPERT}/{e}/{name}: expected shape {want} "
                                     f"(expert {e} of {name}), got {None if got is None else tuple(got.shape)}")
        return tuple(tuple(held[str(e)][name] for e in range(n)) for name in shapes)


class MoE(nn.Module):
    """Router + routed experts + shared experts. Returns (y [B,T,D], stats) with stats = {counts [E],
    balance_f [B,E], balance_p [B,E]} for the bias update and the sequence-wise balance loss (plus
    comm_bytes [6] with moe_impl="ep")."""

    cfg: "object"
    parallel: ExpertParallel | None = None

    @nn.compact
    def __call__(self, x, norm=None):
        """norm: the block's FFN RMSNorm, applied to x here. Under ModelConfig.remat="paper" each consumer of
        its output (the gate, the shared experts' w1/w3, the routed dispatch) recomputes it inside a recompute
        region (layers/recompute.py): the dispatched rows the routed backend keeps are kept, the norm output
        is not."""
        c = self.cfg
        b, t, d = x.shape
        mesh = activation_mesh(self.parallel)
        gate_w = weight(self, pt.GATE, (d, c.n_routed_experts), ("embed", None), normal_init(c.init_std), mesh)
        bias = None
        if c.router_bias:
            bias = self.variable(pt.ROUTER, pt.BIAS, jnp.zeros, (c.n_routed_experts,), jnp.float32).value
        # Tokens stay split over the batch axes (they are the batch's rows, flattened).
        tokens = sharding.constrain(x.reshape(b * t, d), sharding.TOKENS_EMBED, mesh)
        on = regions_on(c)
        if norm is not None and not on:
            # Normed once for all three consumers: then its backward also runs once, on their summed cotangent
            # (a norm per consumer would run three norm backwards and keep three norms' intermediates).
            tokens, norm = norm(tokens), None
        normed = lambda then: then(tokens) if norm is None else norm(tokens, then=then, recompute=on)  # noqa: E731
        with jax.named_scope("router"):  # profiler trace names (V3 report Figure 2)
            scores = normed(lambda h: router.affinities(h, gate_w, c.score_func))
            r = router.route_scores(scores, bias, n_groups=c.n_expert_groups, topk_groups=c.n_limited_groups,
                                    k=c.n_activated_experts, score_func=c.score_func, route_scale=c.route_scale)
        y, comm = RoutedExperts(c, self.parallel, name=pt.ROUTED)(normed(lambda h: h), r.weights, r.experts)
        if c.n_shared_experts:
            with jax.named_scope("shared_experts"):
                shared = MLP(c, c.n_shared_experts * c.moe_inter_dim, mesh, name=pt.SHARED)
                y = y + (shared(tokens) if norm is None else shared(tokens, norm=norm))
        f, p = router.balance_terms(r.scores.reshape(b, t, -1), r.experts.reshape(b, t, -1),
                                    c.n_routed_experts, c.n_activated_experts)
        stats = {"counts": router.expert_counts(r.experts, c.n_routed_experts), "balance_f": f, "balance_p": p}
        if comm is not None:
            stats["comm_bytes"] = comm  # [6] node_routing.COMM_FIELDS
        return y.reshape(b, t, d).astype(x.dtype), stats
