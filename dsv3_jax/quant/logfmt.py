"""LogFMT-nBit: logarithmic n-bit format for communication payloads (Insights §3.2; docs/paper.md §3).

Per 1x128 tile along the last axis (edge tiles are zero-padded; zeros never enter the statistics):
  * l = log|x| over the tile's nonzero elements; hi = max l, lo = max(min l, hi - ln(2^32))  (min clamp);
  * codes (n-1 magnitude bits + 1 sign bit): 0 = zero, 1 = lo, 2^(n-1)-1 = hi, uniform steps in log space,
    Step = (hi - lo) / (2^(n-1) - 2), so magnitude code K decodes to exp(lo + Step·(K-1));
  * each |x| is rounded to the NEAREST representable magnitude in LINEAR space (the unbiased rounding of the
    paper), including the choice between 0 and exp(lo) for elements below the clamped minimum.
Shapes: x [..., D] -> codes [..., D] (uint8 for n <= 8, else uint16), lo and step [..., Db] float32
(Db = ceil(D/128)); the sign is the top bit of each code.
"""

from __future__ import annotations

import math

import jax.numpy as jnp

TILE = 128
LOG_RANGE = 32 * math.log(2.0)  # min clamp: lo > hi - ln(2^32)


def _check_bits(n_bits: int) -> None:
    if not 3 <= n_bits <= 16:
        raise ValueError(f"n_bits: LogFMT needs 3 <= n <= 16 (1 sign bit, >= 2 magnitude codes), got {n_bits}")


def _tiles(x):
    d = x.shape[-1]
    pad = -d % TILE
    xp = jnp.pad(x.astype(jnp.float32), [(0, 0)] * (x.ndim - 1) + [(0, pad)])
    return xp.reshape(*x.shape[:-1], -1, TILE)


def tile_log_range(tiles):
    """Per-tile (lo, hi) of log|x| over nonzero elements with the min clamp; (0, 0) for all-zero tiles."""
    mag = jnp.abs(tiles)
    nz = mag > 0
    logs = jnp.log(jnp.where(nz, mag, 1.0))
    hi = jnp.max(jnp.where(nz, logs, -jnp.inf), axis=-1)
    lo = jnp.min(jnp.where(nz, logs, jnp.inf), axis=-1)
    any_nz = jnp.any(nz, axis=-1)
    hi = jnp.where(any_nz, hi, 0.0)
    lo = jnp.where(any_nz, jnp.maximum(lo, hi - LOG_RANGE), 0.0)
    return lo, hi


def _magnitude_codes(mag, lo, step, levels):
    """Nearest (linear space) magnitude code in [0, levels] for |x| given per-tile lo and step."""
    t = jnp.where(step > 0, (jnp.log(jnp.maximum(mag, 1e-45)) - lo) / jnp.where(step > 0, step, 1.0), 0.0)
    k0 = jnp.clip(jnp.floor(t), 0, levels - 2)  # index of the lower neighbour among 0..levels-1
    v_lo = jnp.exp(lo + step * k0)
    v_hi = jnp.exp(lo + step * (k0 + 1))
    code = jnp.where(mag - v_lo <= v_hi - mag, k0 + 1, k0 + 2)
    below = mag < jnp.exp(lo)  # only the clamped tail (and exact zeros) lie under exp(lo)
    code = jnp.where(below, jnp.where(mag < 0.5 * jnp.exp(lo), 0, 1), code)
    return jnp.where(mag > 0, code, 0)


def logfmt_encode(x, n_bits: int = 8):
    """x [..., D] -> (codes [..., D] uint, lo [..., Db] f32, step [..., Db] f32)."""
    _check_bits(n_bits)
    tiles = _tiles(x)
    levels = 2 ** (n_bits - 1) - 1  # largest magnitude code
    lo, hi = tile_log_range(tiles)
    step = (hi - lo) / (levels - 1)
    mag = _magnitude_codes(jnp.abs(tiles), lo[..., None], step[..., None], levels)
    sign = (tiles < 0).astype(jnp.int32) << (n_bits - 1)
    dtype = jnp.uint8 if n_bits <= 8 else jnp.uint16
    codes = (mag.astype(jnp.int32) | sign).reshape(*tiles.shape[:-2], -1)[..., : x.shape[-1]]
    return codes.astype(dtype), lo, step


def logfmt_decode(codes, lo, step, n_bits: int = 8, dtype=jnp.float32):
    """Inverse of `logfmt_encode`: value = ±exp(lo + step·(K-1)) for K >= 1, 0 for K = 0."""
    _check_bits(n_bits)
    d = codes.shape[-1]
    if lo.shape != (*codes.shape[:-1], -(-d // TILE)) or step.shape != lo.shape:
        raise ValueError(f"logfmt_decode: lo/step must be [..., {-(-d // TILE)}] for codes {codes.shape}, "
                         f"got {lo.shape}, {step.shape}")
    c = codes.astype(jnp.int32)
    k = (c & ((1 << (n_bits - 1)) - 1)).astype(jnp.float32)
    neg = (c >> (n_bits - 1)) & 1
    lo_e = jnp.repeat(lo, TILE, axis=-1)[..., :d]
    st_e = jnp.repeat(step, TILE, axis=-1)[..., :d]
    mag = jnp.where(k > 0, jnp.exp(lo_e + st_e * (k - 1)), 0.0)
    return jnp.where(neg == 1, -mag, mag).astype(dtype)


def logfmt_roundtrip(x, n_bits: int = 8):
    """Quantize-dequantize in x's dtype (for quantization-error studies)."""
    return logfmt_decode(*logfmt_encode(x, n_bits), n_bits=n_bits, dtype=x.dtype)
