"""The one attention core: causal key-block skipping and long-sequence query blocks (alone and composed) give the
plain masked softmax attention's values and gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsv3_jax.layers import attention_core as ac

B, H, K, V = 2, 3, 8, 5


def _plain(q, k, v, mask, scale):
    """The reference: full [B,H,T,S] fp32 scores, masked softmax, no blocks."""
    s = jnp.einsum("bthk,bshk->bhts", q, k) * scale
    s = jnp.where(mask[:, None], s, -1e30)
    p = jnp.where(mask[:, None], jax.nn.softmax(s, axis=-1), 0.0)
    return jnp.einsum("bhts,bshv->bthv", p, v)


def _inputs(t, seed=0, segments=True):
    rng = np.random.default_rng(seed)
    q, k = (jnp.asarray(rng.normal(size=(B, t, H, K)), jnp.float32) for _ in range(2))
    v = jnp.asarray(rng.normal(size=(B, t, H, V)), jnp.float32)
    idx = jnp.broadcast_to(jnp.arange(t), (B, t))
    seg = jnp.asarray(np.cumsum(rng.random((B, t)) < 0.05, axis=1)) if segments else None
    return q, k, v, ac.causal_mask(idx, idx, seg, seg)


def _check(fn, t, scale=0.3):
    q, k, v, mask = _inputs(t)
    np.testing.assert_allclose(fn(q, k, v, mask, scale), _plain(q, k, v, mask, scale), rtol=2e-5, atol=2e-5)
    loss = lambda f: lambda q, k, v: jnp.sum(jnp.sin(f(q, k, v, mask, scale)))
    got = jax.grad(loss(fn), argnums=(0, 1, 2))(q, k, v)
    want = jax.grad(loss(_plain), argnums=(0, 1, 2))(q, k, v)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("blocks", [2, 4])
def test_causal_blocks_match_plain(blocks):
    _check(lambda *a: ac.causal_attention(*a, blocks=blocks), 32)


def test_causal_default_blocks_from_length():
    assert [ac.causal_blocks(t) for t in (64, 128, 256, 4096, 130)] == [1, 2, 4, 4, 2]
    _check(ac.causal_attention, 256)


def test_query_blocks_match_plain(monkeypatch):
    monkeypatch.setattr(ac, "SCORE_BLOCK_BYTES", B * H * 64 * 8 * 4)  # 8 query rows per block at 64 keys
    monkeypatch.setattr(ac, "MIN_QUERY_BLOCK", 1)
    assert ac.query_block(64, 64, H, B) == 8
    _check(ac.softmax_attention, 64)


def test_causal_and_query_blocks_compose(monkeypatch):
    """Each causal block (fewer keys) is itself split into query blocks when its scores exceed the budget."""
    monkeypatch.setattr(ac, "SCORE_BLOCK_BYTES", B * H * 16 * 16 * 4)
    monkeypatch.setattr(ac, "MIN_QUERY_BLOCK", 1)
    calls = []
    real = ac._blocked
    monkeypatch.setattr(ac, "_blocked", lambda fn, n: calls.append(n) or real(fn, n))
    _check(lambda *a: ac.causal_attention(*a, blocks=4), 64)
    assert calls and max(calls) > 1


def test_query_blocks_keep_no_scores_under_a_dots_saving_remat(monkeypatch):
    """An outer checkpoint policy that saves dots must not keep the blocks' [.., block, S] scores: the
    custom_vjp's residuals are its inputs."""
    monkeypatch.setattr(ac, "SCORE_BLOCK_BYTES", B * H * 128 * 16 * 4)
    monkeypatch.setattr(ac, "MIN_QUERY_BLOCK", 1)
    q, k, v, mask = _inputs(128, segments=False)
    f = jax.checkpoint(lambda q, k, v: jnp.sum(ac.softmax_attention(q, k, v, mask, 0.3)),
                       policy=jax.checkpoint_policies.dots_saveable)
    _, vjp = jax.vjp(f, q, k, v)
    shapes = [x.shape for x in jax.tree.leaves(vjp)]
    assert not [s for s in shapes if len(s) == 4 and s[-1] == 128 and s[-2] in (16, 128)], shapes
    g = jax.grad(f, argnums=(0, 1, 2))(q, k, v)
    w = jax.grad(lambda q, k, v: jnp.sum(_plain(q, k, v, mask, 0.3)), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(g, w):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


def test_query_block_sizes():
    ac_bytes = ac.SCORE_BLOCK_BYTES
    assert ac.query_block(4096, 4096, 128, 1) < 4096  # V3 at 4K: 8 GiB of scores per sequence -> blocked
    assert ac.query_block(4096, 4096, 128, 1) * 128 * 4096 * 4 <= max(ac_bytes, ac.MIN_QUERY_BLOCK * 128 * 4096 * 4)
    assert ac.query_block(16, 16, 4, 2) == 16


def test_masked_attention_closed_form_gradient_with_empty_rows():
    # Padding rows see no key at all: zeros out and no gradient through them, as the plain reference does.
    q, k, v, mask = _inputs(12, seed=4, segments=False)
    mask = mask.at[:, 3:5].set(False)
    np.testing.assert_allclose(ac.masked_attention(q, k, v, mask, 0.3), _plain(q, k, v, mask, 0.3), atol=2e-5)
    loss = lambda f: lambda q, k, v: jnp.sum(jnp.sin(f(q, k, v, mask, 0.3)))  # noqa: E731
    for got, want in zip(jax.grad(loss(ac.masked_attention), argnums=(0, 1, 2))(q, k, v),
                         jax.grad(loss(_plain), argnums=(0, 1, 2))(q, k, v)):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)
    out = ac.masked_attention(q, k, v, mask, 0.3)
    assert float(jnp.max(jnp.abs(out[:, 3:5]))) == 0.0
    g = jax.grad(lambda q: jnp.sum(ac.masked_attention(q, k, v, mask, 0.3) ** 2))(q)
    assert np.isfinite(np.asarray(g)).all() and float(jnp.max(jnp.abs(g[:, 3:5]))) == 0.0


def test_mask_bias_gives_the_select_formulations_probabilities_exactly():
    # The core adds the mask as a 0 / NEG_INF bias (one [B,1,T,S] operand XLA fuses) instead of selecting over
    # [B,H,T,S]: the probabilities must be the very numbers of the select-then-softmax form, empty rows included.
    q, k, v, mask = _inputs(16, seed=5)
    mask = mask.at[0, 2].set(False)
    qh, kh, vh = (jnp.swapaxes(a, 1, 2) for a in (q, k, v))
    probs = jax.jit(lambda *a: ac._attention_forward(*a, 0.3)[1][3])(qh, kh, vh, mask)
    scores = jnp.einsum("bhtk,bhsk->bhts", qh, kh) * 0.3
    want = jnp.where(mask[:, None], jax.nn.softmax(jnp.where(mask[:, None], scores, ac.NEG_INF), axis=-1), 0.0)
    np.testing.assert_array_equal(np.asarray(probs), np.asarray(want))
    assert float(jnp.max(jnp.abs(probs[0, :, 2]))) == 0.0
