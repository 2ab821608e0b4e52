"""DeepSeek-V3 stage layout (model_layout.py) and the micro-batch targets (model_stages.py): index maths,
errors that name the numbers, and split/merge round trips on small arrays (no subprocess, no model compile)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsv3_jax.data.tokenizer import PAD_ID
from dsv3_jax.parallel.pipeline.model_layout import (merge_counts, merge_grads, split_shared, split_stages,
                                                     stage_layout)
from dsv3_jax.parallel.pipeline.model_stages import micro_batches
from dsv3_jax.train.pipeline_step import num_stages
from tests.conftest import tiny_config


def test_stages_are_equal_groups_of_consecutive_blocks():
    lay = stage_layout(tiny_config(n_layers=8, n_dense_layers=3), 4)
    assert (lay.per_stage, lay.n_dense, lay.n_moe, lay.slots) == (2, (2, 1, 0, 0), (0, 1, 2, 2), {"dense": 2, "moe": 2})
    np.testing.assert_array_equal(lay.layer_index("dense"), [[0, 1], [2, 0], [0, 0], [0, 0]])
    np.testing.assert_array_equal(lay.layer_index("moe"), [[0, 0], [0, 0], [1, 2], [3, 4]])
    assert not lay.uniform and stage_layout(tiny_config(n_layers=4, n_dense_layers=0), 2).uniform


def test_indivisible_layers_name_the_numbers():
    with pytest.raises(ValueError, match="n_layers=3 is not divisible by the 2 pipeline stages"):
        stage_layout(tiny_config(), 2)
    with pytest.raises(ValueError, match="pipeline_schedule must be one of"):
        num_stages("gpipe", 4)
    assert num_stages("dualpipev", 4) == 8 and num_stages("dualpipe", 4) == 4


def _tree(n_dense, n_moe, e=4):
    layer = lambda n, off: {"w": jnp.arange(n, dtype=jnp.float32)[:, None] * jnp.ones((n, 3)) + off}
    params = {"embed": {"embedding": jnp.ones((5, 3))}, "dense_layers": layer(n_dense, 100.0),
              "moe_layers": layer(n_moe, 200.0), "mtp_0": {"x": jnp.zeros(2)}}
    router = {"moe_layers": {"moe": {"bias": jnp.arange(n_moe * e, dtype=jnp.float32).reshape(n_moe, e)}},
              "mtp_0": {"block": {"moe": {"bias": jnp.zeros(e)}}}}
    return params, router


def test_split_then_merge_round_trips_in_rank_order():
    lay = stage_layout(tiny_config(n_layers=8, n_dense_layers=3), 4)
    params, router = _tree(3, 5)
    rows = np.array([0, 3, 1, 2, 2, 1, 3, 0])          # DualPipe on 4 ranks: (rank, slot) -> stage
    home = np.array([0, 2, 4, 6])                      # stage s lives in row 2s (slot 0 of rank s)
    sp, consts = split_stages(lay, params, router, rows)
    assert sp["moe"]["w"].shape == (8, 2, 3) and consts["router"]["moe"]["bias"].shape == (8, 2, 4)
    np.testing.assert_array_equal(consts["n_moe"], [0, 2, 1, 2, 2, 1, 2, 0])
    shared, shared_consts = split_shared(params, router)
    assert sorted(shared) == ["embed", "mtp_0"] and sorted(shared_consts) == ["mtp_0"]
    merged = merge_grads(lay, sp, shared, home)
    assert jax.tree.structure(merged) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(merged), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)
    counts = merge_counts(lay, consts["router"]["moe"]["bias"], {"mtp_0": router["mtp_0"]}, home)
    np.testing.assert_array_equal(counts["moe_layers"]["moe"]["bias"], router["moe_layers"]["moe"]["bias"])


def test_micro_batch_weights_reproduce_the_global_means():
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, 256, (6, 5)), jnp.int32)
    targets = tokens.at[0, 3:].set(PAD_ID)
    inputs, t = micro_batches({"inputs": tokens, "targets": targets}, 3, 2, 0.3)
    assert inputs.shape == (3, 2, 5) and t["weights"].shape == (3, 2, 3, 5)
    np.testing.assert_array_equal(inputs[1, 1], tokens[4])        # sequence j*chunks + m in micro-batch m
    w = np.asarray(t["weights"]).sum(axis=(0, 1, 3)) / 3          # executor: mean over micro-batches
    np.testing.assert_allclose(w, [1.0, 0.15, 0.15], rtol=1e-6)   # CE mean; λ/D for each MTP depth
    assert float(t["weights"][0, 0, 0, 3]) == 0.0                 # padded target
    assert float(t["weights"][0, 0, 2, 1]) == 0.0 and float(t["weights"][0, 0, 1, 2]) == 0.0  # t_{i+k+1} is PAD
    with pytest.raises(ValueError, match="batch size 6 is not divisible by the 4 pipeline micro-batches"):
        micro_batches({"inputs": tokens, "targets": targets}, 4, 1, 0.3)
