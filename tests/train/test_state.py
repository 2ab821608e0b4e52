"""train/state.py split_state / join_state and train/layout.py StepLayout: the trainer's split layout holds the
same numbers as the stacked one, steps to the same state, and XLA:CPU copies fewer layer slices for it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsv3_jax import param_tree as pt
from dsv3_jax.experiment_config import model_config
from dsv3_jax.parallel.layout import setup_mesh
from dsv3_jax.layer_split import is_split, unrolled_stacks
from dsv3_jax.train import optim, step as step_lib
from dsv3_jax.train.layout import StepLayout, state_shardings
from dsv3_jax.train.state import init_state, join_state, split_state
from tests.train.helpers import micro_experiment


@pytest.fixture(scope="module")
def setup():
    cd = micro_experiment(steps=4)
    cfg, t = model_config(cd), cd.train
    opt = optim.make_optimizer(t)
    return cfg, t, opt, init_state(cfg, opt, 0, t.seq_len)


def _batch(seed, cfg, t):
    x = np.random.default_rng(seed).integers(0, cfg.vocab_size, size=(t.batch_size, t.seq_len + 1))
    return {"inputs": jnp.asarray(x[:, :-1], jnp.int32), "targets": jnp.asarray(x[:, 1:], jnp.int32)}


def _assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)


def test_split_state_cuts_params_and_moments_per_layer_and_joins_back_bitwise(setup):
    cfg, _, _, state = setup
    assert unrolled_stacks(cfg) == {pt.DENSE, pt.MOE}  # the micro model unrolls both stacks
    split = split_state(cfg, state)
    assert is_split(split.params) and not is_split(state.params)
    w1 = state.params[pt.MOE]
    for name in pt.key_names(jax.tree_util.tree_leaves_with_path(w1)[0][0]):
        w1 = w1[name]
    layers = split.params[pt.MOE]
    for name in pt.key_names(jax.tree_util.tree_leaves_with_path(state.params[pt.MOE])[0][0]):
        layers = layers[name]
    assert isinstance(layers, tuple) and len(layers) == cfg.n_moe_layers
    for i, layer in enumerate(layers):
        np.testing.assert_array_equal(layer, w1[i])
    # Adam's moments follow the params (every params-shaped part of the optimizer state).
    assert sum(is_split(x) for x in jax.tree.leaves(split.opt_state, is_leaf=lambda x: isinstance(x, dict))) >= 2
    _assert_trees_equal(join_state(cfg, split), state)
    # A scanned stack stays stacked (scan_unroll=1: the 2 MoE layers loop; the 1-layer dense stack splits).
    scanned = split_state(cfg.replace(scan_unroll=1), state)
    assert not is_split(scanned.params[pt.MOE]) and is_split(scanned.params[pt.DENSE])
    assert join_state(cfg.replace(n_dense_layers=0, n_layers=2, scan_unroll=1), state) is state


def test_a_step_in_the_split_layout_reaches_the_stacked_steps_state(setup):
    cfg, t, opt, state = setup
    step = step_lib.make_train_step(cfg, opt, t)
    fresh = lambda: jax.tree.map(jnp.copy, state)  # the step donates its state
    stacked, split = fresh(), split_state(cfg, fresh())
    for i in range(2):
        stacked, m1 = step(stacked, _batch(i, cfg, t))
        split, m2 = step(split, _batch(i, cfg, t))
        assert float(m1["loss"]) == float(m2["loss"])  # the same forward: the joined stack is the same array
        np.testing.assert_allclose(float(m1["grad_norm"]), float(m2["grad_norm"]), rtol=1e-6)
    assert is_split(split.params)
    joined = join_state(cfg, split)
    assert jax.tree.structure(joined) == jax.tree.structure(stacked)
    for a, b in zip(jax.tree.leaves(joined), jax.tree.leaves(stacked)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)  # the global norm sums in another order


def test_weight_decay_mask_is_the_same_per_layer(setup):
    cfg, _, _, state = setup
    stacked = optim.decay_mask(state.params)
    split = optim.decay_mask(split_state(cfg, state).params)
    by_path = {tuple(pt.key_names(p)): m for p, m in jax.tree_util.tree_leaves_with_path(stacked)}
    layer_key = jax.tree_util.SequenceKey
    for path, m in jax.tree_util.tree_leaves_with_path(split):  # each layer as its stack
        assert m == by_path[tuple(pt.key_names([k for k in path if not isinstance(k, layer_key)]))], path
    assert any(jax.tree.leaves(split)) and not all(jax.tree.leaves(split))


def _copies(hlo: str) -> int:
    """Slices and concatenations of f32 arrays in an optimized HLO (a layer's weights cut out of or put back
    into an [L, ...] stack)."""
    return sum(1 for line in hlo.splitlines() if "= f32[" in line
               and any(op in line for op in (" slice(", "-slice(", " concatenate(")))


def test_step_layout_splits_on_one_device_and_copies_fewer_slices(setup):
    cfg, t, opt, state = setup
    cd = micro_experiment(steps=4)
    mesh, _ = setup_mesh(cd.mesh, cfg, t.batch_size)  # as train/loop.py builds it
    state_sh = state_shardings(cfg, opt, mesh, t.seq_len)
    layout = StepLayout(cfg, state_sh, pipelined=False)
    assert layout.split and not StepLayout(cfg, state_sh, pipelined=True).split
    on_mesh = jax.device_put(state, state_sh)
    split = layout.to_step(on_mesh)
    assert is_split(split.params)
    _assert_trees_equal(layout.to_saved(split), state)
    batch = _batch(0, cfg, t)
    step = step_lib.make_train_step(cfg, opt, t)
    hlo = lambda s: step.lower(s, batch).compile().as_text()
    assert _copies(hlo(split)) < _copies(hlo(state))
