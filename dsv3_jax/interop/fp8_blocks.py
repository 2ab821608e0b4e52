"""FP8 weights of DeepSeek's Hugging Face checkpoints: e4m3 values with a `weight_scale_inv` per 128x128 block.

Rule (docs/paper.md §3; DeepSeek-V3 `inference/kernel.py` weight_dequant): a torch-layout weight w [M, N] stored as
float8_e4m3fn comes with `<name>.weight_scale_inv` float32 [ceil(M/128), ceil(N/128)], and

    w_float[i, j] = w_fp8[i, j] · weight_scale_inv[i // 128, j // 128]

Edge blocks (M or N not a multiple of 128, e.g. wkv_a's 576 rows) are partial: their scale covers only the
rows/columns that exist (the checkpoint made it from the zero-padded block, and zeros never raise an amax).
The block size is always 128 here, never inferred from the tensor shape (the HF loader bug docs/paper.md §3 notes).

`FP8Weight` (quant/fp8_weight.py) holds such a kernel in our [in, out] layout: value [..., I, O] and scale_inv
[..., ceil(I/128), ceil(O/128)], the checkpoint's blocks transposed. Everything here is host-side numpy (ml_dtypes provides float8_e4m3fn), so a checkpoint is dequantized one tensor at
a time without touching an accelerator.
"""

from __future__ import annotations

import jax
import ml_dtypes
import numpy as np

from dsv3_jax.quant.fp8_weight import FP8Weight  # the leaf type (our [in, out] layout); defined below the layers

BLOCK = 128  # weight_block_size of every DeepSeek FP8 checkpoint ([128, 128] in quantization_config)
E4M3 = np.dtype(ml_dtypes.float8_e4m3fn)


def n_blocks(size: int) -> int:
    """Number of 128-blocks covering `size` (the last one may be partial)."""
    return -(-size // BLOCK)


def scale_shape(shape) -> tuple[int, ...]:
    """Shape of the block scales of a tensor [..., M, N]: [..., ceil(M/128), ceil(N/128)]."""
    return (*shape[:-2], n_blocks(shape[-2]), n_blocks(shape[-1]))


def check_scale_shape(w_shape, s_shape, name: str):
    """ValueError naming `name` when a scale tensor does not fit its weight."""
    if len(w_shape) < 2 or tuple(s_shape) != scale_shape(w_shape):
        raise ValueError(f"{name}: block scales must have shape {scale_shape(w_shape) if len(w_shape) >= 2 else '?'} "
                         f"for a weight of shape {tuple(w_shape)} (128x128 blocks), found {tuple(s_shape)}")


def expand_scales(scale_inv: np.ndarray, shape) -> np.ndarray:
    """Block scales [..., Mb, Nb] -> one scale per element [..., M, N] (partial edge blocks sliced)."""
    m, n = shape[-2:]
    return np.repeat(np.repeat(scale_inv, BLOCK, axis=-2)[..., :m, :], BLOCK, axis=-1)[..., :n]


def dequantize(w: np.ndarray, scale_inv: np.ndarray, dtype=np.float32, name: str = "weight") -> np.ndarray:
    """w_fp8 [..., M, N] · weight_scale_inv[i//128, j//128] computed in float32, returned as `dtype`."""
    check_scale_shape(w.shape, scale_inv.shape, f"{name}.weight_scale_inv")
    out = w.astype(np.float32)
    out *= expand_scales(np.asarray(scale_inv, np.float32), w.shape)
    return out.astype(dtype, copy=False)


def is_fp8_weight(x) -> bool:
    return isinstance(x, FP8Weight)


def dequantize_variables(variables, dtype=np.float32):
    """Replace every FP8Weight leaf of a variables tree by its dequantized numpy kernel (for model.apply)."""
    return jax.tree.map(lambda x: dequantize(np.asarray(x.value), np.asarray(x.scale_inv), dtype)
                        if is_fp8_weight(x) else x, variables, is_leaf=is_fp8_weight)
