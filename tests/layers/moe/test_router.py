import jax.numpy as jnp
import numpy as np
import pytest

from dsv3_jax.layers.moe import router
from tests import reference as ref


def _ref_route(x, gate, bias, **c):
    logits = x.astype(np.float64) @ gate.astype(np.float64)
    s = 1 / (1 + np.exp(-logits)) if c["score_func"] == "sigmoid" else ref.softmax(logits)
    out = [ref.route_token(s[i], bias, c) for i in range(len(x))]
    return np.array([o[0] for o in out]), np.array([o[1] for o in out])


@pytest.mark.parametrize("score_func, use_bias, n_groups, topk_groups, k", [
    ("sigmoid", True, 4, 2, 3),   # V3-style: bias, top-2 group score, group limit
    ("sigmoid", True, 1, 1, 2),   # no groups
    ("softmax", False, 4, 1, 2),  # V2-style: group max score
    ("softmax", False, 1, 1, 3),  # V2-Lite
    ("sigmoid", True, 8, 3, 4),   # one expert... two per group
])
def test_route_matches_reference(score_func, use_bias, n_groups, topk_groups, k):
    rng = np.random.default_rng(n_groups * 10 + k)
    x = rng.normal(size=(40, 12)).astype(np.float32)
    gate = rng.normal(size=(12, 16)).astype(np.float32)
    bias = (rng.normal(size=16) * 0.5).astype(np.float32) if use_bias else None  # negative biases included
    c = dict(score_func=score_func, n_groups=n_groups, topk_groups=topk_groups, k=k, route_scale=2.5)
    r = router.route(jnp.asarray(x), jnp.asarray(gate), None if bias is None else jnp.asarray(bias), **c)
    want_idx, want_w = _ref_route(x, gate, bias, **c)
    np.testing.assert_array_equal(np.asarray(r.experts), want_idx)
    np.testing.assert_allclose(np.asarray(r.weights), want_w, rtol=1e-5)
    if score_func == "sigmoid":
        np.testing.assert_allclose(np.asarray(r.weights).sum(-1), 2.5, rtol=1e-5)


def test_bias_only_affects_selection_and_negative_bias_with_minus_inf_fill():
    # One token, 4 groups of 2. Scores favour group 0; a large negative bias on group 0 moves the selection,
    # but the weights stay the UNBIASED normalized scores.
    s_logits = np.array([[3.0, 2.5, 0.1, 0.0, -1.0, -1.2, 0.3, 0.2]], np.float32)
    gate = np.eye(8, dtype=np.float32)
    bias = np.array([-5, -5, 0, 0, 0, 0, 0, 0], np.float32)
    r = router.route(jnp.asarray(s_logits), jnp.asarray(gate), jnp.asarray(bias), score_func="sigmoid",
                     n_groups=4, topk_groups=2, k=2, route_scale=1.0)
    s = 1 / (1 + np.exp(-s_logits[0].astype(np.float64)))
    # Group scores (top-2 sums of s + b): g0 ≈ -8.1, g1 ≈ 1.03, g2 ≈ 0.50, g3 ≈ 1.12 -> keep g3, g1; the best
    # two experts there are 6 and 7 although experts 0 and 1 have the highest raw scores.
    assert sorted(np.asarray(r.experts)[0].tolist()) == [6, 7]
    chosen = np.asarray(r.experts)[0]
    np.testing.assert_allclose(np.asarray(r.weights)[0], s[chosen] / s[chosen].sum(), rtol=1e-6)
    # With -inf fill, a dropped group's expert can never be chosen even when every kept score is negative.
    neg = np.full((1, 8), -3.0, np.float32)
    neg[0, :2] = 5.0  # group 0 has the best raw scores ...
    r2 = router.route(jnp.asarray(neg), jnp.asarray(gate), jnp.asarray(np.array([-9, -9, 0, 0, 0, 0, 0, 0],
                      np.float32)), score_func="sigmoid", n_groups=4, topk_groups=1, k=2, route_scale=1.0)
    assert set(np.asarray(r2.experts)[0].tolist()) <= {2, 3, 4, 5, 6, 7}
    assert len({e // 2 for e in np.asarray(r2.experts)[0].tolist()}) == 1  # both from the ONE kept group


def test_ties_pick_lower_index():
    x = np.zeros((3, 4), np.float32)  # every score equal
    gate = np.zeros((4, 8), np.float32)
    r = router.route(jnp.asarray(x), jnp.asarray(gate), jnp.zeros(8), score_func="sigmoid", n_groups=4,
                     topk_groups=2, k=3, route_scale=1.0)
    want_idx, want_w = _ref_route(x, gate, np.zeros(8), score_func="sigmoid", n_groups=4, topk_groups=2, k=3,
                                  route_scale=1.0)
    np.testing.assert_array_equal(np.asarray(r.experts), want_idx)
    np.testing.assert_array_equal(np.asarray(r.experts)[0], [0, 1, 2])
    np.testing.assert_allclose(np.asarray(r.weights), want_w, rtol=1e-6)


def test_counts_and_balance_terms():
    rng = np.random.default_rng(0)
    scores = rng.uniform(size=(2, 5, 6)).astype(np.float32)
    experts = np.stack([np.stack([rng.choice(6, 2, replace=False) for _ in range(5)]) for _ in range(2)])
    counts = router.expert_counts(jnp.asarray(experts), 6)
    np.testing.assert_array_equal(counts, np.bincount(experts.reshape(-1), minlength=6))
    f, p = router.balance_terms(jnp.asarray(scores), jnp.asarray(experts), 6, 2)
    for b in range(2):  # eq. 18-20 directly
        f_want = np.array([6 / (2 * 5) * sum(i in experts[b, t] for t in range(5)) for i in range(6)])
        p_want = np.mean(scores[b] / scores[b].sum(-1, keepdims=True), axis=0)
        np.testing.assert_allclose(f[b], f_want, rtol=1e-6)
        np.testing.assert_allclose(p[b], p_want, rtol=1e-6)
    # Perfect balance gives Σ f_i P_i = 1 with uniform scores.
    assert float(jnp.sum(f * p, -1).mean()) > 0
