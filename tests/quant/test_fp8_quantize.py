"""1x128 / 128x128 quantization (V3 report §3.3, kernel.py act_quant) against the numpy oracle.

Bounds: s equals the oracle's to 1 float32 ulp (XLA may evaluate amax/448 as amax·(1/448)); q equals the
oracle's except where that ulp moves x/s across an FP8 rounding boundary, which may move it one FP8 step
(rare: checked <= 0.5% of elements, each within one step, 2^-2 relative). Round trip: for E4M3
each element's error is at most half an FP8 step, |x - q·s| <= 2^-4·|x| + 2^-10·s (the second term covers the
subnormal range below 2^-6·s).
"""

import jax.numpy as jnp
import numpy as np
import pytest

from dsv3_jax.quant import fp8
from fp8_oracle import E5M2, quantize_blocks_np, quantize_tiles_np, scale_np


def assert_scales(s, so):
    np.testing.assert_allclose(np.asarray(s), so, rtol=2.5e-7, atol=0)


def assert_fp8_codes(q, qo):
    q = np.asarray(q, np.float32)
    bad = q != qo
    assert bad.mean() <= 5e-3, f"{bad.sum()} of {bad.size} FP8 values differ from the oracle"
    assert np.all(np.abs(q[bad] - qo[bad]) <= 0.25 * np.abs(qo[bad]) + 2.0 ** -9)


def _x(shape, seed=0, scale=3.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


@pytest.mark.parametrize("shape", [(4, 256), (5, 300), (1, 7)])
@pytest.mark.parametrize("pow2", [False, True])
def test_tiles_match_oracle(shape, pow2):
    x = _x(shape)
    q, s = fp8.quantize_tiles(jnp.asarray(x), pow2=pow2)
    qo, so = quantize_tiles_np(x, pow2=pow2)
    assert q.dtype == jnp.float8_e4m3fn and s.shape == so.shape
    assert_scales(s, so)
    assert_fp8_codes(q, qo)


def test_tiles_e5m2_and_axis0():
    x = _x((300, 6), seed=1)
    q, s = fp8.quantize_tiles(jnp.asarray(x), axis=0, dtype=fp8.E5M2)
    qo, so = quantize_tiles_np(x.T, dtype=E5M2)  # 128x1 tiles along axis 0 = 1x128 tiles of xᵀ
    assert_scales(s, so.T)
    assert_fp8_codes(q, qo.T)


def test_tile_round_trip_bound():
    x = _x((8, 520), seed=2) * np.logspace(-3, 2, 520, dtype=np.float32)
    q, s = fp8.quantize_tiles(jnp.asarray(x))
    deq = np.asarray(fp8.dequantize_tiles(q, s))
    s_full = np.repeat(np.asarray(s), 128, axis=1)[:, :520]
    assert np.all(np.abs(x - deq) <= 2.0 ** -4 * np.abs(x) + 2.0 ** -10 * s_full + 1e-12)


def test_blocks_match_oracle_and_round_trip():
    w = _x((200, 300), seed=3, scale=0.02)
    q, s = fp8.quantize_blocks(jnp.asarray(w))
    qo, so = quantize_blocks_np(w)
    assert s.shape == (2, 3)
    assert_scales(s, so)
    assert_fp8_codes(q, qo)
    deq = np.asarray(fp8.dequantize_blocks(q, s))
    s_full = np.repeat(np.repeat(so, 128, 0), 128, 1)[:200, :300]
    assert np.all(np.abs(w - deq) <= 2.0 ** -4 * np.abs(w) + 2.0 ** -10 * s_full + 1e-12)


def test_batched_blocks_per_expert():
    w = _x((3, 130, 140), seed=4)
    q, s = fp8.quantize_blocks(jnp.asarray(w))
    assert s.shape == (3, 2, 2)
    for e in range(3):
        assert_scales(s[e], quantize_blocks_np(w[e])[1])


def test_amax_floor_and_pow2():
    x = np.zeros((2, 128), np.float32)
    x[1, :3] = [1e-6, -2e-6, 5e-7]  # below the 1e-4 floor
    q, s = fp8.quantize_tiles(jnp.asarray(x))
    assert_scales(s, np.full((2, 1), np.float32(1e-4) / np.float32(448.0)))
    assert np.all(np.asarray(q[0], np.float32) == 0)
    xs = _x((3, 384), seed=5)
    _, s2 = fp8.quantize_tiles(jnp.asarray(xs), pow2=True)
    s2 = np.asarray(s2)
    assert np.all(np.exp2(np.round(np.log2(s2))) == s2)  # powers of two
    assert np.all(s2 >= scale_np(np.abs(xs.reshape(3, 3, 128)).max(-1)) * (1 - 1e-6))  # never below amax/448


def test_quantize_tensor_saturates():
    q = fp8.quantize_tensor(jnp.asarray([1000.0, -1000.0, 1.0]), 1.0)
    np.testing.assert_array_equal(np.asarray(q, np.float32), [448.0, -448.0, 1.0])
    assert np.isfinite(np.asarray(fp8.quantize_tensor(jnp.asarray([1e9]), 1.0, dtype=fp8.E5M2), np.float32)).all()


def test_errors_name_the_tensor():
    with pytest.raises(ValueError, match="scale shape"):
        fp8.dequantize_tiles(jnp.zeros((2, 300), fp8.E4M3), jnp.ones((2, 2)))
    with pytest.raises(ValueError, match="block scales"):
        fp8.dequantize_blocks(jnp.zeros((200, 300), fp8.E4M3), jnp.ones((2, 2)))
    with pytest.raises(ValueError, match=r"quantize_blocks: w must be \[..., R, C\]"):
        fp8.quantize_blocks(jnp.ones((5,)))
    with pytest.raises(ValueError, match="fp8 dtype"):
        fp8.fp8_max(jnp.bfloat16)
