"""RMSNorm, computed in float32 (V3 report §3.3: normalization stays in high precision).

`RMSNorm(eps)(x, then=f, recompute=True)` returns f(norm(x)) with the norm and f inside one recompute region
(layers/recompute.py, ModelConfig.remat="paper"): the norm output is recomputed in the backward, not stored."""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax.numpy as jnp

from dsv3_jax.layers.recompute import region


def rms_norm(x: jnp.ndarray, scale: jnp.ndarray, eps: float) -> jnp.ndarray:
    """y = x / sqrt(mean(x², -1) + eps) · scale, in fp32, returned in x's dtype."""
    x32 = x.astype(jnp.float32)
    y = x32 * jnp.reciprocal(jnp.sqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps))
    return (y * scale.astype(jnp.float32)).astype(x.dtype)


class RMSNorm(nn.Module):
    """Holds the per-channel scale (initialized to ones) of an RMSNorm over the last axis."""

    eps: float
    axis_name: str = "embed"

    @nn.compact
    def __call__(self, x, then: Callable | None = None, recompute: bool = False):
        """norm(x); with `then` (a pure function of arrays, no Flax calls) then(norm(x)), the two as one
        recompute region when `recompute` (the norm output is then never kept for the backward)."""
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, (self.axis_name,)),
                           (x.shape[-1],), jnp.float32)
        if then is None:
            return rms_norm(x, scale, self.eps)
        return region(lambda x, scale: then(rms_norm(x, scale, self.eps)), recompute)(x, scale)
