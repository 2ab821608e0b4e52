"""Inference variables with each unrolled stack's layers as separate arrays: `split_layers` once, then pass the
result wherever variables go (generate, prefill, decode_step, speculative decoding).

Why: a scanned stack keeps its layers in one [L, ...] array. Where the stack is unrolled (small models,
ModelConfig.scan_unroll), layer i's weights are a slice of that array, and XLA:CPU copies the slice before any
matmul that cannot read it in place (the batched expert matmuls of decoding: measured about a third of a
decoding step at 16 sequences). Given the layers as separate arguments, the model's own stacking inside the
jitted step is undone by XLA's slice-of-concatenate simplification, so every matmul reads its parameter
buffer directly. The numbers are identical: `join_layers` rebuilds the same stacked tree inside the step.
Stacks that are not unrolled stay stacked (their loop reads layer i with a dynamic slice either way).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from dsv3_jax import param_tree as pt
from dsv3_jax.layers.block import scan_unroll


@jax.tree_util.register_pytree_node_class
class LayerSplit:
    """Variables whose unrolled stacks hold a tuple of per-layer arrays in place of each [L, ...] leaf."""

    def __init__(self, tree: dict):
        self.tree = tree

    def tree_flatten(self):
        return (self.tree,), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        del aux
        return cls(*children)


def _map_stacks(cfg, variables: dict, fn, is_leaf=None) -> dict:
    unrolled = {name for name, n in pt.stack_sizes(cfg).items() if scan_unroll(cfg.scan_unroll, n) == n}
    return {col: ({g: (jax.tree.map(fn, sub, is_leaf=is_leaf) if g in unrolled else sub) for g, sub in tree.items()}
                  if isinstance(tree, dict) else tree) for col, tree in variables.items()}


def split_layers(cfg, variables: dict) -> LayerSplit:
    """`variables` ({'params', 'router', ...}) with every leaf of an unrolled stack cut into its L layers (a
    copy of those weights: drop the stacked original if memory matters)."""
    if isinstance(variables, LayerSplit):
        return variables
    return LayerSplit(_map_stacks(cfg, nn.unbox(variables), lambda a: tuple(a[i] for i in range(a.shape[0]))))


def join_layers(cfg, variables):
    """The stacked variables again (inside a jitted step: free, see the module docstring); anything that is not
    a LayerSplit is returned as it is."""
    if not isinstance(variables, LayerSplit):
        return variables
    return _map_stacks(cfg, variables.tree, jnp.stack, is_leaf=lambda a: isinstance(a, tuple))
