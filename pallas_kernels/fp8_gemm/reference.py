"""Plain-jnp oracle of the blockwise-scaled FP8 GEMM (DeepSeek-V3 `inference/kernel.py` fp8_gemm, DeepGEMM).

    C[m, n] = Σ_kb ( Σ_{k in block kb} A[m, k] · B[n, k] ) · a_s[m, kb] · b_s[n, kb]        (fp32)

M rows of A, N rows of B (B is stored [N, K], K-major, so C = A·Bᵀ), K contraction, Kb = ceil(K/128).
  a   [M, K]  fp8 (E4M3/E5M2)    a_s [M, Kb] f32          1x128 tiles of A along K (per token)
  b   [N, K]  fp8                b_s [Nb, Kb] f32          128x128 blocks of B (weights), Nb = ceil(N/128)
                              or b_s [N, Kb]  f32          1x128 tiles of B along K (wgrad: 128x1 re-tiling)
The fp32 promotion happens once per 128 of K (V3 report §3.3, N_C = 128): each block's dot product is exact
(FP8 products are exact in fp32) and is scaled and added to an fp32 accumulator, as kernel.py does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

TILE = 128


def check_operands(a, a_s, b, b_s):
    """Validate shapes; returns b_s expanded to per-row form [N, Kb]. Errors name the tensor."""
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"fp8_gemm: expected a [M, K] and b [N, K], got a {a.shape}, b {b.shape}")
    (m, k), (n, k2) = a.shape, b.shape
    if k == 0:
        raise ValueError(f"fp8_gemm: contraction size K must be >= 1, got a {a.shape}")
    if k != k2:
        raise ValueError(f"fp8_gemm: b must be stored [N, K] with K={k} (a is {a.shape}), got b {b.shape}")
    kb = -(-k // TILE)
    if a_s.shape != (m, kb):
        raise ValueError(f"fp8_gemm: a_s must be [M, Kb] = {(m, kb)}, got {a_s.shape}")
    nb = -(-n // TILE)
    if b_s.shape == (n, kb):
        return b_s.astype(jnp.float32)
    if b_s.shape == (nb, kb):
        return jnp.repeat(b_s.astype(jnp.float32), TILE, axis=0)[:n]
    raise ValueError(f"fp8_gemm: b_s must be [Nb, Kb] = {(nb, kb)} (128x128 blocks) or [N, Kb] = "
                     f"{(n, kb)} (1x128 tiles), got {b_s.shape}")


def fp8_gemm_reference(a, a_s, b, b_s, out_dtype=jnp.bfloat16):
    """C = A·Bᵀ with per-128-K fp32 promotion and scaling; a scan over the K blocks (memory O(M·N))."""
    b_rows = check_operands(a, a_s, b, b_s)
    (m, k), n = a.shape, b.shape[0]
    kb = a_s.shape[1]
    pad = kb * TILE - k
    # FP8 values are exact in bf16; bf16 x bf16 products are exact in the fp32 accumulator.
    a3 = jnp.pad(a.astype(jnp.bfloat16), ((0, 0), (0, pad))).reshape(m, kb, TILE).transpose(1, 0, 2)
    b3 = jnp.pad(b.astype(jnp.bfloat16), ((0, 0), (0, pad))).reshape(n, kb, TILE).transpose(1, 0, 2)

    def block(blk):
        ab, bb, sa, sb = blk
        part = jax.lax.dot_general(ab, bb, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
        return part * sa[:, None] * sb[None, :]

    blocks = (a3, b3, a_s.astype(jnp.float32).T, b_rows.T)
    # The first block seeds the carry (so it inherits the inputs' shard_map varying axes), the rest are scanned.
    acc0 = block(jax.tree.map(lambda v: v[0], blocks))
    acc, _ = jax.lax.scan(lambda acc, blk: (acc + block(blk), None), acc0, jax.tree.map(lambda v: v[1:], blocks))
    return acc.astype(out_dtype)


def quantize_weight_blocks(w, *, e4m3_max: float = 448.0, amax_floor: float = 1e-4):
    """w [R, C] -> (q [R, C] E4M3, s [Rb, Cb] f32): 128x128 blocks, s = max(amax, 1e-4) / 448, w ≈ q·s
    (kernel.py weight_dequant's layout; edge blocks zero-padded before the amax). For benchmarks and tests."""
    r, c = w.shape
    rb, cb = -(-r // TILE), -(-c // TILE)
    blocks = jnp.pad(w.astype(jnp.float32), ((0, rb * TILE - r), (0, cb * TILE - c))).reshape(rb, TILE, cb, TILE)
    s = jnp.maximum(jnp.max(jnp.abs(blocks), axis=(1, 3)), amax_floor) / e4m3_max
    q = jnp.clip(blocks / s[:, None, :, None], -e4m3_max, e4m3_max).astype(jnp.float8_e4m3fn)
    return q.reshape(rb * TILE, cb * TILE)[:r, :c], s
