"""Plain-jnp oracle of the fused 1x128 activation quantization (DeepSeek-V3 `inference/kernel.py` act_quant).

x [M, K] -> (q [M, K] E4M3, s [M, Kb] float32), Kb = ceil(K/128): per row and per 128 columns,
amax = max(|x|, 1e-4), s = amax / 448 (optionally 2^ceil(log2 s)), q = e4m3(x / s); s is the dequant multiplier.
The single definition of these rules lives in dsv3_jax.quant.fp8; this module names it for the kernel package.
"""

from __future__ import annotations

from dsv3_jax.quant.fp8 import AMAX_FLOOR, quantize_tiles


def act_quant_reference(x, *, pow2: bool = False, amax_floor: float = AMAX_FLOOR):
    """x [M, K] -> (q [M, K] float8_e4m3fn, s [M, Kb] float32)."""
    if x.ndim != 2:
        raise ValueError(f"act_quant: x must be [M, K], got shape {x.shape}")
    return quantize_tiles(x, pow2=pow2, amax_floor=amax_floor)
