"""The plain (non-FP8) token matmul y [M, N] = x [M, K] · w [K, N] with fp32 accumulation, and the layout of
its weight gradient dw = xᵀ · dy.

Autodiff writes dw as ONE dot contracting the lhs's major axis (the token axis M of x). XLA:CPU hands such a dot to
Eigen, not to YNNPACK (whose dots want the contraction on the lhs's minor axis), and Eigen runs it at an erratic
speed: for the output head of the side-by-side model (K = 256, N = 4096, M = 2048) at about 37 GF/s on one core and
73 on two (a 2-core AMD EPYC Zen 2 VM, AVX2, jax 0.10.2, 2026-12-03), against 85 and 165 for the same product with
xᵀ materialized row-major first (`python -m benchmarks.weight_grad_layout` prints the grid). The copy of x costs one
pass over [M, K]. So on the CPU, for the shapes where Eigen was measured slow, dw is `dot(barrier(xᵀ), dy)`; the
optimization barrier keeps XLA from folding the transpose back into the dot's operand layout. Other backends (cuBLAS
takes either operand order at full speed) and other shapes keep autodiff's dot. The choice is made per lowering
platform (`lax.platform_dependent`), so a program exported for CUDA from a CPU host gets the plain dot.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Eigen was slow (0.4-0.6x of the materialized layout) from N >= 2048 columns or K >= 512 rows of dw; with
# K < 128 the copy does not pay (benchmarks/weight_grad_layout.py on the Zen 2 VM above, 2 cores and 1). On a
# 2-core Zen 4 VM (AVX-512, same day) the cells this rule marks ran at 0.51-1.11x the time of autodiff's dot and
# the side-by-side training step at 0.968-0.969x.
MIN_ROWS, WIDE_ROWS, WIDE_COLS = 128, 512, 2048


def cpu_transposes_weight_grad(k: int, n: int) -> bool:
    """Whether dw [k, n] of a token matmul is computed from a materialized xᵀ on the CPU (module docstring)."""
    return k >= MIN_ROWS and (k >= WIDE_ROWS or n >= WIDE_COLS)


def token_dot(x: jnp.ndarray, w: jnp.ndarray) -> jnp.ndarray:
    """y [M, N] = x [M, K] · w [K, N] (operands in one dtype) accumulated and returned in fp32; the same
    numbers as `jnp.dot(x, w, preferred_element_type=float32)`, gradients in the operands' dtypes."""
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[0]:
        raise ValueError(f"token_dot: expected x [M, K] and w [K, N], got {x.shape} and {w.shape}")
    if not cpu_transposes_weight_grad(*w.shape):
        return _dot(x, w)
    return _dot_cpu_weight_grad(x, w)


def _dot(x, w):
    return jnp.dot(x, w, preferred_element_type=jnp.float32)


@jax.custom_vjp
def _dot_cpu_weight_grad(x, w):
    return _dot(x, w)


def _forward(x, w):
    return _dot(x, w), (x, w)


def _backward(res, dy):
    x, w = res
    dx = jax.lax.dot_general(dy, w, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    dw = jax.lax.platform_dependent(x, dy, cpu=_weight_grad_transposed, default=_weight_grad_plain)
    return dx.astype(x.dtype), dw.astype(w.dtype)


def _weight_grad_plain(x, dy):
    return jax.lax.dot_general(x, dy, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)


def _weight_grad_transposed(x, dy):
    x_t = jax.lax.optimization_barrier(jnp.transpose(x))  # [K, M] row-major: a plain GEMM for YNNPACK
    return jax.lax.dot_general(x_t, dy, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)


_dot_cpu_weight_grad.defvjp(_forward, _backward)
