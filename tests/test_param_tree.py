"""param_tree.py is the one description of the variable tree: the model's variables have exactly its groups,
router biases sit at its paths, and its helpers classify leaves as the optimizer and the pipeline expect."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from flax import traverse_util

import dsv3_jax
from dsv3_jax import param_tree as pt
from tests.conftest import tiny_config


@pytest.mark.parametrize("overrides", [dict(), dict(n_dense_layers=0, n_layers=2, mtp_depth=2),
                                       dict(n_dense_layers=3, n_layers=3, mtp_depth=0)])
def test_model_variables_follow_the_param_tree(overrides):
    cfg = tiny_config(**overrides)
    shapes = nn.unbox(jax.eval_shape(dsv3_jax.DeepSeekV3(cfg).init, jax.random.key(0),
                                     jnp.zeros((1, 4), jnp.int32)))
    groups = {pt.EMBED, pt.NORM, pt.HEAD} | set(pt.stack_sizes(cfg)) | {pt.mtp_name(k) for k in range(cfg.mtp_depth)}
    assert set(shapes[pt.PARAMS]) == groups
    for name, n in pt.stack_sizes(cfg).items():
        assert all(leaf.shape[0] == n for leaf in jax.tree.leaves(shapes[pt.PARAMS][name]))
    router = traverse_util.flatten_dict(shapes.get(pt.ROUTER, {}))
    assert sorted(router) == sorted(pt.router_bias_paths(cfg))
    flat = traverse_util.flatten_dict(shapes[pt.PARAMS])
    routed = [p for p in flat if pt.is_routed_expert(p)]
    assert routed and all(p[-1] in pt.EXPERT_WEIGHTS for p in routed) if cfg.n_moe_layers else not routed


def test_layer_slots():
    cfg = tiny_config(n_layers=4, n_dense_layers=1)
    assert [pt.layer_slot(cfg, i) for i in range(4)] == [(pt.DENSE, 0), (pt.MOE, 0), (pt.MOE, 1), (pt.MOE, 2)]
    with pytest.raises(ValueError, match="not a main-model layer"):
        pt.layer_slot(cfg, 4)
    assert pt.nest(("a", "b"), 1) == {"a": {"b": 1}}
    assert pt.merge({"a": {"b": 1}}, {"a": {"c": 2}}, {"d": 3}) == {"a": {"b": 1, "c": 2}, "d": 3}
    assert pt.is_mtp("mtp_0") and not pt.is_mtp("mtp_x") and not pt.is_mtp("moe_layers")
