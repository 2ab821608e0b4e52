"""Per-tensor delayed scaling (TransformerEngine-style baseline) and the recipe switch.

Oracle: per-tensor scale s = max(history)/FP_MAX (current amax when the history is empty), E4M3 forward,
E5M2 for dy, products in float64; bound 1e-5 relative. The meta's cotangent must be the pushed histories.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsv3_jax.quant import DelayedMeta, init_delayed_meta, make_matmul, make_ragged_dot
from fp8_oracle import E4M3, E5M2, cast_np, scale_np

M, K, N = 64, 96, 80


def _data(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((M, K)).astype(np.float32), (rng.standard_normal((K, N)) * 0.1).astype(np.float32),
            (rng.standard_normal((M, N)) * 1e-3).astype(np.float32))


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def _per_tensor(v, hist, dtype):
    amax = np.abs(v).max()
    s = scale_np(hist.max() if hist.max() > 0 else amax, dtype, floor=1e-30)
    return cast_np(v / s, dtype).astype(np.float64) * s, amax


@pytest.mark.parametrize("history", [None, (2.0, 0.5)])  # empty history, then a delayed one
def test_delayed_matches_oracle_and_updates_meta(history):
    x, w, dy = _data()
    meta = init_delayed_meta(4)
    if history is not None:  # x saw amax 2.0 earlier (smaller than now: saturation is part of the recipe)
        meta = DelayedMeta(meta.x.at[:2].set(jnp.asarray(history)), meta.w.at[0].set(0.3), meta.g.at[0].set(5e-3))
    mm = make_matmul("per_tensor_delayed", dtype=jnp.float32)
    y, vjp = jax.vjp(mm, jnp.asarray(x), jnp.asarray(w), meta)
    dx, dw, new_meta = vjp(jnp.asarray(dy))
    xd, ax = _per_tensor(x, np.asarray(meta.x), E4M3)
    wd, aw = _per_tensor(w, np.asarray(meta.w), E4M3)
    gd, ag = _per_tensor(dy, np.asarray(meta.g), E5M2)
    assert _rel(y, xd @ wd) < 1e-5
    assert _rel(dx, gd @ wd.T) < 1e-5
    assert _rel(dw, xd.T @ gd) < 1e-5
    for new, old, amax in zip(new_meta, meta, (ax, aw, ag)):
        np.testing.assert_allclose(np.asarray(new), np.concatenate([[amax], np.asarray(old)[:-1]]), rtol=1e-6)


def test_delayed_grads_close_to_fp32():
    x, w, dy = _data(seed=1)
    mm = make_matmul("per_tensor_delayed", dtype=jnp.float32)
    y, vjp = jax.vjp(lambda a, b: mm(a, b, init_delayed_meta()), jnp.asarray(x), jnp.asarray(w))
    dx, dw = vjp(jnp.asarray(dy))
    assert _rel(y, x @ w) < 8e-2 and _rel(dx, dy @ w.T) < 1.5e-1 and _rel(dw, x.T @ dy) < 1.5e-1  # E5M2: 2 bits


def test_recipe_none_and_errors():
    x, w, _ = _data(seed=2)
    y = make_matmul("none", dtype=jnp.float32)(jnp.asarray(x), jnp.asarray(w))
    np.testing.assert_allclose(np.asarray(y), x @ w, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="fp8 recipe"):
        make_matmul("fp8")
    with pytest.raises(ValueError, match="needs meta"):
        make_matmul("per_tensor_delayed")(x, w)
    with pytest.raises(ValueError, match="needs meta"):
        make_ragged_dot("per_tensor_delayed")(x, w[None], jnp.asarray([M]))
    with pytest.raises(ValueError, match="history_len"):
        init_delayed_meta(0)
