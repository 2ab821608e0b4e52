"""Grouped (MoE expert) FP8 GEMM: `ragged_dot` with the same recipes as the Linear (V3 report §3.3).

    y [M, N] = ragged_dot(x [M, K], w [E, K, N], group_sizes [E])   rows of x sorted by expert (M tokens)

Blockwise recipe: x in 1x128 tiles along K, each expert's w in 128x128 blocks ([E, Kb, Nb] scales); Dgrad with
dy in 1x128 tiles along N; Wgrad with x and dy re-tiled 128x1 along tokens. This module is the portable jnp
path: it multiplies the DEQUANTIZED FP8 operands in fp32 (precision HIGHEST). Every FP8 product is exact in
fp32, so this equals the per-128-K promotion of kernel.py up to fp32 summation order; the 128-token re-tiling of
Wgrad may straddle expert boundaries (the scale is then shared by two experts' tokens: still a valid tile
scale, as DeepGEMM's k-grouped layout avoids only by padding each expert to 128 tokens).
Per-tensor delayed recipe: one scale each for x, all experts' w and dy (E4M3 / E4M3 / E5M2), see fp8_delayed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dsv3_jax import sharding
from dsv3_jax.quant.fp8 import AMAX_FLOOR, dequantize_blocks, dequantize_tiles, quantize_blocks, quantize_tiles
from dsv3_jax.quant.fp8_delayed import E4M3, E5M2, DelayedMeta, quantize_delayed
from dsv3_jax.quant.fp8_linear import GRAD_AMAX_FLOOR

HI = jax.lax.Precision.HIGHEST


def _ragged(a, b, group_sizes):
    return jax.lax.ragged_dot(a, b, group_sizes, precision=HI, preferred_element_type=jnp.float32)


def _ragged_wgrad(x, dy, group_sizes, num_groups: int, w_proto):
    """dw [E, K, N] = Σ_{tokens m of expert e} x[m]ᵀ dy[m]  (the transpose of ragged_dot w.r.t. w). Inside a
    shard_map dw varies over the axes w varies over (w_proto's): summed over the others, as w's cotangent must
    be (the EP rounds exchange passes weights varying like its tokens and sums once after the last round)."""
    w0 = sharding.vary_like(jnp.zeros((num_groups, x.shape[1], dy.shape[1]), jnp.float32), w_proto)
    _, vjp = jax.vjp(lambda w: _ragged(x, w, group_sizes), w0)
    return vjp(dy.astype(jnp.float32))[0]


def _retile_tokens(a, pow2, floor):
    """Quantize-dequantize in 128x1 tiles along tokens (axis 0), the Wgrad operand layout."""
    q, s = quantize_tiles(a, axis=0, pow2=pow2, amax_floor=floor)
    return dequantize_tiles(q, s, axis=0)


def _proto(a):
    """An empty array with a's dtype and its varying shard_map axes (what a cotangent of `a` must carry)."""
    return sharding.vary_like(jnp.zeros((0,), a.dtype), a)


def _bw_fwd(x, w, group_sizes, pow2):
    xq, sx = quantize_tiles(x, pow2=pow2)
    wq, sw = quantize_blocks(w, pow2=pow2)
    y = _ragged(dequantize_tiles(xq, sx), dequantize_blocks(wq, sw), group_sizes).astype(x.dtype)
    return y, (xq, sx, wq, sw, group_sizes, _proto(x), _proto(w))


def _bw_bwd(pow2, res, dy):
    xq, sx, wq, sw, group_sizes, x_proto, w_proto = res
    dyq, sdy = quantize_tiles(dy, pow2=pow2, amax_floor=GRAD_AMAX_FLOOR)
    w_nk = jnp.swapaxes(dequantize_blocks(wq, sw), 1, 2)  # [E, N, K]
    dx = _ragged(dequantize_tiles(dyq, sdy), w_nk, group_sizes).astype(x_proto.dtype)
    x_t = _retile_tokens(dequantize_tiles(xq, sx), pow2, AMAX_FLOOR)
    g_t = _retile_tokens(dy, pow2, GRAD_AMAX_FLOOR)
    dw = _ragged_wgrad(x_t, g_t, group_sizes, wq.shape[0], w_proto).astype(w_proto.dtype)
    return dx, dw, None


_blockwise = jax.custom_vjp(lambda x, w, gs, pow2: _bw_fwd(x, w, gs, pow2)[0], nondiff_argnums=(3,))
_blockwise.defvjp(_bw_fwd, _bw_bwd)


def _dl_fwd(x, w, group_sizes, meta):
    xq, sx, hx = quantize_delayed(x, meta.x, E4M3)
    wq, sw, hw = quantize_delayed(w, meta.w, E4M3)
    y = (_ragged(xq.astype(jnp.bfloat16), wq.astype(jnp.bfloat16), group_sizes) * (sx * sw)).astype(x.dtype)
    return y, (xq, sx, wq, sw, hx, hw, meta.g, group_sizes, _proto(x), _proto(w))


def _dl_bwd(res, dy):
    xq, sx, wq, sw, hx, hw, hg, group_sizes, x_proto, w_proto = res
    gq, sg, hg_new = quantize_delayed(dy, hg, E5M2)
    g16 = gq.astype(jnp.bfloat16)  # FP8 values are exact in bf16
    dx = _ragged(g16, jnp.swapaxes(wq, 1, 2).astype(jnp.bfloat16), group_sizes) * (sg * sw)
    dw = _ragged_wgrad(xq.astype(jnp.float32), g16, group_sizes, wq.shape[0], w_proto) * (sx * sg)
    return dx.astype(x_proto.dtype), dw.astype(w_proto.dtype), None, DelayedMeta(hx, hw, hg_new)


_delayed = jax.custom_vjp(lambda x, w, gs, meta: _dl_fwd(x, w, gs, meta)[0])
_delayed.defvjp(_dl_fwd, _dl_bwd)


def _check(x, w, group_sizes, name):
    if x.ndim != 2 or w.ndim != 3 or x.shape[1] != w.shape[1]:
        raise ValueError(f"{name}: expected x [M, K] and w [E, K, N] with equal K, got {x.shape}, {w.shape}")
    if group_sizes.shape != (w.shape[0],):
        raise ValueError(f"{name}: group_sizes must be [E] = [{w.shape[0]}], got {group_sizes.shape}")


def blockwise_ragged_dot(x, w, group_sizes, *, pow2_scales: bool = False):
    """Grouped GEMM with the blockwise FP8 recipe (differentiable in x and w)."""
    _check(x, w, group_sizes, "blockwise_ragged_dot")
    return _blockwise(x, w, group_sizes, pow2_scales)


def delayed_ragged_dot(x, w, group_sizes, meta: DelayedMeta):
    """Grouped GEMM with per-tensor delayed scaling; meta's cotangent is its update (see fp8_delayed)."""
    _check(x, w, group_sizes, "delayed_ragged_dot")
    return _delayed(x, w, group_sizes, meta)
