"""Fused 1x128 activation quantization (kernel.py act_quant): reference and Pallas Triton kernel (interpret
mode on CPU) against the numpy oracle, CUDA lowering, api dispatch. Scales within 1 fp32 ulp, FP8 codes equal
except rare one-step flips (see tests/quant/test_fp8_quantize.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemm_oracle import quantize_tiles_np
from pallas_kernels.act_quant import act_quant, act_quant_reference
from pallas_kernels.act_quant.triton import act_quant_triton


def _check(q, s, x, pow2=False):
    qo, so = quantize_tiles_np(np.asarray(x, np.float32), pow2=pow2)
    np.testing.assert_allclose(np.asarray(s), so, rtol=2.5e-7, atol=0)
    q = np.asarray(q, np.float32)
    assert (q != qo).mean() <= 5e-3 and np.all(np.abs(q - qo) <= 0.25 * np.abs(qo) + 2.0 ** -9)


@pytest.mark.parametrize("pow2", [False, True])
def test_triton_interpret_matches_oracle(pow2):
    x = jax.random.normal(jax.random.key(0), (128, 384), jnp.float32) * 4
    q, s_t = act_quant_triton(x, pow2=pow2, interpret=True)
    assert q.dtype == jnp.float8_e4m3fn and s_t.shape == (3, 128)
    _check(q, s_t.T, x, pow2)


def test_reference_edge_shapes_and_api():
    x = jax.random.normal(jax.random.key(1), (50, 300), jnp.bfloat16)
    _check(*act_quant_reference(x), x)
    if jax.default_backend() != "gpu":
        _check(*act_quant(x), x)  # auto -> reference on CPU
        with pytest.raises(ValueError, match="triton.*unavailable"):
            act_quant(x, impl="triton")
    with pytest.raises(ValueError, match=r"x must be \[M, K\]"):
        act_quant(x[None])


def test_triton_lowers_for_cuda():
    exp = jax.export.export(jax.jit(act_quant_triton), platforms=["cuda"], disabled_checks=[
        jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")])(
        jax.ShapeDtypeStruct((256, 512), jnp.bfloat16))
    assert "xla.gpu.triton" in exp.mlir_module()


@pytest.mark.parametrize("pow2", [False, True])
def test_kernel_references_equal_the_training_quantizers(pow2):
    """The kernel package's own references (it imports nothing of dsv3_jax) quantize exactly as dsv3_jax.quant,
    which the FP8 training path uses: same codes, same scales, edge tiles included."""
    from dsv3_jax.quant import fp8
    from pallas_kernels.fp8_gemm.reference import quantize_weight_blocks
    x = jax.random.normal(jax.random.key(2), (70, 300), jnp.float32) * 3
    q, s = act_quant_reference(x, pow2=pow2)
    q2, s2 = fp8.quantize_tiles(x, pow2=pow2)
    np.testing.assert_array_equal(np.asarray(s), np.asarray(s2))
    np.testing.assert_array_equal(np.asarray(q, np.float32), np.asarray(q2, np.float32))
    if not pow2:
        qw, sw = quantize_weight_blocks(x)
        qw2, sw2 = fp8.quantize_blocks(x)
        np.testing.assert_array_equal(np.asarray(sw), np.asarray(sw2))
        np.testing.assert_array_equal(np.asarray(qw, np.float32), np.asarray(qw2, np.float32))
