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

import jax
from jax.sharding import PartitionSpec as P

from dsv3_jax import param_tree as pt


def param_axes(expert_axis: str | None, shared_tails: dict | None = None):
    """The executor's param_axes: routed-expert stage leaves split over `expert_axis` on their expert dim (the
    first after the stage's slot axis); with `shared_tails` ({leaf names: per-dim mesh axes}, zero_shared_tails)
    the shared leaves keep their ZeRO split over the batch axes inside the executor, else routed-expert shared
    leaves are split over `expert_axis` on their first dim; every other leaf replicated."""
    def axes(kind: str, path) -> tuple:
        names = pt.key_names(path)
        if kind == "shared" and shared_tails is not None:
            return shared_tails.get(tuple(names), ())
        if expert_axis is None or not pt.is_routed_expert(names):
            return ()
        return (None, expert_axis) if kind == "stage" else (expert_axis,)
    return axes


def zero_shared_tails(specs: dict, keys, batch_axes: tuple[str, ...]) -> dict:
    """{leaf names: per-dim axes} of the shared leaves (top-level `keys` of the params' state PartitionSpecs
    `specs`): each dim keeps the batch axes the state splits it over (ZeRO inside the executor: the pipeline's
    first and last stages gather them where they use them, model_stages.gather_shared)."""
    out = {}
    for key in keys:
        for path, spec in jax.tree_util.tree_flatten_with_path(specs[key], is_leaf=lambda s: isinstance(s, P))[0]:
            dims = []
            for entry in tuple(spec):
                axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
                axes = tuple(a for a in axes if a in batch_axes)
                dims.append(None if not axes else axes[0] if len(axes) == 1 else axes)
            out[(key,) + tuple(pt.key_names(path))] = tuple(dims)
    return out
