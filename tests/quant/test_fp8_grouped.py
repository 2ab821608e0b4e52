"""Grouped (MoE) FP8 GEMM: blockwise ragged_dot against a float64 per-expert numpy oracle (same scale rules,
bound 1e-5 relative) and its gradients against the fp32 ragged_dot's (E4M3 bound 8e-2)."""

import jax
import jax.numpy as jnp
import numpy as np

from dsv3_jax.quant import blockwise_ragged_dot, init_delayed_meta, make_ragged_dot
from fp8_oracle import expand_np, quantize_blocks_np, quantize_tiles_np

M, K, N, E = 200, 150, 136, 4
SIZES = np.array([70, 0, 90, 30])  # an empty expert and 10 trailing rows outside every group


def _data(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((M, K)).astype(np.float32), (rng.standard_normal((E, K, N)) * 0.1).astype(np.float32),
            rng.standard_normal((M, N)).astype(np.float32))


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def _deq_tiles(v, floor=1e-4):
    q, s = quantize_tiles_np(v, floor=floor)
    return q.astype(np.float64) * expand_np(s, v.shape)


def _oracle(x, w, dy):
    xd = _deq_tiles(x)
    wd = np.stack([q * expand_np(s, q.shape) for q, s in map(quantize_blocks_np, w)])
    gd = _deq_tiles(dy, floor=1e-30)
    x_t = _deq_tiles(xd.astype(np.float32).T).T  # Wgrad operands re-tiled 128x1 along tokens
    g_t = _deq_tiles(dy.T, floor=1e-30).T
    y, dx, dw = np.zeros((M, N)), np.zeros((M, K)), np.zeros((E, K, N))
    start = 0
    for e, size in enumerate(SIZES):
        rows = slice(start, start + size)
        y[rows] = xd[rows] @ wd[e]
        dx[rows] = gd[rows] @ wd[e].T
        dw[e] = x_t[rows].T @ g_t[rows]
        start += size
    return y, dx, dw


def test_blockwise_ragged_matches_oracle():
    x, w, dy = _data()
    y, vjp = jax.vjp(lambda a, b: blockwise_ragged_dot(a, b, jnp.asarray(SIZES)), jnp.asarray(x), jnp.asarray(w))
    dx, dw = vjp(jnp.asarray(dy))
    y_o, dx_o, dw_o = _oracle(x, w, dy)
    assert _rel(y, y_o) < 1e-5 and _rel(dx, dx_o) < 1e-5 and _rel(dw, dw_o) < 1e-5
    assert np.all(np.asarray(y)[190:] == 0) and np.all(np.asarray(dw)[1] == 0)


def test_grouped_recipes_close_to_fp32():
    x, w, dy = _data(seed=1)
    gs = jnp.asarray(SIZES)
    ref = lambda a, b: jax.lax.ragged_dot(a, b, gs, precision=jax.lax.Precision.HIGHEST)
    y_r, vjp_r = jax.vjp(ref, jnp.asarray(x), jnp.asarray(w))
    want = vjp_r(jnp.asarray(dy))
    meta = init_delayed_meta()
    for recipe, bound in (("blockwise", 8e-2), ("per_tensor_delayed", 1.5e-1), ("none", 1e-5)):
        gmm = make_ragged_dot(recipe, dtype=jnp.float32)
        f = (lambda a, b: gmm(a, b, gs, meta)) if recipe == "per_tensor_delayed" else (lambda a, b: gmm(a, b, gs))
        y, vjp = jax.vjp(f, jnp.asarray(x), jnp.asarray(w))
        got = vjp(jnp.asarray(dy))
        assert _rel(y, y_r) < bound, recipe
        for g, r in zip(got, want):
            assert _rel(g, r) < bound, recipe
