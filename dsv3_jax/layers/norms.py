"""RMSNorm, computed in float32 (V3 report §3.3: normalization stays in high precision)."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


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
    def __call__(self, x):
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, (self.axis_name,)),
                           (x.shape[-1],), jnp.float32)
        return rms_norm(x, scale, self.eps)
