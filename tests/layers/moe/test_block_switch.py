"""block_switch.py: a few assignments as switches over per-expert weights equal the float64 per-expert loop and
the dense reference; routed_experts_blocked takes them for a lone token or a pair of tokens only."""

import jax.numpy as jnp
import numpy as np
import pytest

from dsv3_jax.layers.moe import block_switch, dispatch
from tests import reference as ref


def _problem(n, d=8, f=6, e=16, k=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    experts = np.stack([rng.choice(e, k, replace=False) for _ in range(n)]).astype(np.int32)
    w = rng.uniform(0.1, 1.0, size=(n, k)).astype(np.float32)
    w1, w2, w3 = (rng.normal(size=s).astype(np.float32) * 0.3 for s in ((e, d, f), (e, f, d), (e, d, f)))
    return x, w, experts, w1, w2, w3


def _loop(x, w, experts, w1, w2, w3):
    out = np.zeros_like(x, np.float64)
    for i in range(len(x)):
        for j, e in enumerate(experts[i]):
            out[i] += w[i, j] * ref.mlp(x[i].astype(np.float64), {"w1": w1[e], "w2": w2[e], "w3": w3[e]})
    return out


@pytest.mark.parametrize("n", [1, 2])
def test_switches_equal_the_per_expert_loop(n):
    x, w, experts, w1, w2, w3 = _problem(n)
    w13s = tuple(jnp.asarray(np.concatenate([w1[e], w3[e]], axis=-1)) for e in range(len(w1)))
    w2s = tuple(jnp.asarray(w2[e]) for e in range(len(w2)))
    got = block_switch.switched_swiglu(jnp.asarray(x), jnp.asarray(w), jnp.asarray(experts), w13s, w2s, jnp.float32)
    np.testing.assert_allclose(got, _loop(x, w, experts, w1, w2, w3), rtol=1e-5, atol=1e-5)
    # Through the blocked backend, as the MoE layer calls it with inference variables.
    w13 = jnp.concatenate([w1, w3], axis=-1)
    via = dispatch.routed_experts_blocked(*map(jnp.asarray, (x, w, experts)), w13, jnp.asarray(w2), None,
                                          jnp.float32, per_expert=(w13s, w2s))
    dense = dispatch.routed_experts_dense(*map(jnp.asarray, (x, w, experts, w1, w2, w3)), jnp.float32)
    np.testing.assert_allclose(via, dense, rtol=1e-5, atol=1e-6)


def test_which_batches_switch():
    assert block_switch.switches(1, 4, 16) and block_switch.switches(2, 4, 16)  # 4 and 8 of 16 experts
    assert not block_switch.switches(4, 4, 16)  # 16 assignments: the capacity batch (measured faster)
    assert block_switch.switches(1, 3, 4) and not block_switch.switches(2, 3, 4)  # a lone token always
    assert not block_switch.switches(1, 16, 64)  # above MAX_ROWS


def test_too_many_assignments_are_refused():
    x, w, experts, w1, w2, w3 = _problem(3)
    w13s = tuple(jnp.asarray(np.concatenate([w1[e], w3[e]], axis=-1)) for e in range(len(w1)))
    with pytest.raises(ValueError, match="3 tokens x 4 experts = 12 assignments; expected at most 8"):
        block_switch.switched_swiglu(x, w, experts, w13s, tuple(w2), jnp.float32)
