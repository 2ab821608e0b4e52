import jax
import jax.numpy as jnp
import numpy as np

from dsv3_jax.experiment_config import model_config
from dsv3_jax.train import optim, step as step_lib
from dsv3_jax.train.state import init_state
from tests.train.helpers import micro_experiment


def test_update_biases_rule():
    bias = {"a": jnp.zeros((2, 4))}
    counts = {"a": jnp.asarray([[10, 2, 2, 2], [4, 4, 4, 4]])}
    new = step_lib.update_biases(bias, counts, 0.01)
    # layer 0: mean 4 -> overloaded expert 0 goes down, the others up; layer 1: balanced -> unchanged.
    np.testing.assert_allclose(new["a"], [[-0.01, 0.01, 0.01, 0.01], [0, 0, 0, 0]])


def _batch(rng, b, t, vocab=256):
    x = rng.integers(0, vocab, size=(b, t + 1))
    return {"inputs": jnp.asarray(x[:, :-1], jnp.int32), "targets": jnp.asarray(x[:, 1:], jnp.int32)}


def test_router_bias_moves_toward_balance_from_a_skewed_start():
    cd = micro_experiment(steps=40, bias_update_speed=0.02, lr=1e-3)
    cfg, t = model_config(cd), cd.train
    opt = optim.make_optimizer(t)
    state = init_state(cfg, opt, 0, t.seq_len)
    # Skew: the first k experts of every MoE layer get a large head start, so every token picks them.
    k = cfg.n_activated_experts
    skew = jnp.zeros(cfg.n_routed_experts).at[:k].set(0.5)
    state = state.replace(router=jax.tree.map(lambda b: b + skew, state.router))
    step = step_lib.make_train_step(cfg, opt, t)
    rng = np.random.default_rng(0)
    first = None
    for i in range(t.steps):
        state, m = step(state, _batch(rng, 8, t.seq_len))
        first = np.asarray(m["load_max"]) if first is None else first
    last = np.asarray(m["load_max"])
    assert np.all(first > 2.0), first  # all load on k of E experts: max/mean = E/k = 2.67
    assert np.all(last < 0.75 * first), (first, last)
    # The bias is updated only by the balancing rule: never a param, so the optimizer never sees it, and
    # every update moved it by exactly ±γ (here constant: bias_update_speed until the schedule's tail).
    assert "bias" not in str(jax.tree.structure(state.params))
    assert "bias" not in str(jax.tree.structure(state.opt_state))
    moved = jax.tree.map(lambda b, b0: np.asarray(b - b0) / 0.02, state.router,
                         jax.tree.map(lambda b: b + skew, init_state(cfg, opt, 0, t.seq_len).router))
    for m in jax.tree.leaves(moved):
        np.testing.assert_allclose(m, np.round(m), atol=1e-3)


def test_counts_cover_the_whole_global_batch():
    cd = micro_experiment()
    cfg, t = model_config(cd), cd.train
    opt = optim.make_optimizer(t)
    state = init_state(cfg, opt, 0, t.seq_len)
    batch = _batch(np.random.default_rng(1), 6, t.seq_len)
    _, aux = step_lib.loss_fn(state.params, state.fp8_meta, state.router, batch, cfg, 0.3, 1e-4)
    for c in jax.tree.leaves(aux["counts"]):
        np.testing.assert_array_equal(np.asarray(c).sum(-1), 6 * t.seq_len * cfg.n_activated_experts)
