"""Fused 1x128 activation quantization through the Pallas Triton backend (kernel.py act_quant semantics).

One program per (block_m rows x one 128-column tile): load the tile once, reduce |x| per row, scale, cast to
E4M3, store q and the per-row scale. Memory-bound: it reads x once and writes 1 byte per element plus one
fp32 scale per 128 elements. Scales are written TRANSPOSED, s_t [Kb, M] (each program stores a contiguous
row slice; the GEMM kernels consume this layout). Needs M % block_m == 0 and K % 128 == 0 (api.py pads).
Runs under interpret=True on CPU.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

TILE = 128
E4M3_MAX = 448.0


def _kernel(x_ref, q_ref, s_ref, *, pow2: bool, amax_floor: float):
    x = x_ref[...].astype(jnp.float32)  # [block_m, 128]
    amax = jnp.maximum(jnp.max(jnp.abs(x), axis=1), amax_floor)
    s = amax / E4M3_MAX
    if pow2:
        s = jnp.exp2(jnp.ceil(jnp.log2(s)))
    y = jnp.clip(x / s[:, None], -E4M3_MAX, E4M3_MAX)
    q_ref[...] = y.astype(q_ref.dtype)
    s_ref[...] = s.reshape(1, -1)


def act_quant_triton(x, *, pow2: bool = False, amax_floor: float = 1e-4, block_m: int = 64,
                     num_warps: int = 4, interpret: bool = False):
    """x [M, K] -> (q [M, K] float8_e4m3fn, s_t [Kb, M] float32)."""
    import jax.experimental.pallas as pl

    m, k = x.shape
    if m % block_m or k % TILE:
        raise ValueError(f"act_quant_triton: need M % {block_m} == 0 and K % {TILE} == 0, got x {x.shape}")
    params = {}
    if not interpret:
        from jax.experimental.pallas import triton as pltriton
        params["compiler_params"] = pltriton.CompilerParams(num_warps=num_warps, num_stages=1)
    kernel = functools.partial(_kernel, pow2=pow2, amax_floor=amax_floor)
    return pl.pallas_call(
        kernel,
        out_shape=(jax.ShapeDtypeStruct((m, k), jnp.float8_e4m3fn),
                   jax.ShapeDtypeStruct((k // TILE, m), jnp.float32)),
        grid=(m // block_m, k // TILE),
        in_specs=[pl.BlockSpec((block_m, TILE), lambda i, j: (i, j))],
        out_specs=(pl.BlockSpec((block_m, TILE), lambda i, j: (i, j)),
                   pl.BlockSpec((1, block_m), lambda i, j: (j, i))),
        interpret=interpret, **params)(x)
