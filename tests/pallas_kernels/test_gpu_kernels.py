"""GPU-only checks of the FP8 kernels against a float64 numpy oracle (skip cleanly without a CUDA GPU).

Run on a Hopper machine: `python3 -m pytest tests/pallas_kernels/test_gpu_kernels.py -q`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemm_oracle import operands, quantize_tiles_np, rel


def _cc():
    dev = jax.devices()[0]
    if dev.platform != "gpu":
        return None
    return tuple(int(v) for v in str(getattr(dev, "compute_capability", "0.0")).split(".")[:2])


CC = _cc()
needs_gpu = pytest.mark.skipif(CC is None, reason="needs a CUDA GPU")
needs_hopper = pytest.mark.skipif(CC is None or CC < (9, 0), reason="needs a Hopper (sm90) GPU")


IMPLS = [pytest.param("mosaic_gpu", marks=needs_hopper), pytest.param("triton", marks=needs_gpu)]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("m,n,k,block_b", [(256, 256, 512, True), (200, 300, 330, True), (384, 256, 640, False),
                                           (1024, 2112, 1536, True)])
def test_fp8_gemm_matches_oracle(impl, m, n, k, block_b):
    from pallas_kernels.fp8_gemm.api import fp8_gemm
    args, want = operands(m, n, k, block_b)
    out = fp8_gemm(*args, out_dtype=jnp.float32, impl=impl)
    assert np.isfinite(np.asarray(out)).all() and rel(out, want) < 1e-5


@needs_gpu
def test_act_quant_triton_matches_reference():
    from pallas_kernels.act_quant.api import act_quant
    x = jax.random.normal(jax.random.key(0), (300, 700), jnp.bfloat16) * 5
    q, s = act_quant(x, impl="triton")
    qr, sr = quantize_tiles_np(np.asarray(x, np.float32))
    np.testing.assert_array_equal(np.asarray(q, np.float32), qr)
    np.testing.assert_allclose(np.asarray(s), sr, rtol=1e-6)


@needs_hopper
def test_blockwise_linear_grads_with_kernel():
    from dsv3_jax.quant.fp8_linear import blockwise_linear
    x = jax.random.normal(jax.random.key(1), (512, 384), jnp.bfloat16)
    w = jax.random.normal(jax.random.key(2), (384, 640), jnp.float32) * 0.05
    loss = lambda impl: lambda x, w: jnp.sum(blockwise_linear(x, w, impl=impl).astype(jnp.float32) ** 2)
    got = jax.grad(loss("mosaic_gpu"), (0, 1))(x, w)
    want = jax.grad(loss("reference"), (0, 1))(x, w)
    for g, r in zip(got, want):
        g, r = np.asarray(g, np.float64), np.asarray(r, np.float64)
        assert np.linalg.norm(g - r) / np.linalg.norm(r) < 2e-2  # bf16 rounding of dy / dx only
