"""The Hopper Pallas Mosaic GPU blockwise FP8 GEMM without a GPU: CUDA lowering through jax.export (catches
layout, wgmma-operand and shared-memory errors) and Pallas' GPU interpret mode against the numpy oracle
(pipeline, warpgroup split, persistent tile loop and the per-128-K scale promotion; the interpreter lacks
transpose_ref, so there B is fed pre-transposed — the K-major [N, K] view itself is checked by lowering).
"""

import functools
import importlib.util

import jax
import jax.numpy as jnp
import pytest

from gemm_oracle import operands, rel

plgpu = pytest.importorskip("jax.experimental.pallas.mosaic_gpu", reason="this jax has no Pallas Mosaic GPU")
from pallas_kernels.fp8_gemm import api, mosaic_gpu as mg  # noqa: E402

HAS_INTERPRETER = importlib.util.find_spec("jax._src.pallas.mosaic_gpu.interpret") is not None


def _export(cfg, m=256, n=256, k=1024):
    kb = k // 128
    bs = (kb, n // 128, mg.WG_M) if cfg.b_scales == "block" else (kb, n)
    spec = lambda shape, dt: jax.ShapeDtypeStruct(shape, dt)
    return jax.export.export(jax.jit(functools.partial(mg.fp8_gemm_mosaic, cfg=cfg)), platforms=["cuda"])(
        spec((m, k), jnp.float8_e4m3fn), spec((kb, m), jnp.float32), spec((n, k), jnp.float8_e4m3fn),
        spec(bs, jnp.float32))


@pytest.mark.parametrize("cfg", [mg.TileConfig(), mg.TileConfig(max_concurrent_steps=5),
                                 mg.TileConfig(b_scales="row"), mg.TileConfig(b_scales="row", tile_n=64)])
def test_lowers_for_cuda(cfg):
    assert "mosaic" in _export(cfg).mlir_module().lower()


def test_shared_memory_overflow_is_reported():
    with pytest.raises(ValueError, match="shared memory"):
        _export(mg.TileConfig(max_concurrent_steps=8))


def test_config_and_shape_errors():
    with pytest.raises(ValueError, match="b_scales='block' needs tile_n == 128"):
        mg.TileConfig(tile_n=64)
    with pytest.raises(ValueError, match="M % 128"):
        mg.fp8_gemm_mosaic(jnp.zeros((100, 128), jnp.float8_e4m3fn), jnp.ones((1, 100)),
                           jnp.zeros((128, 128), jnp.float8_e4m3fn), jnp.ones((1, 1, 64)))


@pytest.mark.skipif(not HAS_INTERPRETER, reason="this jax has no Pallas GPU interpret mode")
@pytest.mark.parametrize("m,n,k,block_b", [(200, 300, 330, True), (130, 136, 200, False)])
def test_interpret_matches_oracle(m, n, k, block_b):
    args, want = operands(m, n, k, block_b, seed=2)
    out = api.fp8_gemm(*args, impl="mosaic_gpu", interpret=True, out_dtype=jnp.float32)
    assert out.shape == (m, n) and rel(out, want) < 1e-5
