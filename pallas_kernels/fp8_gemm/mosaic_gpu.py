"""Blockwise-scaled FP8 GEMM for Hopper (sm90a) in Pallas Mosaic GPU.

Computes C = A·Bᵀ exactly as reference.py (DeepSeek `kernel.py` fp8_gemm / DeepGEMM semantics):
  a [M, K] fp8 and b [N, K] fp8, both K-major (for 8-bit wgmma neither operand may be transposed, docs/paper.md §7;
  B is viewed as [K, N] with `transpose_ref`); a_s [M, Kb] (1x128 tiles); B scales either per 128x128 weight
  block (Fprop/Dgrad; b_scales="block") or per row of B (Wgrad's 1x128 tiles; b_scales="row"). Kb = K/128.

Design (after jax's `pallas/ops/gpu/hopper_matmul_mgpu.py`, written from scratch for blockwise scales):
  * persistent grid of one CTA per SM looping over (M/128)·(N/tile_n) output tiles in a planar snake order;
  * warp specialization: one memory warpgroup issues TMA copies of A, B and the two scale rows into a
    `max_concurrent_steps`-deep SMEM ring; two compute warpgroups each own 64 rows of the 128-row CTA tile;
  * per 128-K step each compute warpgroup runs 4 wgmma (k=32) into a fresh fp32 register accumulator, then
    promotes it into the running fp32 accumulator with the scales: acc += part · (a_s[row] · b_s) for block
    scales (one FMA per element), acc += part · a_s[row] · b_s[col] for row scales
    (V3 report §3.3: promotion every N_C = 128 elements with the scales multiplied there);
  * the two compute warpgroups run out of phase, so one's promotion (CUDA cores) overlaps the other's wgmma.
  * epilogue: bf16 (or the requested dtype) through swizzled SMEM and a TMA store.
Shapes must be padded by the caller (api.py): M % 128 == 0, N % tile_n == 0, K % 128 == 0.
Imports of the Mosaic GPU API are lazy so that CPU-only machines can import this module. Written against the
Pallas Mosaic GPU API of jax 0.10.2 (lowered for CUDA and run in GPU interpret mode on CPU by the tests);
jax 0.11.2 (the GPU machine) is expected to share it: see pallas_kernels/README.md for what was verified.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax

BLOCK_K = 128  # promotion interval N_C (V3 report §3.3)
WG_M = 64  # rows per compute warpgroup (one m64 wgmma)
CTA_M = 2 * WG_M
H100_SMS = 132


@dataclasses.dataclass(frozen=True)
class TileConfig:
    """Tuning knobs: N columns per CTA tile, SMEM ring depth and the output-tile traversal order."""

    tile_n: int = 128
    max_concurrent_steps: int = 4
    grid_minor_dim: int = 1  # 0: walk M fastest, 1: walk N fastest (plgpu.planar_snake)
    grid_tile_width: int = 8
    num_sms: int | None = None  # None: the device's SM count (132 when exporting without a GPU)
    b_scales: str = "block"  # "block": b_s_t [Kb, N/128, 64] (needs tile_n == 128); "row": b_s_t [Kb, N]

    def __post_init__(self):
        if self.b_scales not in ("block", "row"):
            raise ValueError(f"TileConfig.b_scales: expected 'block' or 'row', got {self.b_scales!r}")
        if self.b_scales == "block" and self.tile_n != 128:
            raise ValueError(f"TileConfig: b_scales='block' needs tile_n == 128 (one weight block), got {self.tile_n}")


def _num_sms(cfg: TileConfig) -> int:
    if cfg.num_sms:
        return cfg.num_sms
    dev = jax.devices()[0]
    return getattr(dev, "core_count", None) if dev.platform == "gpu" else H100_SMS


def _fp8_transforms(plgpu):
    # 128 bytes per row of a 128-K fp8 tile: 128-byte swizzle, (8, 128) tiling.
    return (plgpu.TilingTransform((8, BLOCK_K)), plgpu.SwizzleTransform(128))


def _out_transforms(plgpu, dtype):
    swizzle = plgpu.find_swizzle(64 * jnp.dtype(dtype).itemsize * 8)
    return (plgpu.TilingTransform((8, swizzle // jnp.dtype(dtype).itemsize)), plgpu.SwizzleTransform(swizzle))


def _cast(plgpu, x, layout, interpret: bool):
    """plgpu.layout_cast, skipped under GPU interpret mode (which has no rule for it; layouts are moot there)."""
    return x if interpret else plgpu.layout_cast(x, layout)


def _promote_step(plgpu, pl, a_smem, b_smem, as_smem, bs_smem, acc, cfg: TileConfig, interpret):
    """One 128-K step of one compute warpgroup: wgmma into a fresh accumulator, then scale and add.

    "block" B scales (one scalar per 128x128 weight block, given as a [64] row of copies): the two scales fold
    into one row vector first, so promotion is one FMA per element; "row" B scales: a row and a column
    broadcast (two multiplies and an add per element)."""
    wg = lax.axis_index("wg")
    rows = pl.ds(wg * WG_M, WG_M)

    def mma(part_ref):
        # GPU interpret mode has no transpose_ref: there B arrives pre-transposed as [K, N] (tests only).
        b_kn = b_smem if interpret else plgpu.transpose_ref(b_smem, (1, 0))
        plgpu.wgmma(part_ref, a_smem.at[rows], b_kn)
        return part_ref[...]  # waits for the wgmma group

    part = pl.run_scoped(mma, plgpu.ACC((WG_M, cfg.tile_n), jnp.float32))
    # A plain ref read followed by layout_cast: the lowering loads straight into the row/column layouts.
    row_layout, col_layout = plgpu.Layout.WGMMA.reduce(1), plgpu.Layout.WGMMA.reduce(0)
    sa = _cast(plgpu, as_smem[0, rows], row_layout, interpret)
    shape = (WG_M, cfg.tile_n)
    if cfg.b_scales == "block":
        scale = sa * _cast(plgpu, bs_smem[0, 0, :], row_layout, interpret)
        return acc + part * lax.broadcast_in_dim(scale, shape, [0])
    sb = _cast(plgpu, bs_smem[0, :], col_layout, interpret)
    return acc + part * lax.broadcast_in_dim(sa, shape, [0]) * lax.broadcast_in_dim(sb, shape, [1])


def _kernel_body(a_gmem, as_gmem, b_gmem, bs_gmem, out_gmem, out_smem, *, cfg: TileConfig, interpret: bool):
    import jax.experimental.pallas as pl
    import jax.experimental.pallas.mosaic_gpu as plgpu

    m, k = a_gmem.shape
    n = b_gmem.shape[1] if interpret else b_gmem.shape[0]
    tn = cfg.tile_n
    m_iters, n_iters, k_iters = m // CTA_M, n // tn, k // BLOCK_K
    fp8_tr = _fp8_transforms(plgpu)

    def pipeline(body, context):
        return plgpu.emit_pipeline_warp_specialized(
            body, grid=(k_iters,), memory_registers=40, wg_axis="wg", num_compute_wgs=2,
            max_concurrent_steps=cfg.max_concurrent_steps, compute_context=context,
            in_specs=[
                plgpu.BlockSpec((CTA_M, BLOCK_K), lambda kk: (0, kk), transforms=fp8_tr),
                plgpu.BlockSpec((BLOCK_K, tn), lambda kk: (kk, 0), transforms=fp8_tr) if interpret else
                plgpu.BlockSpec((tn, BLOCK_K), lambda kk: (0, kk), transforms=fp8_tr),
                plgpu.BlockSpec((1, CTA_M), lambda kk: (kk, 0)),
                plgpu.BlockSpec((1, 1, WG_M), lambda kk: (kk, 0, 0)) if cfg.b_scales == "block" else
                plgpu.BlockSpec((1, tn), lambda kk: (kk, 0)),
            ])

    ignore = lambda *_, **__: None  # bodies do not influence the allocations

    def scoped(allocs):
        def tile_loop(info):
            lin = info.index[0] if hasattr(info, "index") else info[0]
            mi, ni = plgpu.planar_snake(lin, (m_iters, n_iters), cfg.grid_minor_dim, cfg.grid_tile_width)
            m_sl, n_sl = pl.ds(mi * CTA_M, CTA_M), pl.ds(ni * tn, tn)

            def context(run):
                wg = lax.axis_index("wg")
                zero = _cast(plgpu, jnp.full((WG_M, tn), 0, jnp.float32), plgpu.Layout.WGMMA, interpret)
                acc = run(zero)
                plgpu.wait_smem_to_gmem(0, wait_read_only=True)  # previous tile's store has read out_smem
                out_smem[wg] = acc.astype(out_smem.dtype)
                plgpu.commit_smem()
                plgpu.copy_smem_to_gmem(out_smem.at[wg], out_gmem.at[pl.ds(mi * CTA_M + wg * WG_M, WG_M), n_sl])

            def body(_, a_s, b_s, as_s, bs_s, acc):
                return _promote_step(plgpu, pl, a_s, b_s, as_s, bs_s, acc, cfg, interpret)

            b_tile = b_gmem.at[:, n_sl] if interpret else b_gmem.at[n_sl]
            bs_tile = bs_gmem.at[:, pl.ds(ni, 1)] if cfg.b_scales == "block" else bs_gmem.at[:, n_sl]
            pipeline(body, context)(a_gmem.at[m_sl], b_tile, as_gmem.at[:, m_sl], bs_tile, allocations=allocs)

        plgpu.nd_loop((m_iters * n_iters,), collective_axes="sm")(tile_loop)

    allocs = pipeline(ignore, ignore).get_allocations(a_gmem, b_gmem, as_gmem, bs_gmem)
    pl.run_scoped(scoped, allocs, collective_axes="wg")
    plgpu.wait_smem_to_gmem(0, wait_read_only=True)


def _check_shapes(a, a_s_t, b, b_s_t, cfg: TileConfig):
    (m, k), n, kb = a.shape, b.shape[0], a.shape[1] // BLOCK_K
    if m % CTA_M or n % cfg.tile_n or k % BLOCK_K or b.shape[1] != k:
        raise ValueError(f"fp8_gemm_mosaic: need a [M, K], b [N, K] with M % {CTA_M} == 0, N % {cfg.tile_n} == 0, "
                         f"K % {BLOCK_K} == 0; got a {a.shape}, b {b.shape} (api.py pads)")
    want_b = (kb, n // BLOCK_K, WG_M) if cfg.b_scales == "block" else (kb, n)
    if a_s_t.shape != (kb, m) or b_s_t.shape != want_b:
        raise ValueError(f"fp8_gemm_mosaic: a_s_t must be [Kb, M] = {(kb, m)} and b_s_t {want_b} "
                         f"(b_scales={cfg.b_scales!r}); got {a_s_t.shape}, {b_s_t.shape}")


def fp8_gemm_mosaic(a, a_s_t, b, b_s_t, *, out_dtype=jnp.bfloat16, cfg: TileConfig = TileConfig(),
                    interpret: bool = False):
    """C [M, N] = A·Bᵀ with a [M, K], b [N, K] fp8 and transposed fp32 scales (each 128-K step's scales are
    one contiguous TMA copy): a_s_t [Kb, M]; b_s_t [Kb, N/128, 64] (cfg.b_scales="block": each 128x128 weight
    block's scale repeated 64 times) or [Kb, N] (cfg.b_scales="row"). Requires padded shapes (module doc).
    interpret=True runs Pallas' GPU interpret mode on CPU (slow; tests only)."""
    import jax.experimental.pallas.mosaic_gpu as plgpu

    _check_shapes(a, a_s_t, b, b_s_t, cfg)
    m, n = a.shape[0], b.shape[0]
    out_smem = plgpu.SMEM((2, WG_M, cfg.tile_n), out_dtype, transforms=_out_transforms(plgpu, out_dtype))
    mode = {}
    if interpret:
        from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams
        mode = {"interpret": InterpretGPUParams()}
    f = plgpu.kernel(
        functools.partial(_kernel_body, cfg=cfg, interpret=interpret), **mode,
        out_type=jax.ShapeDtypeStruct((m, n), out_dtype),
        scratch_types=[out_smem],
        grid=(_num_sms(cfg),), grid_names=("sm",), num_threads=3, thread_name="wg")
    return f(a, a_s_t, b.T if interpret else b, b_s_t)
