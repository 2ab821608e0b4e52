import jax
import jax.numpy as jnp
import numpy as np

from dsv3_jax import losses


def _np_ce(logits, targets, mask):
    logits = logits.astype(np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    return (nll * mask).sum() / mask.sum()


def test_cross_entropy_with_mask():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 11)).astype(np.float32) * 3
    targets = rng.integers(0, 11, size=(2, 5))
    mask = rng.integers(0, 2, size=(2, 5)).astype(np.float32)
    mask[0, 0] = 1
    got = losses.cross_entropy(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask))
    np.testing.assert_allclose(got, _np_ce(logits, targets, mask), rtol=1e-5)
    np.testing.assert_allclose(losses.cross_entropy(jnp.asarray(logits), jnp.asarray(targets)),
                               _np_ce(logits, targets, np.ones((2, 5))), rtol=1e-5)


def test_mtp_loss_uses_shifted_targets():
    rng = np.random.default_rng(1)
    d, b, t, v = 2, 2, 6, 7
    mtp = rng.normal(size=(d, b, t, v)).astype(np.float32)
    seq = rng.integers(0, v, size=(b, t + 1))
    targets = seq[:, 1:]  # targets[i] = t_{i+1}
    want = []
    for k in range(1, d + 1):  # depth k at position i predicts t_{i+k+1} = seq[i + k + 1]
        want.append(_np_ce(mtp[k - 1][:, :t - k], seq[:, k + 1:], np.ones((b, t - k))))
    np.testing.assert_allclose(losses.mtp_losses(jnp.asarray(mtp), jnp.asarray(targets)), want, rtol=1e-5)
    np.testing.assert_allclose(losses.mtp_loss(jnp.asarray(mtp), jnp.asarray(targets), lam=0.3),
                               0.3 / d * sum(want), rtol=1e-5)
    assert float(losses.mtp_loss(jnp.zeros((0, b, t, v)), jnp.asarray(targets))) == 0.0


def test_balance_loss():
    rng = np.random.default_rng(2)
    f, p = rng.uniform(size=(3, 2, 8)), rng.uniform(size=(3, 2, 8))
    want = 1e-4 * sum(np.mean([np.dot(f[l, b], p[l, b]) for b in range(2)]) for l in range(3))
    got = losses.balance_loss({"balance_f": jnp.asarray(f), "balance_p": jnp.asarray(p)}, 1e-4)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert float(losses.balance_loss({}, 1e-4)) == 0.0


def test_cross_entropy_gradient_equals_autodiff_of_log_softmax():
    rng = np.random.default_rng(7)
    logits = jnp.asarray(rng.normal(size=(3, 5, 11)) * 3, jnp.float32)
    targets = jnp.asarray(rng.integers(0, 11, (3, 5)), jnp.int32)
    mask = jnp.asarray(rng.uniform(size=(3, 5)) > 0.3, jnp.float32)

    def plain(x):
        logp = jax.nn.log_softmax(x, axis=-1)
        nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
        return jnp.sum(nll * mask) / jnp.maximum(jnp.sum(mask), 1.0)

    value, grad = jax.value_and_grad(lambda x: 2.0 * losses.cross_entropy(x, targets, mask))(logits)
    want_value, want_grad = jax.value_and_grad(lambda x: 2.0 * plain(x))(logits)
    np.testing.assert_allclose(value, want_value, rtol=1e-6)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-7)
    g16 = jax.grad(lambda x: losses.cross_entropy(x, targets, mask))(logits.astype(jnp.bfloat16))
    assert g16.dtype == jnp.bfloat16  # the cotangent keeps the logits' dtype
    np.testing.assert_allclose(np.asarray(g16, np.float32), jax.grad(plain)(logits), atol=2e-2)
    zero = jax.grad(lambda x: losses.cross_entropy(x, targets, jnp.zeros_like(mask)))(logits)
    assert float(jnp.max(jnp.abs(zero))) == 0.0  # fully masked: no gradient, no NaN
