"""Device-varying types inside `jax.shard_map` (check_vma): make values vary over the mesh axes they must.

The executor runs every rank's program on values that differ per pipeline rank and per data shard. Fresh
constants (zeros of the state, a loss-cotangent scale) and replicated inputs (shared parameters) are
*invariant*; mixing them in `lax.switch`/`lax.cond` branches with varying values is a type error, and
differentiating a varying result with respect to an invariant input inserts an all-reduce into every
backward (the transpose of the implicit broadcast). Casting everything to varying once, up front, keeps the
per-tick program free of collectives; the executor sums gradients over the data axes once at the end.
"""

from __future__ import annotations

import jax


def varying_axes(x) -> frozenset:
    """Mesh axes over which `x` is device-varying (empty outside shard_map). jax 0.10 spells the set
    `manual_axis_type.varying`; later versions `vma`."""
    aval = jax.typeof(x)
    mat = getattr(aval, "manual_axis_type", None)
    if mat is not None:
        return frozenset(mat.varying)
    return frozenset(getattr(aval, "vma", ()))


def vary(tree, axes):
    """Cast every leaf of `tree` to vary over all of `axes` (those it already varies over are kept)."""
    def one(a):
        missing = tuple(ax for ax in axes if ax not in varying_axes(a))
        return jax.lax.pcast(a, missing, to="varying") if missing else a
    return jax.tree.map(one, tree)


def like(value, ref):
    """`value` cast to vary over the axes `ref` varies over (a constant that must match a traced value)."""
    return vary(value, tuple(varying_axes(ref)))
