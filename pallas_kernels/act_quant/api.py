"""Public entry point of the fused activation quantization: implementation choice and padding.

    act_quant(x [M, K], pow2=False, impl="auto") -> (q [M, K] E4M3, s [M, Kb] float32)

impl: "triton" (Pallas Triton kernel, any CUDA GPU with FP8 conversion, sm89+), "reference" (jnp), or "auto"
(triton when available, else the reference, logged once). Explicit choices fail fast when unavailable.
Differentiation: quantization is used inside custom_vjp rules (dsv3_jax.quant), never differentiated itself.
"""

from __future__ import annotations

import jax.numpy as jnp

from pallas_kernels import _dispatch
from pallas_kernels.act_quant.reference import act_quant_reference

TILE = 128
IMPL_ORDER = ("triton", "reference")


def act_quant(x, *, pow2: bool = False, amax_floor: float = 1e-4, impl: str = "auto", block_m: int = 64):
    """Fused 1x128 quantization (kernel.py act_quant); pads M and K for the kernel and slices back."""
    if x.ndim != 2:
        raise ValueError(f"act_quant: x must be [M, K], got shape {x.shape}")
    chosen = _dispatch.resolve("act_quant", impl, IMPL_ORDER)
    if chosen == "reference":
        return act_quant_reference(x, pow2=pow2, amax_floor=amax_floor)
    from pallas_kernels.act_quant.triton import act_quant_triton
    m, k = x.shape
    xp = jnp.pad(x, ((0, -m % block_m), (0, -k % TILE)))
    q, s_t = act_quant_triton(xp, pow2=pow2, amax_floor=amax_floor, block_m=block_m)
    return q[:m, :k], s_t.T[:m]
