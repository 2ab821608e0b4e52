"""FP8 quantization with fine-grained scales (V3 report §3.3; DeepSeek-V3 `inference/kernel.py`).

Shapes: M rows (tokens), K contraction dim, N output dim; Kb = ceil(K/128), Nb = ceil(N/128).

Scale rules (docs/paper.md §3, kernel.py `act_quant` / `weight_dequant`):
  * activations: 1x128 tiles along the contraction (last) axis; weights: 128x128 blocks over the last two axes;
  * online amax of the current tile (no delayed scaling), floored at 1e-4;
  * s = amax / FP_MAX (448 for E4M3), optionally rounded up to a power of two, s = 2^ceil(log2 s) ("ue8m0");
  * q = fp8(x / s), and `s` is returned as the DEQUANT multiplier: x ≈ q · s;
  * sizes that are not multiples of 128 get edge tiles: the tensor is zero-padded before the amax (zeros never
    raise an amax), then the padding is sliced off again, as the HF checkpoints' `weight_scale_inv` was made.
"""

from __future__ import annotations

import jax.numpy as jnp

TILE = 128  # tile / block edge along every quantized axis (V3 report §3.3)
AMAX_FLOOR = 1e-4  # kernel.py act_quant: amax = max(|x|, 1e-4)
E4M3 = jnp.float8_e4m3fn
E5M2 = jnp.float8_e5m2
FP8_MAX = {jnp.dtype(E4M3): 448.0, jnp.dtype(E5M2): 57344.0}


def fp8_max(dtype) -> float:
    """Largest finite value of an FP8 dtype (E4M3: 448, E5M2: 57344)."""
    try:
        return FP8_MAX[jnp.dtype(dtype)]
    except KeyError:
        raise ValueError(f"fp8 dtype: expected float8_e4m3fn or float8_e5m2, got {dtype}") from None


def n_tiles(size: int) -> int:
    """Number of 128-wide tiles covering `size` (the last one may be an edge tile)."""
    return -(-size // TILE)


def _pad_to_tiles(x, axes):
    pads = [(0, 0)] * x.ndim
    for a in axes:
        pads[a] = (0, n_tiles(x.shape[a]) * TILE - x.shape[a])
    return jnp.pad(x, pads)


def amax_to_scale(amax, dtype=E4M3, pow2: bool = False, amax_floor: float = AMAX_FLOOR):
    """Dequant scale s = max(amax, 1e-4) / FP_MAX, optionally 2^ceil(log2 s) (kernel.py act_quant)."""
    s = jnp.maximum(amax.astype(jnp.float32), amax_floor) / fp8_max(dtype)
    return jnp.exp2(jnp.ceil(jnp.log2(s))) if pow2 else s


def cast_fp8(x_over_s, dtype=E4M3):
    """Saturating cast to FP8 (x/s is within ±FP_MAX by construction; the clip guards rounding)."""
    m = fp8_max(dtype)
    return jnp.clip(x_over_s, -m, m).astype(dtype)


def quantize_tiles(x, *, axis: int = -1, dtype=E4M3, pow2: bool = False, amax_floor: float = AMAX_FLOOR):
    """1x128 tile quantization along `axis` (activations along K; 128x1 re-tiling = axis over tokens).

    x [..., K] -> (q [..., K] fp8, s [..., Kb] float32) with x ≈ q · s (s repeated over each tile).
    """
    if x.ndim == 0:
        raise ValueError("quantize_tiles: x must have at least one axis, got a scalar")
    x = jnp.moveaxis(x, axis, -1)
    size = x.shape[-1]
    xp = _pad_to_tiles(x.astype(jnp.float32), [x.ndim - 1])
    tiles = xp.reshape(*x.shape[:-1], -1, TILE)
    s = amax_to_scale(jnp.max(jnp.abs(tiles), axis=-1), dtype, pow2, amax_floor)
    q = cast_fp8(tiles / s[..., None], dtype).reshape(xp.shape)[..., :size]
    return jnp.moveaxis(q, -1, axis), jnp.moveaxis(s, -1, axis)


def dequantize_tiles(q, s, *, axis: int = -1, dtype=jnp.float32):
    """Inverse of `quantize_tiles`: q [..., K] · repeat(s [..., Kb], 128) -> [..., K] in `dtype`."""
    q, s = jnp.moveaxis(q, axis, -1), jnp.moveaxis(s, axis, -1)
    if s.shape != (*q.shape[:-1], n_tiles(q.shape[-1])):
        raise ValueError(f"dequantize_tiles: scale shape {s.shape} does not match q {q.shape} "
                         f"(expected {(*q.shape[:-1], n_tiles(q.shape[-1]))})")
    full = jnp.repeat(s, TILE, axis=-1)[..., : q.shape[-1]]
    return jnp.moveaxis((q.astype(jnp.float32) * full).astype(dtype), -1, axis)


def quantize_blocks(w, *, dtype=E4M3, pow2: bool = False, amax_floor: float = AMAX_FLOOR):
    """128x128 block quantization over the last two axes (weights; V3 report §3.3).

    w [..., R, C] -> (q [..., R, C] fp8, s [..., Rb, Cb] float32) with w ≈ q · s[r//128, c//128].
    """
    if w.ndim < 2:
        raise ValueError(f"quantize_blocks: w must be [..., R, C], got shape {w.shape}")
    r, c = w.shape[-2:]
    wp = _pad_to_tiles(w.astype(jnp.float32), [w.ndim - 2, w.ndim - 1])
    rb, cb = wp.shape[-2] // TILE, wp.shape[-1] // TILE
    blocks = wp.reshape(*w.shape[:-2], rb, TILE, cb, TILE)
    s = amax_to_scale(jnp.max(jnp.abs(blocks), axis=(-3, -1)), dtype, pow2, amax_floor)
    q = cast_fp8(blocks / s[..., :, None, :, None], dtype).reshape(wp.shape)[..., :r, :c]
    return q, s


def expand_block_scales(s, shape):
    """Block scales [..., Rb, Cb] -> elementwise [..., R, C] (kernel.py weight_dequant; edges sliced)."""
    r, c = shape[-2:]
    if s.shape[-2:] != (n_tiles(r), n_tiles(c)):
        raise ValueError(f"block scales: expected [..., {n_tiles(r)}, {n_tiles(c)}] for a tensor of "
                         f"shape {tuple(shape)}, got {s.shape}")
    return jnp.repeat(jnp.repeat(s, TILE, axis=-2), TILE, axis=-1)[..., :r, :c]


def dequantize_blocks(q, s, *, dtype=jnp.float32):
    """Inverse of `quantize_blocks`: y[i, j] = q[i, j] · s[i//128, j//128] (kernel.py weight_dequant)."""
    return (q.astype(jnp.float32) * expand_block_scales(s, q.shape)).astype(dtype)


def quantize_tensor(x, s, *, dtype=E4M3):
    """Per-tensor quantization with a given dequant scale `s` (scalar): x ≈ q · s (TransformerEngine style)."""
    return cast_fp8(x.astype(jnp.float32) / s, dtype)
