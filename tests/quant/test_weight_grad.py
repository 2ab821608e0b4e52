"""quant/weight_grad.py: token_dot gives autodiff's numbers for jnp.dot, and its weight gradient takes the
materialized-xᵀ layout on the CPU only for the shapes it names (the compiled HLO shows which dot runs)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsv3_jax.quant.weight_grad import cpu_transposes_weight_grad, token_dot


def _loss(dot):
    return lambda x, w: jnp.sum(jnp.sin(dot(x, w)))


def _reference(x, w):
    return jnp.dot(x, w, preferred_element_type=jnp.float32)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("shape", [(48, 128, 2048), (40, 512, 96), (32, 64, 80)])
def test_matches_autodiff_of_jnp_dot(shape, dtype):
    m, k, n = shape
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((m, k)), dtype)
    w = jnp.asarray(0.1 * rng.standard_normal((k, n)), dtype)
    y = token_dot(x, w)
    assert y.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(y), np.asarray(_reference(x, w)))
    got = jax.jit(jax.grad(_loss(token_dot), (0, 1)))(x, w)
    want = jax.jit(jax.grad(_loss(_reference), (0, 1)))(x, w)
    for g, r in zip(got, want):
        assert g.dtype == r.dtype == dtype
        tol = 1e-5 if dtype == jnp.float32 else 2e-2  # bf16: one rounding of a different summation order
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(r, np.float32), rtol=tol, atol=tol)


def test_rule():
    assert cpu_transposes_weight_grad(256, 4096)  # the output head of the side-by-side model
    assert cpu_transposes_weight_grad(768, 256)  # a down projection from a wide hidden layer
    assert not cpu_transposes_weight_grad(256, 768)
    assert not cpu_transposes_weight_grad(64, 4096)  # too few rows for the copy to pay


def _weight_grad_contractions(hlo: str, k: int, n: int) -> list[str]:
    """lhs contracting dims of the compiled dots whose output is dw [k, n]."""
    return re.findall(rf"f32\[{k},{n}\]\{{1,0\}} dot\([^)]*\), lhs_contracting_dims=\{{(\d)\}}", hlo)


@pytest.mark.parametrize("k,n,want", [(128, 2048, ["1"]), (64, 96, ["0"])])
def test_cpu_weight_grad_dot_layout(k, n, want):
    x, w = jnp.ones((32, k)), jnp.ones((k, n))
    hlo = jax.jit(jax.grad(_loss(token_dot), 1)).lower(x, w).compile().as_text()
    assert _weight_grad_contractions(hlo, k, n) == want  # 1: the row-major GEMM from xᵀ; 0: autodiff's dot


def test_cuda_lowering_keeps_the_plain_dot():
    x, w = jnp.ones((32, 128)), jnp.ones((128, 2048))
    text = jax.export.export(jax.jit(jax.grad(_loss(token_dot), 1)), platforms=["cuda"])(x, w).mlir_module()
    assert "optimization_barrier" not in text
    assert "contracting_dims = [0] x [0]" in text


def test_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"token_dot: expected x \[M, K\] and w \[K, N\]"):
        token_dot(jnp.ones((2, 3, 4)), jnp.ones((4, 5)))
    with pytest.raises(ValueError, match="token_dot"):
        token_dot(jnp.ones((2, 3)), jnp.ones((4, 5)))
