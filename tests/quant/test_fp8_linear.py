"""The blockwise FP8 Linear's three GEMMs (V3 report §3.3) against the float64 numpy oracle, and its gradients
against the unquantized fp32 linear.

Bounds: each GEMM vs the oracle built from the same scale rules: ‖·‖-relative error < 1e-5 (fp32 accumulation
of exact FP8 products; the oracle's float32 scales may differ by one ulp). Against the UNQUANTIZED fp32 linear:
< 8e-2, the E4M3 budget (3 mantissa bits: per-element relative error <= 2^-4, RMS ~2.7% per operand, two
operands per product, so ~4% in a random-sign dot product).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsv3_jax.quant import blockwise_linear, make_matmul
from fp8_oracle import gemm_oracle, quantize_blocks_np, quantize_tiles_np

M, K, N = 160, 300, 200  # none a multiple of 128: edge tiles everywhere


def _data(seed=0, dy_scale=1.0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((M, K)).astype(np.float32)
    w = (rng.standard_normal((K, N)) * 0.05).astype(np.float32)
    dy = (rng.standard_normal((M, N)) * dy_scale).astype(np.float32)
    return x, w, dy


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def _oracle_three_gemms(x, w, dy):
    xq, sx = quantize_tiles_np(x)  # Fprop: x 1x128 along K
    wq, sw = quantize_blocks_np(w)  # w 128x128 blocks
    y = gemm_oracle(xq, sx, wq.T, sw.T)
    dyq, sdy = quantize_tiles_np(dy, floor=1e-30)  # Dgrad: dy 1x128 along N
    dx = gemm_oracle(dyq, sdy, wq, sw)
    x_deq = xq * np.repeat(sx, 128, axis=1)[:, :K]  # Wgrad: the cached FP8 x, re-tiled 128x1 along tokens
    xtq, sxt = quantize_tiles_np(x_deq.T)
    dytq, sdyt = quantize_tiles_np(dy.T, floor=1e-30)
    dw = gemm_oracle(xtq, sxt, dytq, sdyt)
    return y, dx, dw


@pytest.mark.parametrize("dy_scale", [1.0, 1e-9])  # tiny gradients keep their precision (GRAD_AMAX_FLOOR)
def test_three_gemms_match_oracle(dy_scale):
    x, w, dy = _data(dy_scale=dy_scale)
    y, vjp = jax.vjp(lambda a, b: blockwise_linear(a, b, impl="reference"), jnp.asarray(x), jnp.asarray(w))
    dx, dw = vjp(jnp.asarray(dy))
    y_o, dx_o, dw_o = _oracle_three_gemms(x, w, dy)
    assert _rel(y, y_o) < 1e-5
    assert _rel(dx, dx_o) < 1e-5
    assert _rel(dw, dw_o) < 1e-5


def test_close_to_fp32_linear_and_grads():
    x, w, dy = _data(seed=1)
    x3 = jnp.asarray(x).reshape(4, 40, K)  # leading dims are flattened and restored
    f = lambda a, b: jnp.sum(jnp.tanh(blockwise_linear(a, b, impl="reference")) * dy.reshape(4, 40, N))
    g = lambda a, b: jnp.sum(jnp.tanh(a @ b) * dy.reshape(4, 40, N))
    y = blockwise_linear(x3, jnp.asarray(w), impl="reference")
    assert y.shape == (4, 40, N)
    assert _rel(y, x3 @ w) < 8e-2
    for got, want in zip(jax.grad(f, (0, 1))(x3, jnp.asarray(w)), jax.grad(g, (0, 1))(x3, jnp.asarray(w))):
        assert got.shape == want.shape
        assert _rel(got, want) < 8e-2


def test_bf16_compute_dtype_and_pow2():
    x, w, dy = _data(seed=2)
    mm = make_matmul("blockwise", dtype=jnp.bfloat16, impl="reference", pow2_scales=True)
    y, vjp = jax.vjp(mm, jnp.asarray(x), jnp.asarray(w))
    dx, dw = vjp(jnp.asarray(dy, jnp.bfloat16))
    assert y.dtype == jnp.bfloat16 and dx.dtype == jnp.float32 and dw.dtype == jnp.float32
    assert _rel(y, x @ w) < 8e-2 and _rel(dw, x.T @ dy) < 8e-2 and _rel(dx, dy @ w.T) < 8e-2


def test_jit_and_errors():
    x, w, _ = _data(seed=3)
    y = jax.jit(lambda a, b: blockwise_linear(a, b, impl="reference"))(x, w)
    assert np.isfinite(np.asarray(y)).all()
    with pytest.raises(ValueError, match=r"kernel must be \[K, N\]"):
        blockwise_linear(x, w[None])
    with pytest.raises(ValueError, match="x must be"):
        blockwise_linear(x[:, :10], w)
    with pytest.raises(ValueError, match="impl must be one of"):
        blockwise_linear(x, w, impl="cuda")
