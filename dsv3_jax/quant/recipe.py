"""The FP8 recipe switch the layers call: one string from the config picks the matmul of every Linear and the
grouped GEMM of the experts (V3 report §3.3: embedding, output head, router, norms and the attention core are
never routed through here and stay in high precision).

    mm  = make_matmul(recipe, dtype=..., impl=...)       y = mm(x [..., K], kernel [K, N], meta=None)
    gmm = make_ragged_dot(recipe, dtype=..., impl=...)   y = gmm(x [M, K], w [E, K, N], group_sizes [E], meta=None)

recipe:
  "none"                plain dot in `dtype` with fp32 accumulation (the bf16 baseline);
  "blockwise"           DeepSeek-V3 fine-grained FP8 (1x128 activations, 128x128 weights, E4M3, online
                        scales, fp32 promotion every 128 of K, FP8 Fprop/Dgrad/Wgrad);
  "per_tensor_delayed"  TransformerEngine-style per-tensor delayed scaling (E4M3 fwd / E5M2 bwd); needs `meta`
                        (a DelayedMeta from init_delayed_meta(); its gradient is its update, see fp8_delayed).
Outputs are in `dtype`; kernel gradients in the kernel's dtype (fp32 master weights).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from dsv3_jax.quant.fp8_delayed import delayed_linear
from dsv3_jax.quant.fp8_grouped import blockwise_ragged_dot, delayed_ragged_dot
from dsv3_jax.quant.fp8_linear import blockwise_linear

RECIPES = ("none", "blockwise", "per_tensor_delayed")


def check_recipe(recipe: str) -> str:
    if recipe not in RECIPES:
        raise ValueError(f"fp8 recipe: expected one of {RECIPES}, got {recipe!r}")
    return recipe


def _need_meta(meta, name):
    if meta is None:
        raise ValueError(f"{name}: recipe 'per_tensor_delayed' needs meta=DelayedMeta (init_delayed_meta())")
    return meta


def make_matmul(recipe: str = "none", *, dtype=jnp.bfloat16, impl: str = "auto",
                pow2_scales: bool = False) -> Callable:
    """Return mm(x [..., K], kernel [K, N], meta=None) -> y [..., N] in `dtype` for the chosen recipe."""
    check_recipe(recipe)
    dtype = jnp.dtype(dtype)

    def mm(x, kernel, meta=None):
        x = x.astype(dtype)
        if recipe == "none":
            y = jnp.einsum("...k,kn->...n", x, kernel.astype(dtype), preferred_element_type=jnp.float32)
            return y.astype(dtype)
        if recipe == "blockwise":
            return blockwise_linear(x, kernel, impl=impl, pow2_scales=pow2_scales)
        return delayed_linear(x, kernel, _need_meta(meta, "matmul"))

    return mm


def make_ragged_dot(recipe: str = "none", *, dtype=jnp.bfloat16, pow2_scales: bool = False) -> Callable:
    """Return gmm(x [M, K], w [E, K, N], group_sizes [E], meta=None) -> y [M, N] in `dtype`."""
    check_recipe(recipe)
    dtype = jnp.dtype(dtype)

    def gmm(x, w, group_sizes, meta=None):
        x = x.astype(dtype)
        if recipe == "none":
            y = jax.lax.ragged_dot(x, w.astype(dtype), group_sizes, preferred_element_type=jnp.float32)
            return y.astype(dtype)
        if recipe == "blockwise":
            return blockwise_ragged_dot(x, w, group_sizes, pow2_scales=pow2_scales)
        return delayed_ragged_dot(x, w, group_sizes, _need_meta(meta, "ragged_dot"))

    return gmm
