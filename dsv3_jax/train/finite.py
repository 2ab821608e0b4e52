"""Finite or nothing: a NaN/inf never reaches the train state that is kept, saved or restored.

Three checks, all on device (one fused reduction each, no host copy of the state):
  * every step (`update_is_finite`, inside the jitted step of train/step.py): the loss, the gradient's global
    norm and the UPDATED params, router biases and FP8 histories. A failing step keeps the previous state
    (`keep_if_nonfinite`): with train.nonfinite="stop" entirely (the loop then stops and saves that last good
    state); with "skip" everything but the step counter, so the update and its batch are dropped and the run
    goes on. A finite gradient implies finite Adam moments (v = b2·v + (1-b2)·g² with Σg² finite), so the
    optimizer state is not re-checked per step;
  * before every save (`nonfinite_collections`, train/checkpoint.py): the whole state, optimizer state
    included, and a non-finite one is never written;
  * after every restore (train/restore.py): a non-finite checkpoint (e.g. written by an older version) is
    refused and the restore falls back to the newest finite one.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


class NonFiniteError(RuntimeError):
    """Training stopped on a non-finite loss, gradient or update; the message names the last good state."""


def all_finite(tree) -> jax.Array:
    """True when every floating-point leaf of `tree` is free of NaN/inf (integer leaves always are)."""
    flags = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
             if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
    return jnp.all(jnp.stack(flags)) if flags else jnp.asarray(True)


def update_is_finite(loss, grad_norm, new_state) -> jax.Array:
    """The per-step check: loss, gradient norm (NaN/inf if any gradient is) and the updated model variables."""
    return (jnp.isfinite(loss) & jnp.isfinite(grad_norm)
            & all_finite((new_state.params, new_state.router, new_state.fp8_meta)))


def keep_if_nonfinite(ok, new_state, old_state, *, skip: bool):
    """`new_state` when `ok`, else `old_state` (with its step advanced by one when `skip`): a dropped update."""
    kept = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new_state, old_state)
    if skip:
        kept = kept.replace(step=new_state.step)
    return kept


def collections(state) -> dict:
    """{field name: subtree} of a TrainState (params, opt_state, router, fp8_meta, ...)."""
    return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}


@jax.jit
def _flags(trees: dict) -> dict:
    return {name: all_finite(tree) for name, tree in trees.items()}


def nonfinite_collections(tree_or_state) -> list[str]:
    """Names of the collections (TrainState fields, or the keys of a variables dict) holding a NaN/inf."""
    trees = tree_or_state if isinstance(tree_or_state, dict) else collections(tree_or_state)
    flags = _flags({k: v for k, v in trees.items() if jax.tree.leaves(v)})
    return sorted(name for name, ok in flags.items() if not bool(ok))
