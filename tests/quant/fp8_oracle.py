"""Independent numpy oracle of the V3 FP8 scale rules (V3 report §3.3, kernel.py act_quant / weight_dequant).

Written from the equations, not from dsv3_jax.quant: scales in float32 arithmetic (the rule's own precision),
the FP8 cast through ml_dtypes, every product and sum in float64.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

E4M3 = ml_dtypes.float8_e4m3fn
E5M2 = ml_dtypes.float8_e5m2
MAX = {E4M3: 448.0, E5M2: 57344.0}


def scale_np(amax, dtype=E4M3, pow2=False, floor=1e-4):
    s = np.maximum(np.asarray(amax, np.float32), np.float32(floor)) / np.float32(MAX[dtype])
    return np.exp2(np.ceil(np.log2(s))).astype(np.float32) if pow2 else s.astype(np.float32)


def cast_np(v, dtype=E4M3):
    m = np.float32(MAX[dtype])
    return np.clip(v, -m, m).astype(dtype).astype(np.float32)


def quantize_tiles_np(x, dtype=E4M3, pow2=False, floor=1e-4):
    """x [R, K] -> (q [R, K] fp8 values as float32, s [R, ceil(K/128)]) tiling each row by 128."""
    x = np.asarray(x, np.float32)
    r, k = x.shape
    kb = -(-k // 128)
    q = np.zeros_like(x)
    s = np.zeros((r, kb), np.float32)
    for b in range(kb):
        tile = x[:, b * 128:(b + 1) * 128]
        s[:, b] = scale_np(np.abs(tile).max(axis=1), dtype, pow2, floor)
        q[:, b * 128:(b + 1) * 128] = cast_np(tile / s[:, b:b + 1], dtype)
    return q, s


def quantize_blocks_np(w, dtype=E4M3, pow2=False):
    """w [R, C] -> (q, s [ceil(R/128), ceil(C/128)]) with one scale per 128x128 block."""
    w = np.asarray(w, np.float32)
    rb, cb = -(-w.shape[0] // 128), -(-w.shape[1] // 128)
    q = np.zeros_like(w)
    s = np.zeros((rb, cb), np.float32)
    for i in range(rb):
        for j in range(cb):
            blk = w[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128]
            s[i, j] = scale_np(np.abs(blk).max(), dtype, pow2)
            q[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128] = cast_np(blk / s[i, j], dtype)
    return q, s


def expand_np(s, shape):
    """Tile/block scales -> one scale per element of a [R, C] tensor (row scales if s has R rows)."""
    r, c = shape
    if s.shape[0] != r or r == 1:
        s = np.repeat(s, 128, axis=0)[:r]
    return np.repeat(s, 128, axis=1)[:, :c].astype(np.float64)


def gemm_oracle(aq, a_s, bq, b_s):
    """float64 C = (aq·a_s)(bq·b_s)ᵀ: equals per-128-K promotion exactly in exact arithmetic."""
    a = aq.astype(np.float64) * expand_np(a_s, aq.shape)
    b = bq.astype(np.float64) * expand_np(b_s, bq.shape)
    return a @ b.T
