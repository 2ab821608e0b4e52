"""Rotary position embedding with YaRN, as the official DeepSeek code (inference/model.py
`precompute_freqs_cis`, `apply_rotary_emb`; docs/paper.md §2 "RoPE / YaRN").

Applied only to the decoupled rope dims of MLA (V3 report eq. 3, 5). Pairs are INTERLEAVED, (x[2i], x[2i+1])
rotated as one complex number. The YaRN blend is static: it depends on the config, not the sequence length.

Legend: B batch, T sequence, H heads, R rope dim (even), R2 = R/2 frequencies.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np


def _correction_dim(num_rotations: float, rope_dim: int, base: float, original_seq_len: int) -> float:
    """Dimension index at which a frequency makes `num_rotations` turns over original_seq_len."""
    return rope_dim * math.log(original_seq_len / (num_rotations * 2 * math.pi)) / (2 * math.log(base))


def yarn_correction_range(rope_dim: int, base: float, original_seq_len: int, beta_fast: float,
                          beta_slow: float) -> tuple[int, int]:
    """(low, high) dims of the YaRN ramp; DeepSeek-V3 gives (10, 23)."""
    low = math.floor(_correction_dim(beta_fast, rope_dim, base, original_seq_len))
    high = math.ceil(_correction_dim(beta_slow, rope_dim, base, original_seq_len))
    return max(low, 0), min(high, rope_dim - 1)


def rope_frequencies(rope_dim: int, base: float, *, yarn: bool, factor: float = 1.0,
                     original_seq_len: int = 4096, beta_fast: float = 32, beta_slow: float = 1) -> np.ndarray:
    """Per-pair angular frequencies [R2] in float64 numpy (static constants of the model)."""
    freqs = 1.0 / (base ** (np.arange(0, rope_dim, 2, dtype=np.float64) / rope_dim))
    if yarn:
        low, high = yarn_correction_range(rope_dim, base, original_seq_len, beta_fast, beta_slow)
        if low == high:  # the official ramp avoids a zero division this way
            high = high + 0.001
        ramp = np.clip((np.arange(rope_dim // 2, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
        smooth = 1.0 - ramp
        freqs = freqs / factor * (1.0 - smooth) + freqs * smooth
    return freqs


def frequencies_for(cfg) -> np.ndarray:
    """The frequencies [R2] a ModelConfig implies."""
    return rope_frequencies(cfg.qk_rope_head_dim, cfg.rope_theta, yarn=cfg.yarn_active, factor=cfg.rope_factor,
                            original_seq_len=cfg.original_seq_len, beta_fast=cfg.beta_fast,
                            beta_slow=cfg.beta_slow)


def apply_rope(x: jnp.ndarray, positions: jnp.ndarray, freqs) -> jnp.ndarray:
    """Rotate interleaved pairs of x [B, T, ..., R] by positions [B, T] · freqs [R2], in fp32."""
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(freqs, jnp.float32)  # [B, T, R2]
    angles = angles.reshape(angles.shape[:2] + (1,) * (x.ndim - 3) + angles.shape[-1:])
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    pairs = x.astype(jnp.float32).reshape(x.shape[:-1] + (x.shape[-1] // 2, 2))
    re, im = pairs[..., 0], pairs[..., 1]
    out = jnp.stack([re * cos - im * sin, re * sin + im * cos], axis=-1)
    return out.reshape(x.shape).astype(x.dtype)
