"""infer/layer_split.py: split variables decode to the same numbers as stacked ones, and XLA:CPU then reads
every unrolled layer's weights in place (no slice copies in the compiled decoding step)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsv3_jax import param_tree as pt
from dsv3_jax.infer import decode_step, generate, init_cache, join_layers, prefill, split_layers
from dsv3_jax.infer.layer_split import LayerSplit
from dsv3_jax.model import DeepSeekV3
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def model():
    cfg = tiny_config(n_layers=3, n_dense_layers=1, mtp_depth=0)
    variables = DeepSeekV3(cfg).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
    return cfg, nn.unbox({k: variables[k] for k in (pt.PARAMS, pt.ROUTER) if k in variables})


def test_split_round_trip(model):
    cfg, variables = model
    split = split_layers(cfg, variables)
    assert isinstance(split, LayerSplit) and split_layers(cfg, split) is split
    n_moe = pt.stack_sizes(cfg)[pt.MOE]
    leaf = jax.tree.leaves(split.tree[pt.PARAMS][pt.MOE], is_leaf=lambda a: isinstance(a, tuple))[0]
    assert isinstance(leaf, tuple) and len(leaf) == n_moe
    joined = join_layers(cfg, split)
    assert jax.tree.structure(joined) == jax.tree.structure(variables)
    for a, b in zip(jax.tree.leaves(joined), jax.tree.leaves(variables)):
        np.testing.assert_array_equal(a, b)
    assert join_layers(cfg, variables) is variables


def test_not_unrolled_stacks_stay_stacked(model):
    cfg, variables = model
    split = split_layers(cfg.replace(scan_unroll=1), variables)  # a loop over 2 MoE layers: nothing to gain
    moe = lambda v: jax.tree.leaves(v[pt.PARAMS][pt.MOE])  # noqa: E731
    for a, b in zip(moe(split.tree), moe(variables)):
        assert a is b


def test_split_decodes_identically(model):
    cfg, variables = model
    prompts = [[3, 1, 4, 1, 5], [9, 2, 6]]
    want = generate(cfg, variables, prompts, max_new_tokens=6)
    got = generate(cfg, split_layers(cfg, variables), prompts, max_new_tokens=6)
    np.testing.assert_array_equal(got.tokens, want.tokens)
    tokens, lengths = np.array([[3, 1, 4, 1], [9, 2, 6, 0]], np.int32), np.array([4, 3], np.int32)
    outs = []
    for v in (variables, split_layers(cfg, variables)):
        cache, logits = prefill(cfg, v, tokens, lengths, init_cache(cfg, 2, 8))
        _, step = decode_step(cfg, v, cache, jnp.array([7, 8], jnp.int32))
        outs.append((np.asarray(logits), np.asarray(step)))
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)


def _slices_of_params(cfg, variables) -> int:
    """Slice / dynamic-slice instructions in the optimized HLO of one decoding step."""
    cache, _ = prefill(cfg, variables, np.ones((2, 4), np.int32), np.array([4, 4], np.int32), init_cache(cfg, 2, 8))
    from dsv3_jax.infer.decode import _decode_step
    hlo = _decode_step.lower(cfg, variables, cache, jnp.array([1, 2], jnp.int32)).compile().as_text()
    return sum(1 for line in hlo.splitlines() if "= f32[" in line and (" slice(" in line or "-slice(" in line)
               and "parameter" not in line.split("(", 1)[0])


def test_split_leaves_no_weight_slices(model):
    cfg, variables = model
    assert _slices_of_params(cfg, split_layers(cfg, variables)) < _slices_of_params(cfg, variables)
