"""Blockwise FP8 GEMM (kernel.py fp8_gemm semantics): the jnp reference and the Pallas Triton kernel (interpret
mode on CPU) against the float64 numpy oracle, CUDA lowering of the Triton kernel, and api.py's dispatch.

Bound: ‖C - C_oracle‖/‖C_oracle‖ < 1e-5 with fp32 output (exact FP8 products, fp32 sums of 128 per block).
"""

import logging
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import pytest

from gemm_oracle import operands, rel
from pallas_kernels import _dispatch
from pallas_kernels.fp8_gemm import api, fp8_gemm_reference

SHAPES = [(128, 256, 256, True), (200, 300, 330, True), (130, 136, 200, False)]  # (M, N, K, 128x128 B scales)


@pytest.mark.parametrize("m,n,k,block_b", SHAPES)
def test_reference_matches_oracle(m, n, k, block_b):
    args, want = operands(m, n, k, block_b)
    assert rel(fp8_gemm_reference(*args, out_dtype=jnp.float32), want) < 1e-5
    out16 = fp8_gemm_reference(*args)
    assert out16.dtype == jnp.bfloat16 and rel(out16, want) < 4e-3


@pytest.mark.parametrize("m,n,k,block_b", SHAPES)
def test_triton_interpret_matches_oracle(m, n, k, block_b):
    args, want = operands(m, n, k, block_b, seed=1)
    out = api.fp8_gemm(*args, impl="triton", interpret=True, out_dtype=jnp.float32)
    assert out.shape == (m, n) and rel(out, want) < 1e-5


def test_triton_lowers_for_cuda():
    from pallas_kernels.fp8_gemm.triton import fp8_gemm_triton
    spec = lambda shape, dt: jax.ShapeDtypeStruct(shape, dt)
    f8 = jnp.float8_e4m3fn
    exp = jax.export.export(jax.jit(fp8_gemm_triton), platforms=["cuda"], disabled_checks=[
        jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")])(
        spec((256, 384), f8), spec((3, 256), jnp.float32), spec((128, 384), f8), spec((3, 128), jnp.float32))
    assert "xla.gpu.triton" in exp.mlir_module()


def test_dispatch_fails_fast_and_auto_says_so_once(caplog):
    args, want = operands(128, 128, 128, True)
    if jax.default_backend() == "gpu":
        pytest.skip("CPU-only dispatch behaviour")
    with pytest.raises(ValueError, match="mosaic_gpu.*unavailable"):
        api.fp8_gemm(*args, impl="mosaic_gpu")
    with pytest.raises(ValueError, match="impl must be one of"):
        api.fp8_gemm(*args, impl="cutlass")
    _dispatch._warned.discard("fp8_gemm")
    with caplog.at_level(logging.WARNING, logger="pallas_kernels"):
        out = api.fp8_gemm(*args, out_dtype=jnp.float32)
        api.fp8_gemm(*args)
    assert rel(out, want) < 1e-5
    assert sum("falls back to the jnp reference" in r.message for r in caplog.records) == 1


def test_shape_errors_name_the_tensor():
    (a, a_s, b, b_s), _ = operands(128, 128, 256, True)
    with pytest.raises(ValueError, match="a_s must be"):
        api.fp8_gemm(a, a_s[:, :1], b, b_s)
    with pytest.raises(ValueError, match="b_s must be"):
        api.fp8_gemm(a, a_s, b, b_s[:, :1])
    with pytest.raises(ValueError, match=r"b must be stored \[N, K\]"):
        api.fp8_gemm(a, a_s, b[:, :128], b_s)


def test_sharded_gemm_on_fake_devices():
    """shard_map boundary: rows of A over one axis, K over another (psum), on 4 fake CPU devices."""
    code = textwrap.dedent("""
        import os; os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
        import jax, jax.numpy as jnp, numpy as np
        from pallas_kernels.fp8_gemm import api, fp8_gemm_reference
        k = jax.random.split(jax.random.key(0), 4)
        a = jax.random.normal(k[0], (256, 512)).astype(jnp.float8_e4m3fn)
        b = jax.random.normal(k[1], (256, 512)).astype(jnp.float8_e4m3fn)
        a_s = jax.random.uniform(k[2], (256, 4)) + 0.5
        b_s = jax.random.uniform(k[3], (2, 4)) + 0.5
        ref = fp8_gemm_reference(a, a_s, b, b_s, out_dtype=jnp.float32)
        mesh = jax.make_mesh((2, 2), ("data", "model"), axis_types=(jax.sharding.AxisType.Explicit,) * 2)
        P, S = jax.sharding.PartitionSpec, jax.sharding.NamedSharding
        a, a_s = (jax.device_put(v, S(mesh, P("data", "model"))) for v in (a, a_s))
        b, b_s = (jax.device_put(v, S(mesh, P(None, "model"))) for v in (b, b_s))
        out = api.sharded_fp8_gemm(a, a_s, b, b_s, mesh=mesh, m_axis="data", k_axis="model",
                                   out_dtype=jnp.float32, impl="reference")
        n_dev = len(out.sharding.device_set)
        out, ref = np.asarray(out), np.asarray(ref)
        err = float(np.linalg.norm(out - ref) / np.linalg.norm(ref))
        assert err < 1e-6, err
        print("OK", n_dev)
    """)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0 and "OK 4" in res.stdout, res.stderr[-2000:]
