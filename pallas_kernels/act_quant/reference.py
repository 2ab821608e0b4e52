"""Plain-jnp oracle of the fused 1x128 activation quantization (DeepSeek-V3 `inference/kernel.py` act_quant).

x [M, K] -> (q [M, K] E4M3, s [M, Kb] float32), Kb = ceil(K/128): per row and per 128 columns,
amax = max(|x|, 1e-4), s = amax / 448 (optionally 2^ceil(log2 s), "ue8m0"), q = e4m3(x / s); s is the dequant
multiplier (x ≈ q · s). Written from those rules on its own (the kernel package imports nothing of dsv3_jax);
tests/pallas_kernels/test_act_quant.py checks it against dsv3_jax.quant.fp8, the training code's quantizer.
"""

from __future__ import annotations

import jax.numpy as jnp

TILE = 128
AMAX_FLOOR = 1e-4
E4M3_MAX = 448.0


def act_quant_reference(x, *, pow2: bool = False, amax_floor: float = AMAX_FLOOR):
    """x [M, K] -> (q [M, K] float8_e4m3fn, s [M, Kb] float32)."""
    if x.ndim != 2:
        raise ValueError(f"act_quant: x must be [M, K], got shape {x.shape}")
    m, k = x.shape
    kb = -(-k // TILE)
    tiles = jnp.pad(x.astype(jnp.float32), ((0, 0), (0, kb * TILE - k))).reshape(m, kb, TILE)
    s = jnp.maximum(jnp.max(jnp.abs(tiles), axis=-1), amax_floor) / E4M3_MAX
    if pow2:
        s = jnp.exp2(jnp.ceil(jnp.log2(s)))
    q = jnp.clip(tiles / s[..., None], -E4M3_MAX, E4M3_MAX).astype(jnp.float8_e4m3fn)
    return q.reshape(m, kb * TILE)[:, :k], s
