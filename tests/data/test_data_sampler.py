"""Batch order: per-epoch permutations that are deterministic, seed-dependent and cover every window."""

import numpy as np
import pytest

from dsv3_jax.data import sampler


def splitmix64_reference(x):
    """Independent scalar splitmix64 in Python integers (Steele et al. 2014)."""
    m = (1 << 64) - 1
    z = (x + 0x9E3779B97F4A7C15) & m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return z ^ (z >> 31)


def test_splitmix64_matches_reference():
    xs = [0, 1, 2, 12345, (1 << 64) - 1, 0xDEADBEEFCAFEBABE]
    assert sampler.splitmix64(np.array(xs, dtype=np.uint64)).tolist() == [splitmix64_reference(x) for x in xs]


def test_epoch_permutation_is_a_deterministic_permutation():
    p = sampler.epoch_permutation(1000, seed=3, epoch=0)
    assert sorted(p.tolist()) == list(range(1000))
    np.testing.assert_array_equal(p, sampler.epoch_permutation(1000, seed=3, epoch=0))
    assert not np.array_equal(p, sampler.epoch_permutation(1000, seed=4, epoch=0))
    assert not np.array_equal(p, sampler.epoch_permutation(1000, seed=3, epoch=1))
    assert not np.array_equal(p, np.arange(1000))


def test_window_order_epochs_back_to_back():
    order = sampler.WindowOrder(num_windows=10, batch_size=4, seed=1)
    flat = np.concatenate([order.window_ids(k) for k in range(10)])  # 40 samples = 4 epochs
    for e in range(4):
        np.testing.assert_array_equal(flat[10 * e: 10 * e + 10], sampler.epoch_permutation(10, 1, e))
    np.testing.assert_array_equal(order.window_ids(2), flat[8:12])  # revisiting an earlier batch


def test_window_order_rejects_empty():
    with pytest.raises(ValueError, match="num_windows >= 1"):
        sampler.WindowOrder(0, 4, 0)
