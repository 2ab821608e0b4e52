"""layers/moe/block_loop.py, block_gather.py and block_capacity.py: the block bookkeeping, the capacity ladder,
and the three grouped SwiGLUs of the blocked backend (a loop of GEMMs; one batched matmul over gathered
weights; one batched matmul over capacity slots, or two (a base grid and an overflow grid over the fullest
experts), with the loop as their overflow branch; and the gathered and capacity batches' inference forms over
the fused w1 | w3) against a per-row loop and plain autodiff."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsv3_jax.layers.moe import block_capacity, block_gather, block_loop


@pytest.mark.parametrize("sizes,block", [([5, 0, 7, 1], 4), ([0, 0, 12, 0], 3), ([3, 3, 3, 3], 1),
                                         ([0, 0, 0, 0], 8)])
def test_blocks_cover_every_row_once(sizes, block):
    b = block_loop.Blocks(jnp.asarray(sizes, jnp.int32), sum(sizes), block)
    used, expert, row, valid = int(b.used), np.asarray(b.expert), np.asarray(b.row), np.asarray(b.valid)
    assert used == sum(-(-s // block) for s in sizes) <= b.count
    covered = np.concatenate([np.arange(row[j], row[j] + valid[j]) for j in range(used)] + [np.zeros(0, int)])
    np.testing.assert_array_equal(covered, np.arange(sum(sizes)))  # every sorted row, once, in order
    group = np.repeat(np.arange(len(sizes)), sizes)
    for j in range(used):  # a block's valid rows all belong to its expert
        assert (group[row[j]:row[j] + valid[j]] == expert[j]).all() and valid[j] > 0
    assert (valid[used:] == 0).all()


def _per_row(xs, sizes, w1, w2, w3):
    group = np.repeat(np.arange(len(sizes)), sizes)
    out = []
    for r, e in enumerate(group):
        a, b = xs[r] @ w1[e], xs[r] @ w3[e]
        out.append((a / (1 + np.exp(-a)) * b) @ w2[e])
    return np.stack(out) if out else np.zeros((0, w2.shape[2]))


def _capacity(max_rows):
    def swiglu(xs, sizes, w1, w2, w3, block, dtype):
        caps = block_capacity.capacities(xs.shape[0], sizes.shape[0], max_rows)
        rows = jnp.arange(xs.shape[0])  # already sorted: order and inverse are the identity, one row per token
        ones = jnp.ones((xs.shape[0], 1), jnp.float32)  # routing weight 1: the combined output is the row's
        return block_capacity.capacity_moe(xs, ones, rows, rows, sizes, w1, w2, w3, 1, caps, block, dtype)
    return swiglu


def _fused(caps, overflow=None):
    """capacity_forward (the inference form over w13 = w1 | w3) as a grouped SwiGLU of w1, w2, w3."""
    def swiglu(xs, sizes, w1, w2, w3, block, dtype):
        rows, ones = jnp.arange(xs.shape[0]), jnp.ones((xs.shape[0], 1), jnp.float32)
        w13 = jnp.concatenate([w1, w3], axis=-1)
        return block_capacity.capacity_forward(xs, ones, rows, rows, sizes, w13, w2, 1, caps, block, dtype,
                                               overflow)
    return swiglu


def _gathered_fused(xs, sizes, w1, w2, w3, block, dtype):
    """gathered_swiglu over the fused w13 = w1 | w3 (inference variables: one gather and one matmul for both)."""
    return block_gather.gathered_swiglu(xs, sizes, jnp.concatenate([w1, w3], axis=-1), w2, None, block, dtype)


def _two_grids(caps, overflow):
    def swiglu(xs, sizes, w1, w2, w3, block, dtype):
        rows, ones = jnp.arange(xs.shape[0]), jnp.ones((xs.shape[0], 1), jnp.float32)
        return block_capacity.capacity_moe(xs, ones, rows, rows, sizes, w1, w2, w3, 1, caps, block, dtype, overflow)
    return swiglu


@pytest.mark.parametrize("m,e,max_rows,want", [(64, 16, 16, (6, 8, 10, 13, 16)), (4, 16, 1, (1,)),
                                               (20, 5, 9, (6, 8, 9)), (2048, 16, 512, (140, 175, 219, 274))])
def test_capacity_ladder(m, e, max_rows, want):
    caps = block_capacity.capacities(m, e, max_rows)
    assert caps == want and caps[-1] <= max_rows and list(caps) == sorted(set(caps))
    assert block_capacity.expected_capacity(m, e, max_rows) in caps


# The rows below: 5 experts, 20 rows, groups (4, 0, 9, 1, 6). Ladder (6, 8, 9): with max_rows 9 the top rung
# runs; with max_rows 12 (ladder 6, 8, 10, 12) rung 10 does; with max_rows 4 no rung holds 9 and the loop branch
# runs. Two grids with the 2 fullest (9 and 6) getting overflow slots: the base grid must hold the third (4):
# base 4 + overflow 5 (rung 5 of 2, 5), base 5 + overflow 4 (rung 5: slots past the excess), and base 4 with
# no overflow rung holding 5 (the loop runs everything).
@pytest.mark.parametrize("swiglu", [block_loop.looped_swiglu, block_gather.gathered_swiglu, _gathered_fused,
                                    _capacity(9), _capacity(12), _capacity(4), _fused((6, 8, 9)), _fused((1, 2)),
                                    _fused((4, 7), (2, (2, 5))), _fused((4,), (2, (1, 3))),
                                    _two_grids((4, 7), (2, (2, 5))),
                                    _two_grids((5,), (2, (5,))), _two_grids((4,), (2, (1, 3)))],
                         ids=["loop", "gather", "gather-fused", "capacity-top", "capacity-mid", "capacity-overflow",
                              "fused-top", "fused-loop", "fused-two-grids", "fused-two-grids-loop", "two-grids",
                              "two-grids-padded", "two-grids-loop"])
@pytest.mark.parametrize("block", [1, 3, 8])
def test_blocked_swiglu_value_and_gradients(block, swiglu):
    rng = np.random.default_rng(0)
    sizes = np.array([4, 0, 9, 1, 6], np.int32)  # an empty expert, blocks that straddle experts
    m, d, f = int(sizes.sum()), 6, 5
    xs = rng.normal(size=(m, d)).astype(np.float32)
    ws = [rng.normal(size=s).astype(np.float32) * 0.4 for s in ((5, d, f), (5, f, d), (5, d, f))]
    run = jax.jit(lambda xs, *w: swiglu(xs, jnp.asarray(sizes), *w, block, jnp.dtype("float32")))
    np.testing.assert_allclose(run(xs, *ws), _per_row(xs.astype(np.float64), sizes, *ws), rtol=1e-5, atol=1e-5)

    cot = rng.normal(size=(m, d)).astype(np.float32)

    def reference(xs, w1, w2, w3):  # plain autodiff of the same math, one expert's rows at a time
        group = jnp.asarray(np.repeat(np.arange(5), sizes))
        a, b = jnp.einsum("md,mdf->mf", xs, w1[group]), jnp.einsum("md,mdf->mf", xs, w3[group])
        return jnp.einsum("mf,mfd->md", jax.nn.silu(a) * b, w2[group])

    g = jax.grad(lambda *a: jnp.sum(run(*a) * cot), argnums=(0, 1, 2, 3))(xs, *ws)
    want = jax.grad(lambda *a: jnp.sum(reference(*a) * cot), argnums=(0, 1, 2, 3))(xs, *ws)
    for got, ref in zip(g, want):
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    assert np.all(np.asarray(g[1])[1] == 0)  # the empty expert gets no gradient


@pytest.mark.parametrize("sizes,want_base,want_over", [([4, 0, 9, 1, 6], 0, 1), ([3, 3, 3, 3, 3], 0, 0),
                                                       ([0, 0, 15, 0, 0], 2, 0), ([5, 5, 5, 0, 0], 1, 0)])
def test_two_grid_plan(sizes, want_base, want_over):
    # Base ladder (4, 7), 2 fullest with overflow ladder (2, 5): the base holds the third fullest, the
    # overflow the largest excess over the base rung; index len(ladder) means the loop (then overflow 0).
    plan = block_capacity.Plan(jnp.asarray(sizes, jnp.int32), (4, 7), (2, (2, 5)))
    assert (int(plan.base), int(plan.over)) == (want_base, want_over)
    assert sorted(np.asarray(plan.heavy).tolist()) == sorted(np.argsort(-np.asarray(sizes), kind="stable")[:2])


def test_two_grid_ladders():
    base, (h, over) = block_capacity.two_grid_ladders(8192, 16, 2048)
    assert h == 8 and base == (448, 480, 514, 550, 589, 631) and over == (32, 64, 128, 192, 256, 320, 384, 512)
    base, (h, over) = block_capacity.two_grid_ladders(20, 5, 9)  # mean 4: rungs step by at least one row
    assert base == (4, 5, 6, 7, 8) and over == (1, 2, 3, 4) and h == 2
