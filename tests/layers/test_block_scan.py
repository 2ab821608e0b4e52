"""layers/block.py run_stack: ModelConfig.scan_unroll changes the loop, never the numbers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsv3_jax import losses
from dsv3_jax.layers.block import SCAN_UNROLL_AUTO_LAYERS, scan_unroll
from dsv3_jax.model import DeepSeekV3
from tests.conftest import tiny_config


def test_auto_unrolls_small_stacks_only():
    assert scan_unroll(0, 3) == 3 and scan_unroll(0, SCAN_UNROLL_AUTO_LAYERS) == SCAN_UNROLL_AUTO_LAYERS
    assert scan_unroll(0, SCAN_UNROLL_AUTO_LAYERS + 1) == 1 and scan_unroll(2, 5) == 2 and scan_unroll(9, 3) == 3


def test_scan_unroll_is_validated():
    with pytest.raises(ValueError, match="scan_unroll"):
        tiny_config(scan_unroll=-1)


def test_unrolled_and_scanned_stacks_agree():
    base = tiny_config(n_layers=4, n_dense_layers=1, mtp_depth=0)  # 3 MoE layers
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, base.vocab_size, (2, 9)), jnp.int32)
    variables = DeepSeekV3(base.replace(scan_unroll=1)).init(jax.random.key(0), tokens[:, :-1])
    results = []
    for unroll in (1, 2, 0):
        model = DeepSeekV3(base.replace(scan_unroll=unroll))
        loss = lambda p: losses.cross_entropy(model.apply({**variables, "params": p}, tokens[:, :-1]).logits,
                                              tokens[:, 1:])
        results.append(jax.jit(jax.value_and_grad(loss))(variables["params"]))
    for value, grads in results[1:]:
        np.testing.assert_allclose(value, results[0][0], rtol=1e-6)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), grads, results[0][1])
