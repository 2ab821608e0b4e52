import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import dsv3_jax
from dsv3_jax import losses
from tests import reference as ref
from tests.conftest import tiny_config


def _init(cfg, tokens, seed=0):
    return jax.jit(dsv3_jax.DeepSeekV3(cfg).init)(jax.random.key(seed), tokens)


def _tokens(cfg, b=2, t=9, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, cfg.vocab_size, size=(b, t)), jnp.int32)


@pytest.mark.parametrize("overrides", [dict(), dict(q_lora_rank=0, mtp_depth=2, n_dense_layers=0, n_layers=2)])
def test_model_matches_reference(overrides):
    cfg = tiny_config(**overrides)
    tokens = _tokens(cfg)
    variables = _init(cfg, tokens)
    rng = np.random.default_rng(1)  # non-zero (partly negative) router biases
    router = jax.tree.map(lambda b: jnp.asarray(rng.normal(size=b.shape) * 0.3, jnp.float32), variables["router"])
    variables = {"params": variables["params"], "router": router}
    out = jax.jit(dsv3_jax.DeepSeekV3(cfg).apply)(variables, tokens)
    assert out.logits.shape == (2, 9, cfg.vocab_size)
    assert out.mtp_logits.shape == (cfg.mtp_depth, 2, 9, cfg.vocab_size)
    params = ref.f64(nn.unbox(variables["params"]))
    for b in range(2):
        logits, mtp = ref.model(np.asarray(tokens[b]), params, ref.f64(router), ref.ref_config(cfg))
        np.testing.assert_allclose(out.logits[b], logits, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(out.mtp_logits[:, b], mtp, rtol=1e-4, atol=1e-4)


def test_causality_main_and_mtp_heads():
    cfg = tiny_config(mtp_depth=2)
    tokens = _tokens(cfg, t=12)
    variables = _init(cfg, tokens)
    apply = jax.jit(dsv3_jax.DeepSeekV3(cfg).apply)
    base = apply(variables, tokens)
    t0 = 6
    changed = tokens.at[:, t0 + 1:].set((tokens[:, t0 + 1:] + 7) % cfg.vocab_size)
    out = apply(variables, changed)
    np.testing.assert_allclose(out.logits[:, :t0 + 1], base.logits[:, :t0 + 1], rtol=1e-6, atol=1e-6)
    assert not np.allclose(out.logits[:, t0 + 1:], base.logits[:, t0 + 1:])
    for k in range(1, cfg.mtp_depth + 1):  # depth k at position i reads tokens <= i + k
        np.testing.assert_allclose(out.mtp_logits[k - 1, :, :t0 + 1 - k], base.mtp_logits[k - 1, :, :t0 + 1 - k],
                                   rtol=1e-6, atol=1e-6)
        assert not np.allclose(out.mtp_logits[k - 1, :, t0 + 1 - k], base.mtp_logits[k - 1, :, t0 + 1 - k])


def test_aux_structure_mirrors_router_collection(tiny_cfg):
    tokens = _tokens(tiny_cfg)
    variables = _init(tiny_cfg, tokens)
    out = dsv3_jax.DeepSeekV3(tiny_cfg).apply(variables, tokens)
    counts = out.aux["expert_counts"]
    assert jax.tree.structure(counts) == jax.tree.structure(variables["router"])
    for c in jax.tree.leaves(counts):  # every token routed to exactly k experts in every MoE layer
        np.testing.assert_array_equal(np.asarray(c).sum(-1), 2 * 9 * tiny_cfg.n_activated_experts)
    assert out.aux["balance_f"].shape == (tiny_cfg.n_moe_layers + tiny_cfg.mtp_depth, 2, tiny_cfg.n_routed_experts)


def _loss_fn(cfg):
    model = dsv3_jax.DeepSeekV3(cfg)

    def loss(params, router, tokens):
        out = model.apply({"params": params, "router": router}, tokens[:, :-1])
        targets = tokens[:, 1:]
        return (losses.cross_entropy(out.logits, targets) + losses.mtp_loss(out.mtp_logits, targets, lam=0.3)
                + losses.balance_loss(out.aux, 1e-4))
    return loss


@pytest.mark.parametrize("remat", ["none", "full"])
def test_forward_backward_finite_and_training_reduces_loss(remat):
    cfg = tiny_config(remat=remat, init_std=0.02)
    tokens = _tokens(cfg, b=4, t=17, seed=3)
    variables = _init(cfg, tokens[:, :-1])
    params, router = variables["params"], variables["router"]
    opt = optax.adam(1e-2)
    state = opt.init(params)
    loss_fn = _loss_fn(cfg)

    @jax.jit
    def step(params, state):
        loss, grads = jax.value_and_grad(loss_fn)(params, router, tokens)
        updates, state = opt.update(grads, state)
        return optax.apply_updates(params, updates), state, loss, grads

    params, state, first, grads = step(params, state)
    assert np.isfinite(float(first))
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(grads))  # every param gets gradient
    for _ in range(15):
        params, state, loss, _ = step(params, state)
    assert float(loss) < 0.7 * float(first)


def test_remat_gradients_equal(tiny_cfg):
    tokens = _tokens(tiny_cfg, t=10, seed=4)
    variables = _init(tiny_cfg, tokens[:, :-1])
    grads = [jax.jit(jax.grad(_loss_fn(tiny_cfg.replace(remat=r))))(variables["params"], variables["router"], tokens)
             for r in ("none", "full", "dots", "paper")]
    for g in grads[1:]:
        for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(g)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_too_long_sequence_is_rejected(tiny_cfg):
    with pytest.raises(ValueError, match="max_seq_len"):
        dsv3_jax.DeepSeekV3(tiny_cfg).init(jax.random.key(0), jnp.zeros((1, tiny_cfg.max_seq_len + 1), jnp.int32))


def test_router_bias_is_not_a_param(tiny_cfg):
    variables = _init(tiny_cfg, _tokens(tiny_cfg))
    assert "bias" not in str(jax.tree_util.tree_structure(variables["params"]))
    assert variables["router"]["moe_layers"]["moe"]["bias"].dtype == jnp.float32
