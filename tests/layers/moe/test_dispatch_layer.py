import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsv3_jax.layers.moe import dispatch
from dsv3_jax.layers.moe.layer import MoE
from tests import reference as ref
from tests.conftest import tiny_config


def _problem(n=24, d=8, f=6, e=5, k=2, seed=0, skew=False):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    if skew:  # every token to expert 0, experts 2 and 3 empty: exercises empty and large groups
        experts = np.array([[0, 1 if i % 3 else 4] for i in range(n)], np.int32)
    else:
        experts = np.stack([rng.choice(e, k, replace=False) for _ in range(n)]).astype(np.int32)
    w = rng.uniform(0.1, 1.0, size=(n, k)).astype(np.float32)
    ws = [rng.normal(size=s).astype(np.float32) * 0.3 for s in ((e, d, f), (e, f, d), (e, d, f))]
    return x, w, experts, ws


# blocked: its default here is the capacity batch (block_capacity.py); block=4 the gathered batch, 64 the loop.
SORTED_IMPLS = [dispatch.routed_experts_ragged, dispatch.routed_experts_blocked,
                lambda *a: dispatch.routed_experts_blocked(*a, block=4),
                lambda *a: dispatch.routed_experts_blocked(*a, block=64)]


def _fused(block=None):
    """routed_experts_blocked on inference variables: w13 = w1 | w3 [E, D, 2F] fused, w3 None (layer_split.py)."""
    def impl(x, w, experts, w1, w2, w3, dtype):
        w13 = jnp.concatenate([w1, w3], axis=-1)
        return dispatch.routed_experts_blocked(x, w, experts, w13, w2, None, dtype, block=block)
    return impl


# The same three paths over the fused w13 (forward only: inference variables): capacity, gathered, loop.
FUSED_IMPLS = [_fused(), _fused(4), _fused(64)]


def test_blocked_backend_path_choice():
    assert dispatch.capacity_beats_blocks(24, 2, 5)  # the problems below run the capacity batch by default
    assert dispatch.capacity_beats_blocks(16, 4, 16)  # decoding 16 sequences, V3-like 16 experts top-4
    assert not dispatch.capacity_beats_blocks(1, 4, 16)  # a lone token reads its 4 experts, not all 16
    assert dispatch.capacity_beats_blocks(2048, 4, 16, 256, 256)  # training, GEMMs big enough for every core
    assert not dispatch.capacity_beats_blocks(2048, 2, 8, 128, 64)  # training, small GEMMs: the loop
    assert not dispatch.capacity_beats_blocks(4096, 4, 16, 256, 256)  # above CAPACITY_MAX_ROWS: the loop
    assert dispatch.block_rows(2048 * 4, 16) >= dispatch.LOOP_MIN_ROWS


@pytest.mark.parametrize("impl", SORTED_IMPLS + FUSED_IMPLS)
@pytest.mark.parametrize("skew", [False, True])
def test_sorted_dispatch_equals_dense_and_loop(skew, impl):
    x, w, experts, (w1, w2, w3) = _problem(skew=skew)
    args = [jnp.asarray(a) for a in (x, w, experts, w1, w2, w3)]
    ragged = impl(*args, jnp.float32)
    dense = dispatch.routed_experts_dense(*args, jnp.float32)
    np.testing.assert_allclose(ragged, dense, rtol=1e-5, atol=1e-6)
    loop = np.zeros_like(x, np.float64)
    for i in range(len(x)):
        for j, e in enumerate(experts[i]):
            loop[i] += w[i, j] * ref.mlp(x[i].astype(np.float64), {"w1": w1[e], "w2": w2[e], "w3": w3[e]})
    np.testing.assert_allclose(ragged, loop, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", SORTED_IMPLS)
def test_sorted_dispatch_gradients_equal_dense(impl):
    x, w, experts, (w1, w2, w3) = _problem(seed=3)

    def loss(impl, x, w, w1, w2, w3):
        y = impl(x, w, jnp.asarray(experts), w1, w2, w3, jnp.float32)
        return jnp.sum(jnp.sin(y))

    args = [jnp.asarray(a) for a in (x, w, w1, w2, w3)]
    g_r = jax.grad(lambda *a: loss(impl, *a), argnums=(0, 1, 2, 3, 4))(*args)
    g_d = jax.grad(lambda *a: loss(dispatch.routed_experts_dense, *a), argnums=(0, 1, 2, 3, 4))(*args)
    for a, b in zip(g_r, g_d):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("impl", SORTED_IMPLS)
def test_no_token_dropped_under_extreme_imbalance(impl):
    # Every token to the same two experts: a capacity-based implementation would drop most of them.
    x, w, _, (w1, w2, w3) = _problem(n=64, seed=4)
    experts = np.tile(np.array([[2, 0]], np.int32), (64, 1))
    y = impl(*[jnp.asarray(a) for a in (x, w, experts, w1, w2, w3)], jnp.float32)
    want = dispatch.routed_experts_dense(*[jnp.asarray(a) for a in (x, w, experts, w1, w2, w3)], jnp.float32)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)
    assert np.all(np.abs(np.asarray(y)).sum(-1) > 0)


@pytest.mark.parametrize("overrides", [dict(), dict(score_func="softmax", router_bias=False, route_scale=1.0,
                                                    n_expert_groups=1, n_limited_groups=1, n_shared_experts=2)])
def test_moe_layer_matches_reference(overrides):
    cfg = tiny_config(**overrides)
    x = np.random.default_rng(5).normal(size=(2, 6, cfg.dim)).astype(np.float32)
    variables = MoE(cfg).init(jax.random.key(1), jnp.asarray(x))
    params = nn.unbox(variables["params"])
    bias = None
    if cfg.router_bias:
        bias = np.random.default_rng(6).normal(size=cfg.n_routed_experts).astype(np.float32) * 0.3
        variables = {"params": variables["params"], "router": {"bias": jnp.asarray(bias)}}
    y, stats = MoE(cfg).apply(variables, jnp.asarray(x))
    want, chosen = ref.moe(x.reshape(-1, cfg.dim).astype(np.float64), ref.f64(params),
                           None if bias is None else bias.astype(np.float64), ref.ref_config(cfg))
    np.testing.assert_allclose(np.asarray(y).reshape(-1, cfg.dim), want, rtol=2e-5, atol=2e-5)
    np.testing.assert_array_equal(stats["counts"], np.bincount(np.ravel(chosen), minlength=cfg.n_routed_experts))
    for impl in ("dense", "blocked"):
        other = MoE(cfg.replace(moe_impl=impl)).apply(variables, jnp.asarray(x))[0]
        np.testing.assert_allclose(y, other, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("skew", [False, True])
def test_two_grid_capacity_batch_equals_dense(skew, monkeypatch):
    # Training-sized batches (dispatch.TWO_GRID_MIN_ROWS) run a base grid and an overflow grid over the fullest
    # experts (block_capacity.Plan); lowered here so the small problem takes that path, values and gradients.
    # Unskewed: groups (9, 10, 9, 9, 11), base rung 9 plus a 2-row overflow grid; skewed: the loop runs.
    monkeypatch.setattr(dispatch, "TWO_GRID_MIN_ROWS", 1)
    assert dispatch.two_grids(48, 5) and not dispatch.two_grids(48, 2)
    x, w, experts, (w1, w2, w3) = _problem(skew=skew, seed=6)
    args = [jnp.asarray(a) for a in (x, w, w1, w2, w3)]

    def loss(impl, x, w, w1, w2, w3):
        return jnp.sum(jnp.sin(impl(x, w, jnp.asarray(experts), w1, w2, w3, jnp.float32)))

    got = dispatch.routed_experts_blocked(args[0], args[1], jnp.asarray(experts), *args[2:], jnp.float32)
    want = dispatch.routed_experts_dense(args[0], args[1], jnp.asarray(experts), *args[2:], jnp.float32)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    g_b = jax.grad(lambda *a: loss(dispatch.routed_experts_blocked, *a), argnums=(0, 1, 2, 3, 4))(*args)
    g_d = jax.grad(lambda *a: loss(dispatch.routed_experts_dense, *a), argnums=(0, 1, 2, 3, 4))(*args)
    for a, b in zip(g_b, g_d):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
