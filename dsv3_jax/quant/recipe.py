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

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from dsv3_jax.quant.fp8 import E4M3, dequantize_blocks, dequantize_tiles, quantize_blocks, quantize_tiles
from dsv3_jax.quant.fp8_delayed import delayed_linear, quantize_delayed
from dsv3_jax.quant.fp8_grouped import blockwise_ragged_dot, delayed_ragged_dot
from dsv3_jax.quant.fp8_linear import blockwise_linear
from dsv3_jax.quant.weight_grad import token_dot
from dsv3_jax.registry import Registry



class Recipe(NamedTuple):
    """One FP8 recipe: mm(x, kernel, meta, dtype, impl, pow2), gmm(x, w, sizes, meta, dtype, pow2), and the
    forward GEMM's two operands as it sees them, quantized then dequantized to fp32: weight(kernel, meta, pow2)
    and activation(x, meta, pow2). Code that regroups a Linear's product (MLA's absorbed decode path
    multiplies by wkv_b's halves separately) uses them to keep the Linear's forward numerics exactly."""
    matmul: Callable
    ragged_dot: Callable
    weight: Callable
    activation: Callable
    stateful: bool  # needs `meta` (amax histories in the fp8_meta collection)


def _need_meta(meta, name):
    if meta is None:
        raise ValueError(f"{name}: recipe 'per_tensor_delayed' needs meta=DelayedMeta (init_delayed_meta())")
    return meta


def tokens_matmul(x, kernel, dtype, out_dtype=None):
    """y [..., N] = x [..., K] · kernel [K, N] in `dtype` with fp32 accumulation (returned in out_dtype, default
    `dtype`), computed on x flattened to [M, K]: the weight gradient is then one plain [K, M]·[M, N] GEMM
    (XLA:CPU runs the gradient of a matmul whose tokens span two axes, contracted over both, 2-3x slower),
    laid out for the backend by quant/weight_grad.token_dot."""
    y = token_dot(x.reshape(-1, x.shape[-1]).astype(dtype), kernel.astype(dtype))
    return y.reshape(*x.shape[:-1], kernel.shape[-1]).astype(out_dtype or dtype)


def _plain_matmul(x, kernel, meta, dtype, impl, pow2):
    del meta, impl, pow2
    return tokens_matmul(x, kernel, dtype)


def _blockwise_weight(kernel, meta, pow2):
    del meta
    return dequantize_blocks(*quantize_blocks(kernel, pow2=pow2))


def _blockwise_activation(x, meta, pow2):
    del meta
    return dequantize_tiles(*quantize_tiles(x, pow2=pow2))


def _delayed_weight(kernel, meta, pow2):
    del pow2
    q, s, _ = quantize_delayed(kernel, _need_meta(meta, "weight").w, E4M3)
    return q.astype(jnp.float32) * s


def _delayed_activation(x, meta, pow2):
    del pow2
    q, s, _ = quantize_delayed(x, _need_meta(meta, "activation").x, E4M3)
    return q.astype(jnp.float32) * s


def _identity(a, meta, pow2):
    del meta, pow2
    return a


def _plain_ragged(x, w, sizes, meta, dtype, pow2):
    del meta, pow2
    return jax.lax.ragged_dot(x, w.astype(dtype), sizes, preferred_element_type=jnp.float32).astype(dtype)


# ModelConfig.fp8 (V3 report §3.3). Layers never branch on the recipe: they call make_matmul/make_ragged_dot.
FP8_RECIPES = Registry("fp8", "FP8 recipe")
FP8_RECIPES.register("none", Recipe(_plain_matmul, _plain_ragged, _identity, _identity, stateful=False))
FP8_RECIPES.register("blockwise", Recipe(
    lambda x, k, meta, dtype, impl, pow2: blockwise_linear(x, k, impl=impl, pow2_scales=pow2),
    lambda x, w, sizes, meta, dtype, pow2: blockwise_ragged_dot(x, w, sizes, pow2_scales=pow2), _blockwise_weight,
    _blockwise_activation, stateful=False))
FP8_RECIPES.register("per_tensor_delayed", Recipe(
    lambda x, k, meta, dtype, impl, pow2: delayed_linear(x, k, _need_meta(meta, "matmul")),
    lambda x, w, sizes, meta, dtype, pow2: delayed_ragged_dot(x, w, sizes, _need_meta(meta, "ragged_dot")),
    _delayed_weight, _delayed_activation, stateful=True))
RECIPES = FP8_RECIPES.names()


def check_recipe(recipe: str) -> str:
    if recipe not in FP8_RECIPES:
        raise ValueError(f"fp8 recipe: expected one of {FP8_RECIPES.names()}, got {recipe!r}")
    return recipe


def make_matmul(recipe: str = "none", *, dtype=jnp.bfloat16, impl: str = "auto",
                pow2_scales: bool = False) -> Callable:
    """Return mm(x [..., K], kernel [K, N], meta=None) -> y [..., N] in `dtype` for the chosen recipe."""
    fn = FP8_RECIPES.get(check_recipe(recipe)).matmul
    dtype = jnp.dtype(dtype)
    return lambda x, kernel, meta=None: fn(x.astype(dtype), kernel, meta, dtype, impl, pow2_scales)


def make_operand_views(recipe: str = "none", *, dtype=jnp.bfloat16, pow2_scales: bool = False) -> Callable:
    """Return views(kernel, meta=None) -> (weight [K, N] fp32, act(x [..., K]) -> fp32): the forward GEMM's
    operands as the recipe quantizes them (Recipe.weight / Recipe.activation; identities without FP8)."""
    r = FP8_RECIPES.get(check_recipe(recipe))
    dtype = jnp.dtype(dtype)
    return lambda kernel, meta=None: (r.weight(kernel, meta, pow2_scales),
                                      lambda x: r.activation(x.astype(dtype), meta, pow2_scales))


def make_ragged_dot(recipe: str = "none", *, dtype=jnp.bfloat16, pow2_scales: bool = False) -> Callable:
    """Return gmm(x [M, K], w [E, K, N], group_sizes [E], meta=None) -> y [M, N] in `dtype`."""
    fn = FP8_RECIPES.get(check_recipe(recipe)).ragged_dot
    dtype = jnp.dtype(dtype)
    return lambda x, w, group_sizes, meta=None: fn(x.astype(dtype), w, group_sizes, meta, dtype, pow2_scales)
