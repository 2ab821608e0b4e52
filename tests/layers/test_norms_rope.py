import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsv3_jax.layers.norms import RMSNorm, rms_norm
from dsv3_jax.layers.rope import apply_rope, rope_frequencies, yarn_correction_range
from tests import reference as ref


def test_rms_norm_matches_reference_and_is_fp32_inside():
    x = np.random.default_rng(0).normal(size=(3, 5, 16)).astype(np.float32) * 7
    w = np.random.default_rng(1).normal(size=16).astype(np.float32)
    np.testing.assert_allclose(rms_norm(jnp.asarray(x), jnp.asarray(w), 1e-6), ref.rms_norm(x, w), rtol=1e-5)
    y = rms_norm(jnp.asarray(x, jnp.bfloat16), jnp.asarray(w), 1e-6)
    assert y.dtype == jnp.bfloat16
    variables = RMSNorm(1e-6).init(jax.random.key(0), x)
    np.testing.assert_array_equal(jax.tree.leaves(variables)[0], np.ones(16))


def test_v3_yarn_correction_range():
    # docs/paper.md §2: V3 (rope dim 64, base 1e4, original 4096, beta 32/1) -> low 10, high 23.
    assert yarn_correction_range(64, 10000.0, 4096, 32, 1) == (10, 23)


@pytest.mark.parametrize("yarn", [False, True])
def test_frequencies_match_reference(yarn):
    ours = rope_frequencies(64, 10000.0, yarn=yarn, factor=40.0, original_seq_len=4096)
    theirs = ref.yarn_freqs(64, 10000.0, 40.0, 4096, 32, 1, yarn)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)
    if yarn:  # low dims (fast) untouched, high dims (slow) divided by the factor
        base = rope_frequencies(64, 10000.0, yarn=False)
        np.testing.assert_allclose(ours[:10], base[:10])
        np.testing.assert_allclose(ours[23:], base[23:] / 40.0)


def test_apply_rope_interleaved_complex_rotation():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 7, 3, 8)).astype(np.float32)  # [B, T, H, R]
    pos = np.stack([np.arange(7), np.arange(7) * 3 + 5])
    freqs = rope_frequencies(8, 10000.0, yarn=True, factor=4.0, original_seq_len=16)
    out = np.asarray(apply_rope(jnp.asarray(x), jnp.asarray(pos), freqs))
    for b in range(2):
        np.testing.assert_allclose(out[b], ref.rope(x[b].astype(np.float64), pos[b], freqs), atol=1e-5)
    # Rotation preserves the norm of every pair and depends only on relative position in dot products.
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5)


def test_apply_rope_shared_key_layout():
    x = np.random.default_rng(2).normal(size=(1, 5, 6)).astype(np.float32)  # [B, T, R], one key for all heads
    freqs = rope_frequencies(6, 10000.0, yarn=False)
    out = apply_rope(jnp.asarray(x), jnp.arange(5)[None], freqs)
    np.testing.assert_allclose(out[0], ref.rope(x[0].astype(np.float64), np.arange(5), freqs), atol=1e-5)
