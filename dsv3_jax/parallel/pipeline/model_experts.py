"""Expert parallelism inside the pipeline stages (V3 report §3.2: 16-way PP with 64-way EP, docs/paper.md §4).

The executor's shard_map is manual over every mesh axis, and its batch axes include the expert axis (every EP
rank is also a DP rank, sharding.py), so inside a stage each rank already holds its own tokens. With
ModelConfig.moe_impl="ep" the routed-expert weights enter the same shard_map split over the expert axis:

    stage leaves  .../routed_experts/w*  [rows, Lm, E, ...]  ->  P(pipe, None, expert): [1, Lm, E/X, ...]
    shared leaves mtp_k/.../routed_experts/w*  [E, ...]      ->  P(expert):              [E/X, ...]

and each MoE layer moves its tokens with the EP exchange's all_to_all over the expert axis directly
(layers/moe/ep.py with a context from `ExpertParallel.inside_shard_map`: no nested shard_map). The all_to_all sits inside the executor's
`lax.switch`/`lax.cond` branches; that is sound because the branch depends on the pipeline rank only (and
on the table row, identical along the expert axis), so every member of an expert group takes the same branch.

Gradients: each rank's backward runs the exchange's transpose, so the gradient of its E/X experts collects
the contributions of all tokens of its expert group; the executor then sums it over the other batch axes
only (executor.py `param_axes`). Inside the shard_map, RoutedExperts declares its weights with E/X experts
(the context's `local_experts`), so Flax's shape check sees this rank's [E/X, D, F].
Legend: E routed experts, X expert-axis size, Lm MoE slots per stage, D model dim, F expert hidden.
"""

from __future__ import annotations

from dsv3_jax import param_tree as pt


def param_axes(expert_axis: str):
    """The executor's param_axes: routed-expert leaves split over `expert_axis` on their expert dim (the
    first after the stage's slot axis, or the first of a shared leaf); every other leaf replicated."""
    def axes(kind: str, path) -> tuple:
        if not pt.is_routed_expert(pt.key_names(path)):
            return ()
        return (None, expert_axis) if kind == "stage" else (expert_axis,)
    return axes
