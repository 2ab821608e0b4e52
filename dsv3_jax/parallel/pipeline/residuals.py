"""Stored vjp residuals for the executor's "store" mode (the alternative to recomputing a stage in B and W).

DualPipe keeps each chunk's autograd graph alive between its F and its B/W (github deepseek-ai/DualPipe);
the JAX equivalent is the pytree of residuals inside the function `jax.vjp` returns. A rank stores those
leaves in a slot buffer at F and rebuilds the pullback at B/W from the buffer and the current parameters.
"""

from __future__ import annotations

import jax


class Residuals:
    """Store/replay `jax.vjp(f, p, x, has_aux=True)` residuals of f(p, x) -> (outputs, aux).

    Residual leaves that ARE stage parameters (same traced value) are not stored: replay takes them from the
    parameters again, so memory holds activations only. Relies on the vjp function being a pytree whose
    leaves are its residuals (true of `jax.vjp`). Built inside shard_map from example values (traced, then
    dropped as dead code) so that the recorded structure carries the device-varying types of the real calls.
    Every call must pass a function of the same structure (the rank's stage function for another slot).
    """

    def __init__(self, f, p_example, x_example):
        _, _, leaves, self.treedef, self.keep = self._split(f, p_example, x_example)
        self.avals = [jax.ShapeDtypeStruct(leaf.shape, leaf.dtype) for leaf, j in zip(leaves, self.keep) if j < 0]

    @staticmethod
    def _split(f, p, x):
        out, vjp_fn, aux = jax.vjp(f, p, x, has_aux=True)
        leaves, treedef = jax.tree.flatten(vjp_fn)
        p_leaves = jax.tree.leaves(p)
        keep = tuple(next((j for j, q in enumerate(p_leaves) if q is leaf), -1) for leaf in leaves)
        return out, aux, leaves, treedef, keep

    def forward(self, f, p, x):
        """f's outputs, its aux, and the residual leaves to store."""
        out, aux, leaves, _, keep = self._split(f, p, x)
        if keep != self.keep:
            raise RuntimeError("stage_fn's vjp residual structure changed between traces")
        return out, aux, [leaf for leaf, j in zip(leaves, keep) if j < 0]

    def pullback(self, p, stored):
        """The vjp function rebuilt from stored leaves and the current parameters."""
        p_leaves, it = jax.tree.leaves(p), iter(stored)
        leaves = [p_leaves[j] if j >= 0 else next(it) for j in self.keep]
        return jax.tree.unflatten(self.treedef, leaves)
