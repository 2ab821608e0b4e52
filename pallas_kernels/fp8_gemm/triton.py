"""Blockwise-scaled FP8 GEMM through the Pallas Triton backend: the portable path for sm89 (Ada / L4 / L40S)
and any GPU with Triton FP8 dots (on Hopper the Mosaic GPU kernel is the fast path; docs/paper.md §7 measured the
Triton backend at 350-455 TFLOP/s for fp8 on an H100, and it is deprecated since jax 0.11 but still shipped).

Same contract as mosaic_gpu.py: C [M, N] = A·Bᵀ, a [M, K], b [N, K] fp8, scales transposed a_s_t [Kb, M],
b_s_t [Kb, N] (per-row form); per 128-K block: acc += dot(a, bᵀ) · a_s[m] · b_s[n] in fp32 (kernel.py fp8_gemm).
One program per (block_m x block_n) output tile; the operands stay in GMEM refs and each 128-K slice is loaded
with `pl.ds`, so K needs no power-of-two block. Shapes must be padded: M % block_m, N % block_n, K % 128 == 0.
Runs under `interpret=True` on CPU (used by the tests).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

BLOCK_K = 128


def _kernel(a_ref, as_ref, b_ref, bs_ref, o_ref, *, block_m: int, block_n: int, k_blocks: int):
    import jax.experimental.pallas as pl

    rows = pl.ds(pl.program_id(0) * block_m, block_m)
    cols = pl.ds(pl.program_id(1) * block_n, block_n)

    def step(kb, acc):
        ks = pl.ds(kb * BLOCK_K, BLOCK_K)
        part = lax.dot_general(a_ref[rows, ks], b_ref[cols, ks], (((1,), (1,)), ((), ())),
                               preferred_element_type=jnp.float32)
        sa = as_ref[pl.ds(kb, 1), rows]  # [1, block_m]
        sb = bs_ref[pl.ds(kb, 1), cols]  # [1, block_n]
        return acc + part * sa.reshape(block_m, 1) * sb

    acc = lax.fori_loop(0, k_blocks, step, jnp.zeros((block_m, block_n), jnp.float32))
    o_ref[rows, cols] = acc.astype(o_ref.dtype)


def fp8_gemm_triton(a, a_s_t, b, b_s_t, *, out_dtype=jnp.bfloat16, block_m: int = 128, block_n: int = 128,
                    num_warps: int = 8, num_stages: int = 3, interpret: bool = False):
    """Pallas-Triton blockwise FP8 GEMM; see the module docstring for shapes."""
    import jax.experimental.pallas as pl

    (m, k), n = a.shape, b.shape[0]
    if m % block_m or n % block_n or k % BLOCK_K:
        raise ValueError(f"fp8_gemm_triton: need M % {block_m}, N % {block_n}, K % {BLOCK_K} == 0; got a "
                         f"{a.shape}, b {b.shape} (api.py pads)")
    if a_s_t.shape != (k // BLOCK_K, m) or b_s_t.shape != (k // BLOCK_K, n):
        raise ValueError(f"fp8_gemm_triton: a_s_t must be [Kb, M] = {(k // BLOCK_K, m)}, b_s_t [Kb, N] = "
                         f"{(k // BLOCK_K, n)}; got {a_s_t.shape}, {b_s_t.shape}")
    params = {}
    if not interpret:
        from jax.experimental.pallas import triton as pltriton
        params["compiler_params"] = pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages)
    whole = pl.BlockSpec(memory_space=pl.ANY) if interpret else None
    specs = {} if whole is None else {"in_specs": [whole] * 4, "out_specs": whole}
    kernel = functools.partial(_kernel, block_m=block_m, block_n=block_n, k_blocks=k // BLOCK_K)
    return pl.pallas_call(kernel, out_shape=jax.ShapeDtypeStruct((m, n), out_dtype),
                          grid=(m // block_m, n // block_n), interpret=interpret, **specs, **params)(
        a, a_s_t, b, b_s_t)
