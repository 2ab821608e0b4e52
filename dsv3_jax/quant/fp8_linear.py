"""Blockwise FP8 Linear with a custom VJP: all three GEMMs in FP8 (V3 report §3.3, Fig. 6-7).

    y [M, N] = x [M, K] · w [K, N]        (w in the flax [in, out] layout; leading dims of x are flattened)

  Fprop   y  = x · w          x: 1x128 tiles along K (per token)      w: 128x128 blocks
  Dgrad   dx = dy · wᵀ        dy: 1x128 tiles along N (per token)     w: the same 128x128 blocks (transposable)
  Wgrad   dw = xᵀ · dy        x and dy re-tiled 128x1 along tokens M ("1x128 -> 128x1", V3 report §3.3)
Every GEMM promotes to fp32 every 128 elements of its contraction with the scales multiplied there
(pallas_kernels.fp8_gemm; kernel.py fp8_gemm). E4M3 everywhere (no E5M2), online per-tile amax.

Residuals follow the paper's memory saving: the FP8 activation `xq` (1 byte/element) and its 1x128 scales are
cached, not x; Wgrad dequantizes it and re-quantizes along tokens. Outputs: y and dx in x's dtype (the compute
dtype, bf16 or fp32); dw in w's dtype (fp32 master weights).

Gradient tiles use a tiny amax floor (GRAD_AMAX_FLOOR) instead of kernel.py's 1e-4: that floor was written for
inference activations, and gradients routinely sit far below 1e-4, where it would leave only a few mantissa bits.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from dsv3_jax.quant.fp8 import dequantize_tiles, quantize_blocks, quantize_tiles

GRAD_AMAX_FLOOR = 1e-30  # only guards all-zero tiles; s stays a normal fp32 number (see module docstring)


def _gemm(a, a_s, b, b_s, out_dtype, impl):
    """C = A·Bᵀ with blockwise scales (B stored [N, K]); the Pallas kernels or the jnp reference."""
    from pallas_kernels.fp8_gemm.api import fp8_gemm
    return fp8_gemm(a, a_s, b, b_s, out_dtype=out_dtype, impl=impl)


def _fwd(x, w, impl, pow2):
    xq, sx = quantize_tiles(x, pow2=pow2)  # [M, K], [M, Kb]
    wq, sw = quantize_blocks(w, pow2=pow2)  # [K, N], [Kb, Nb]
    y = _gemm(xq, sx, wq.T, sw.T, x.dtype, impl)  # Fprop: B = wᵀ [N, K]
    return y, (xq, sx, wq, sw, jnp.zeros((0,), x.dtype), jnp.zeros((0,), w.dtype))


def _bwd(impl, pow2, res, dy):
    xq, sx, wq, sw, x_proto, w_proto = res
    dyq, sdy = quantize_tiles(dy, pow2=pow2, amax_floor=GRAD_AMAX_FLOOR)  # [M, N], [M, Nb]
    dx = _gemm(dyq, sdy, wq, sw, x_proto.dtype, impl)  # Dgrad: B = w [K, N] (rows K, contraction N)
    xt = dequantize_tiles(xq, sx).T  # [K, M]: re-tile the cached FP8 activation along tokens
    xtq, sxt = quantize_tiles(xt, pow2=pow2)  # [K, M], [K, Mb]
    dytq, sdyt = quantize_tiles(dy.T, pow2=pow2, amax_floor=GRAD_AMAX_FLOOR)  # [N, M], [N, Mb]
    dw = _gemm(xtq, sxt, dytq, sdyt, w_proto.dtype, impl)  # Wgrad [K, N]; per-row B scales
    return dx, dw


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _blockwise_2d(x, w, impl, pow2):
    return _fwd(x, w, impl, pow2)[0]


_blockwise_2d.defvjp(_fwd, _bwd)


def check_linear_shapes(x, w, name: str = "fp8 linear"):
    """x [..., K] and w [K, N]; raises a ValueError naming the tensor otherwise."""
    if w.ndim != 2:
        raise ValueError(f"{name}: kernel must be [K, N] (flax [in, out] layout), got shape {w.shape}")
    if x.ndim < 1 or x.shape[-1] != w.shape[0]:
        raise ValueError(f"{name}: x must be [..., K] with K = kernel.shape[0] = {w.shape[0]}, got {x.shape}")


def blockwise_linear(x, w, *, impl: str = "auto", pow2_scales: bool = False):
    """y [..., N] = x [..., K] · w [K, N] with the DeepSeek-V3 blockwise FP8 recipe (differentiable).

    impl: the GEMM implementation (pallas_kernels.fp8_gemm.api: "auto" | "mosaic_gpu" | "triton" | "reference").
    pow2_scales: round every scale up to a power of two (kernel.py "ue8m0").
    """
    check_linear_shapes(x, w, "blockwise_linear")
    y = _blockwise_2d(x.reshape(-1, x.shape[-1]), w, impl, pow2_scales)
    return y.reshape(*x.shape[:-1], w.shape[1])
