import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from dsv3_jax.train import optim, schedules


def test_learning_rate_shape_scaled_to_run():
    total, warmup, peak = 1000, 50, 2.2e-4
    lr = lambda s: float(schedules.learning_rate(s, peak=peak, total=total, warmup=warmup, min_ratio=0.1))
    assert lr(0) == pytest.approx(peak / warmup)
    assert lr(49) == pytest.approx(peak)
    assert lr(300) == pytest.approx(peak) and lr(675) == pytest.approx(peak)  # constant to 10/14.8 of the run
    mid = (10 / 14.8 + 14.3 / 14.8) / 2 * total  # half-way through the cosine
    assert lr(mid) == pytest.approx(peak * 0.55, rel=2e-2)
    assert lr(970) == pytest.approx(2.2e-5)  # 2.2e-5 for the next 333B tokens
    assert lr(999) == pytest.approx(7.3e-6)  # 7.3e-6 for the last 167B tokens
    assert all(lr(s) >= lr(s + 1) - 1e-12 for s in range(49, 999))


def test_mtp_lambda_and_gamma_switch_at_paper_fractions():
    assert float(schedules.mtp_lambda(0, total=1480)) == pytest.approx(0.3)
    assert float(schedules.mtp_lambda(999, total=1480)) == pytest.approx(0.3)
    assert float(schedules.mtp_lambda(1000, total=1480)) == pytest.approx(0.1)  # after 10T of 14.8T
    assert float(schedules.bias_update_speed(1429, total=1480)) == pytest.approx(1e-3)
    assert float(schedules.bias_update_speed(1430, total=1480)) == 0.0  # 0 for the last 500B


def test_decay_mask_excludes_norms_and_vectors():
    params = {"embed": {"embedding": jnp.ones((5, 4))}, "norm": {"scale": jnp.ones(4)},
              "moe_layers": {"attn_norm": {"scale": jnp.ones((3, 4))}, "w": jnp.ones((3, 4, 4))}}
    mask = optim.decay_mask(params)
    assert mask == {"embed": {"embedding": True}, "norm": {"scale": False},
                    "moe_layers": {"attn_norm": {"scale": False}, "w": True}}


def _train_cfg(**kw):
    base = dict(lr=1e-2, steps=100, warmup_steps=1, min_lr_ratio=0.1, b1=0.9, b2=0.95, weight_decay=0.1,
                grad_clip=1.0, bf16_moments=False)
    base.update(kw)
    return ml_collections.ConfigDict(base)


def test_optimizer_is_clipped_adamw():
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32), "b": jnp.asarray(rng.normal(size=4))}
    grads = {"w": jnp.asarray(rng.normal(size=(3, 4)) * 5, jnp.float32), "b": jnp.asarray(rng.normal(size=4))}
    ours = optim.make_optimizer(_train_cfg())
    upd, _ = ours.update(grads, ours.init(params), params)
    # Independent: clip by global norm, Adam first step = sign-like m/sqrt(v), decay only the matrix.
    norm = np.sqrt(sum(np.sum(np.asarray(g) ** 2) for g in grads.values()))
    for k in params:
        g = np.asarray(grads[k]) * min(1.0, 1.0 / norm)
        step = g / (np.abs(g) + 1e-8)
        if k == "w":
            step = step + 0.1 * np.asarray(params[k])
        np.testing.assert_allclose(upd[k], -1e-2 * step, rtol=1e-4, atol=1e-7)


def test_bf16_moments_close_to_fp32():
    rng = np.random.default_rng(1)
    params = {"w": jnp.asarray(rng.normal(size=(8, 8)), jnp.float32)}
    f32, b16 = optim.make_optimizer(_train_cfg()), optim.make_optimizer(_train_cfg(bf16_moments=True))
    s32, s16 = f32.init(params), b16.init(params)
    assert {x.dtype for x in jax.tree.leaves(s16) if x.ndim} == {jnp.dtype(jnp.bfloat16)}
    for i in range(5):
        g = {"w": jnp.asarray(rng.normal(size=(8, 8)), jnp.float32)}
        u32, s32 = f32.update(g, s32, params)
        u16, s16 = b16.update(g, s16, params)
        np.testing.assert_allclose(u16["w"], u32["w"], rtol=0.05, atol=1e-4)
