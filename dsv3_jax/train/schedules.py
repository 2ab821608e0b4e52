"""The paper's schedules, scaled from 14.8T tokens to a run of `total` steps (V3 report §4.2).

Learning rate: linear warmup to the peak (2K steps in the paper); constant until 10T tokens; cosine decay to
0.1·peak over the next 4.3T; 0.1·peak for 333B tokens; 7.3e-6/2.2e-4 of peak for the last 167B.
MTP weight λ: 0.3 for the first 10T tokens, 0.1 after. Bias update speed γ: 0.001 for the first 14.3T, 0 after.
Every boundary is placed at the same FRACTION of the run as in the paper.
"""

from __future__ import annotations

import jax.numpy as jnp

PAPER_TOKENS = 14.8e12
CONSTANT_END = 10.0e12 / PAPER_TOKENS  # end of the constant-LR phase, MTP λ switch
COSINE_END = 14.3e12 / PAPER_TOKENS  # end of the cosine decay, γ switch
LOW_END = (14.8e12 - 167e9) / PAPER_TOKENS  # end of the 2.2e-5 phase
LAST_LR_RATIO = 7.3e-6 / 2.2e-4


def learning_rate(step, *, peak: float, total: int, warmup: int, min_ratio: float = 0.1):
    """LR at `step` (a traced int is fine)."""
    s = jnp.asarray(step, jnp.float32)
    c1, c2, c3 = CONSTANT_END * total, COSINE_END * total, LOW_END * total
    warm = peak * jnp.minimum(s + 1.0, warmup) / max(warmup, 1)
    frac = jnp.clip((s - c1) / max(c2 - c1, 1.0), 0.0, 1.0)
    cosine = peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + jnp.cos(jnp.pi * frac)))
    lr = jnp.where(s < warmup, warm, jnp.where(s < c1, peak, cosine))
    lr = jnp.where(s >= c2, peak * min_ratio, lr)
    return jnp.where(s >= c3, peak * LAST_LR_RATIO, lr)


def mtp_lambda(step, *, total: int, start: float = 0.3, end: float = 0.1):
    return jnp.where(jnp.asarray(step) < CONSTANT_END * total, start, end).astype(jnp.float32)


def bias_update_speed(step, *, total: int, gamma: float = 1e-3):
    return jnp.where(jnp.asarray(step) < COSINE_END * total, gamma, 0.0).astype(jnp.float32)
