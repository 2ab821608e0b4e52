"""Weight-only FP8: kernels kept as DeepSeek's checkpoints store them (E4M3 values + one scale per 128x128 block)
and multiplied without materializing a dequantized copy (V3 report §3.3; docs/paper.md §3; DeepSeek-V3
`inference/kernel.py` fp8_gemm applies the block scales during the K loop in fp32).

    kernel[i, o] = value[i, o] · scale_inv[i // 128, o // 128]        value [..., I, O] e4m3, scale_inv [..., Ib, Ob]

`FP8Weight` is that pair, in OUR [in, out] kernel layout (the checkpoint's torch [out, in] blocks transposed).
It is a pytree of two leaves, so it can sit in a params tree where a kernel would (`layers/linear.py` sends it
here). The matmuls contract K in 128-row blocks: each block's partial product is taken in the compute dtype
(e4m3 -> bf16/f16/f32 is exact), accumulated in fp32 and scaled by that block's per-column scales, i.e.

    y[m, o] = Σ_kb scale_inv[kb, o // 128] · Σ_{i in kb} x[m, i] · value[i, o]

(legend: M rows/tokens, K = I contraction, N = O outputs, Kb = ceil(K/128), Nb = ceil(N/128), E experts).
This is the jnp reference (CPU); a GPU kernel would fuse the same loop. Activations are not quantized
(weight-only), so an FP8Weight never meets an FP8 training recipe (ModelConfig.fp8 must be "none").
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp

from dsv3_jax.quant.fp8 import TILE, dequantize_blocks, n_tiles


@flax.struct.dataclass
class FP8Weight:
    """A kernel kept in FP8: value [..., I, O] float8_e4m3fn and scale_inv [..., ceil(I/128), ceil(O/128)]
    float32 (numpy or jax leaves), kernel = value · scale_inv[i//128, o//128] (`dequantize`)."""

    value: jnp.ndarray
    scale_inv: jnp.ndarray

    @property
    def shape(self):
        return self.value.shape

    def dequantize(self, dtype=jnp.float32):
        """The float kernel (jnp; computed in float32, returned as `dtype`)."""
        return dequantize_blocks(jnp.asarray(self.value), jnp.asarray(self.scale_inv), dtype=dtype)


def is_fp8_weight(x) -> bool:
    return isinstance(x, FP8Weight)


def check_fp8_weight(w: FP8Weight, name: str = "FP8Weight") -> None:
    """ValueError naming `name` unless value is [..., I, O] e4m3 and scale_inv fits it (128x128 blocks)."""
    v, s = w.value, w.scale_inv
    if v.ndim < 2 or jnp.dtype(v.dtype) != jnp.dtype(jnp.float8_e4m3fn):
        raise ValueError(f"{name}.value: expected float8_e4m3fn [..., I, O], got {v.dtype} {tuple(v.shape)}")
    want = (*v.shape[:-2], n_tiles(v.shape[-2]), n_tiles(v.shape[-1]))
    if tuple(s.shape) != want:
        raise ValueError(f"{name}.scale_inv: expected shape {want} (128x128 blocks of value {tuple(v.shape)}), "
                         f"got {tuple(s.shape)}")


def _k_blocks(a, axis: int):
    """Zero-pad `axis` (K) to whole 128-blocks and split it: [..., K, ...] -> [..., Kb, 128, ...]."""
    k = a.shape[axis]
    pads = [(0, 0)] * a.ndim
    pads[axis] = (0, n_tiles(k) * TILE - k)
    a = jnp.pad(a, pads)
    axis = axis % a.ndim
    return a.reshape(a.shape[:axis] + (n_tiles(k), TILE) + a.shape[axis + 1:])


def _column_scales(scale_inv, n: int):
    """Block scales [..., Kb, Nb] -> per-column scales [..., Kb, N] (partial last block sliced)."""
    return jnp.repeat(scale_inv.astype(jnp.float32), TILE, axis=-1)[..., :n]


def weight_only_matmul(x, w: FP8Weight, dtype, out_dtype=None):
    """y [..., N] = x [..., K] · kernel(w) with kernel [K, N] kept in FP8 (see the module docstring); the
    products run in `dtype`, accumulation and block scaling in fp32, output in out_dtype (default dtype)."""
    dtype = jnp.dtype(dtype)
    k, n = w.value.shape
    x2 = x.reshape(-1, k).astype(dtype)
    xb = jnp.moveaxis(_k_blocks(x2, 1), 1, 0)                  # [Kb, M, 128]
    qb = _k_blocks(w.value, 0)                                 # [Kb, 128, N]
    sb = _column_scales(w.scale_inv, n)                        # [Kb, N]

    def block(acc, xs):
        xk, qk, sk = xs
        part = jnp.dot(xk, qk.astype(dtype), preferred_element_type=jnp.float32)  # [M, N]
        return acc + part * sk[None, :], None

    acc, _ = jax.lax.scan(block, jnp.zeros((x2.shape[0], n), jnp.float32), (xb, qb, sb))
    return acc.reshape(*x.shape[:-1], n).astype(out_dtype or dtype)


def weight_only_ragged_dot(x, w: FP8Weight, group_sizes, dtype):
    """The grouped GEMM of the routed experts with FP8 expert kernels: rows x [M, K] grouped contiguously by
    group_sizes [E], w.value [E, K, N], w.scale_inv [E, Kb, Nb] -> y [M, N] in `dtype`. Each row's block
    scales are its expert's; rows past sum(group_sizes) give zeros, as jax.lax.ragged_dot."""
    dtype = jnp.dtype(dtype)
    e, k, n = w.value.shape
    m = x.shape[0]
    row_expert = jnp.repeat(jnp.arange(e), group_sizes, total_repeat_length=m)  # [M] (clamped past the end)
    xb = jnp.moveaxis(_k_blocks(x.astype(dtype), 1), 1, 0)    # [Kb, M, 128]
    qb = jnp.moveaxis(_k_blocks(w.value, 1), 1, 0)            # [Kb, E, 128, N]
    sb = jnp.moveaxis(_column_scales(w.scale_inv, n), 1, 0)   # [Kb, E, N]

    def block(acc, xs):
        xk, qk, sk = xs
        part = jax.lax.ragged_dot(xk, qk.astype(dtype), group_sizes, preferred_element_type=jnp.float32)
        return acc + part * sk[row_expert], None

    acc, _ = jax.lax.scan(block, jnp.zeros((m, n), jnp.float32), (xb, qb, sb))
    return acc.astype(dtype)


def dequantize_fp8_weight(w, dtype=jnp.float32):
    """The float kernel of an FP8Weight (anything else is returned unchanged)."""
    return w.dequantize(dtype) if is_fp8_weight(w) else w

