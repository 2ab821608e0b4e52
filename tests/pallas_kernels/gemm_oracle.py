"""The kernel tests' oracle: tests/quant/fp8_oracle.py (one independent numpy oracle for both suites)."""

import importlib.util
import pathlib

_spec = importlib.util.spec_from_file_location(
    "fp8_oracle_shared", pathlib.Path(__file__).resolve().parents[1] / "quant" / "fp8_oracle.py")
_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mod)

E4M3, E5M2 = _mod.E4M3, _mod.E5M2
gemm_oracle, quantize_blocks_np, quantize_tiles_np = _mod.gemm_oracle, _mod.quantize_blocks_np, _mod.quantize_tiles_np
expand_np, scale_np = _mod.expand_np, _mod.scale_np


def operands(m, n, k, block_b, seed=0):
    """Random FP8 GEMM operands (A 1x128 tiles; B 128x128 blocks or 1x128 tiles) and their float64 oracle C."""
    import jax.numpy as jnp
    import ml_dtypes
    import numpy as np

    rng = np.random.default_rng(seed)
    aq, a_s = quantize_tiles_np(rng.standard_normal((m, k)) * 2)
    bq, b_s = (quantize_blocks_np if block_b else quantize_tiles_np)(rng.standard_normal((n, k)) * 0.1)
    to8 = lambda q: jnp.asarray(q.astype(ml_dtypes.float8_e4m3fn))
    return (to8(aq), jnp.asarray(a_s), to8(bq), jnp.asarray(b_s)), gemm_oracle(aq, a_s, bq, b_s)


def rel(a, b):
    """‖a - b‖ / ‖b‖ in float64."""
    import numpy as np

    a = np.asarray(a, np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(b)
