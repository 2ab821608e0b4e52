"""Public entry points of the blockwise FP8 GEMM: implementation choice, padding, shard_map boundary.

    fp8_gemm(a [M, K], a_s [M, Kb], b [N, K], b_s [Nb, Kb] | [N, Kb], out_dtype, impl) -> C [M, N] = A·Bᵀ

Semantics are reference.py's (DeepSeek kernel.py fp8_gemm; docs/paper.md §3, §6). `impl`:
  "mosaic_gpu"  Hopper Pallas Mosaic GPU kernel (sm90);      "triton"  Pallas Triton kernel (sm89+);
  "reference"   plain jnp (any backend);                    "auto"    the first available of those, in that
                                                              order, logging once when it falls back to the jnp.
Explicit choices fail fast with a ValueError naming the reason. The kernels need M % 128, N % tile_n, K % 128
and take transposed scales; this module pads with zeros (scale 1) and slices, so any shape works.
The kernels are not differentiable by themselves: dsv3_jax.quant.fp8_linear.blockwise_linear (a custom_vjp
linear whose three GEMMs all call `fp8_gemm`) is the differentiable entry point. This package imports nothing
of dsv3_jax (it sits below dsv3_jax.quant).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels import _dispatch
from pallas_kernels.fp8_gemm.reference import TILE, check_operands, fp8_gemm_reference

IMPL_ORDER = ("mosaic_gpu", "triton", "reference")


def _pad_to(x, axis: int, multiple: int, value=0):
    extra = -x.shape[axis] % multiple
    if not extra:
        return x
    pads = [(0, 0)] * x.ndim
    pads[axis] = (0, extra)
    return jnp.pad(x, pads, constant_values=value)


def _padded_operands(a, a_s, b, b_rows, n_multiple: int):
    """Zero-pad A to M % 128 and B to N % n_multiple (K to % 128); scales padded with 1 and transposed."""
    a_p = _pad_to(_pad_to(a, 0, 128), 1, TILE)
    b_p = _pad_to(_pad_to(b, 0, n_multiple), 1, TILE)
    as_t = _pad_to(a_s.astype(jnp.float32), 0, 128, 1.0).T  # [Kb, M]
    bs_t = _pad_to(b_rows, 0, n_multiple, 1.0).T  # [Kb, N]
    return a_p, as_t, b_p, bs_t


def prepare_mosaic(a, a_s, b, b_s, *, tile_n: int = 128, interpret: bool = False):
    """Padded operands and TileConfig for mosaic_gpu.fp8_gemm_mosaic (bench.py times the kernel on these)."""
    from pallas_kernels.fp8_gemm import mosaic_gpu as mg
    b_rows = check_operands(a, a_s, b, b_s)
    n = b.shape[0]
    block = b_s.shape[0] != n or n <= 1  # 128x128 weight-block scales: the one-FMA promotion path
    mode = "block" if block and tile_n == 128 else "row"
    cfg = mg.TileConfig(tile_n=tile_n, b_scales=mode, num_sms=2 if interpret else None)
    a_p, as_t, b_p, bs_t = _padded_operands(a, a_s, b, b_rows, tile_n)
    if mode == "block":  # [Kb, N] -> one scale per 128 columns, repeated over the 64 rows of a warpgroup
        bs_t = jnp.repeat(bs_t[:, ::TILE, None], mg.WG_M, axis=2)
    return (a_p, as_t, b_p, bs_t), cfg


def _mosaic(a, a_s, b, b_s, out_dtype, tile_n, interpret=False):
    from pallas_kernels.fp8_gemm import mosaic_gpu as mg
    args, cfg = prepare_mosaic(a, a_s, b, b_s, tile_n=tile_n, interpret=interpret)
    out = mg.fp8_gemm_mosaic(*args, out_dtype=out_dtype, cfg=cfg, interpret=interpret)
    return out[: a.shape[0], : b.shape[0]]


def _triton(a, a_s, b, b_rows, out_dtype, interpret=False):
    from pallas_kernels.fp8_gemm.triton import fp8_gemm_triton
    a_p, as_t, b_p, bs_t = _padded_operands(a, a_s, b, b_rows, 128)
    out = fp8_gemm_triton(a_p, as_t, b_p, bs_t, out_dtype=out_dtype, interpret=interpret)
    return out[: a.shape[0], : b.shape[0]]


def fp8_gemm(a, a_s, b, b_s, *, out_dtype=jnp.bfloat16, impl: str = "auto", tile_n: int = 128,
             interpret: bool = False):
    """Blockwise-scaled FP8 GEMM C = A·Bᵀ (see module docstring for shapes and `impl`).

    interpret=True (tests) runs the named Pallas kernel in interpret mode on CPU instead of failing fast."""
    b_rows = check_operands(a, a_s, b, b_s)
    chosen = impl if interpret else _dispatch.resolve("fp8_gemm", impl, IMPL_ORDER)
    if chosen == "reference":
        return fp8_gemm_reference(a, a_s, b, b_s, out_dtype=out_dtype)
    if chosen == "mosaic_gpu":
        return _mosaic(a, a_s, b, b_s, out_dtype, tile_n, interpret)
    if chosen == "triton":
        return _triton(a, a_s, b, b_rows, out_dtype, interpret)
    raise ValueError(f"fp8_gemm: interpret=True needs impl 'mosaic_gpu' or 'triton', got {impl!r}")


def sharded_fp8_gemm(a, a_s, b, b_s, *, mesh, m_axis=None, n_axis=None, k_axis=None,
                     out_dtype=jnp.bfloat16, impl: str = "auto"):
    """`fp8_gemm` across a mesh via jax.shard_map: rows of A over `m_axis`, rows of B over `n_axis`, and K over
    `k_axis` (partial fp32 products are psum-ed across it, then cast). Axis names come from the caller
    (dsv3_jax.sharding owns them). Each local K shard must hold whole 128-blocks, and with 128x128 block
    scales each local N shard too (the scales are sharded with their tensors)."""
    P = jax.sharding.PartitionSpec
    acc_dtype = jnp.float32 if k_axis else out_dtype

    def local(a_l, as_l, b_l, bs_l):
        c = fp8_gemm(a_l, as_l, b_l, bs_l, out_dtype=acc_dtype, impl=impl)
        return (jax.lax.psum(c, k_axis) if k_axis else c).astype(out_dtype)

    f = jax.shard_map(local, mesh=mesh, in_specs=(P(m_axis, k_axis), P(m_axis, k_axis), P(n_axis, k_axis),
                                                   P(n_axis, k_axis)), out_specs=P(m_axis, n_axis))
    return f(a, a_s, b, b_s)
