"""FP8 training recipes and LogFMT (V3 report §3.3, Insights §3.2). See recipe.py for the layers' entry points."""

from dsv3_jax.quant.fp8 import (E4M3, E5M2, TILE, dequantize_blocks, dequantize_tiles, quantize_blocks,
                                quantize_tensor, quantize_tiles)
from dsv3_jax.quant.fp8_delayed import DelayedMeta, delayed_linear, init_delayed_meta
from dsv3_jax.quant.fp8_weight import FP8Weight, weight_only_matmul, weight_only_ragged_dot
from dsv3_jax.quant.fp8_grouped import blockwise_ragged_dot, delayed_ragged_dot
from dsv3_jax.quant.fp8_linear import blockwise_linear
from dsv3_jax.quant.logfmt import logfmt_decode, logfmt_encode, logfmt_roundtrip
from dsv3_jax.quant.recipe import RECIPES, check_recipe, make_matmul, make_ragged_dot

__all__ = [
    "E4M3", "E5M2", "TILE", "RECIPES", "DelayedMeta", "FP8Weight", "weight_only_matmul", "weight_only_ragged_dot",
    "quantize_tiles", "dequantize_tiles", "quantize_blocks", "dequantize_blocks", "quantize_tensor",
    "blockwise_linear", "delayed_linear", "init_delayed_meta", "blockwise_ragged_dot", "delayed_ragged_dot",
    "make_matmul", "make_ragged_dot", "check_recipe",
    "logfmt_encode", "logfmt_decode", "logfmt_roundtrip",
]
