"""Checkpointer round trips (full and model-variables-only) with and without the optional collections (router
biases, FP8 histories)."""

import jax
import jax.numpy as jnp
import numpy as np

from dsv3_jax.quant.fp8_delayed import DelayedMeta
from dsv3_jax.train.checkpoint import Checkpointer
from dsv3_jax.train.state import TrainState


def _state(step, router, fp8_meta):
    params = {"w": jnp.arange(6.0).reshape(2, 3) + step}
    return TrainState(step=jnp.asarray(step, jnp.int32), params=params, opt_state={"mu": params}, router=router,
                      rng=jnp.asarray([1, 2], jnp.uint32), fp8_meta=fp8_meta)


def test_round_trip_with_empty_and_full_optional_collections(tmp_path):
    meta = {"w": DelayedMeta(jnp.asarray([3.0, 2.0]), jnp.asarray([1.0, 0.0]), jnp.asarray([5.0, 4.0]))}
    cases = {"empty": ({}, {}), "full": ({"bias": jnp.asarray([0.1, -0.1])}, meta)}
    for name, (router, fp8_meta) in cases.items():
        ckpt = Checkpointer(str(tmp_path / name))
        saved = _state(7, router, fp8_meta)
        ckpt.save(saved, {"pos": 3})
        abstract = jax.eval_shape(lambda: _state(0, router, fp8_meta))
        state, data = ckpt.restore(ckpt.latest_step(), abstract)
        assert data == {"pos": 3} and int(state.step) == 7
        assert jax.tree.structure(state) == jax.tree.structure(saved), name
        for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(saved)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        variables = ckpt.restore_variables(7, {"params": abstract.params, "router": abstract.router,
                                                "fp8_meta": abstract.fp8_meta})
        assert jax.tree.structure(variables) == jax.tree.structure(
            {"params": saved.params, "router": saved.router, "fp8_meta": saved.fp8_meta}), name
        want = {"params": saved.params, "router": saved.router, "fp8_meta": saved.fp8_meta}
        for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(want)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        ckpt.close()
