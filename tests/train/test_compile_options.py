"""train/compile_options.py: the CPU training step's XLA options take effect and change no result."""
import re

import jax
import jax.numpy as jnp
import numpy as np

from dsv3_jax.experiment_config import model_config
from dsv3_jax.train import optim, step as step_lib
from dsv3_jax.train.compile_options import CPU_TRAIN_OPTIONS, train_compiler_options
from dsv3_jax.train.state import init_state
from tests.train.helpers import micro_experiment


def test_options_by_backend():
    assert train_compiler_options("cpu") == CPU_TRAIN_OPTIONS
    assert train_compiler_options("cpu") is not CPU_TRAIN_OPTIONS  # a copy: callers may not edit the table
    assert train_compiler_options("gpu") is None and train_compiler_options("tpu") is None
    assert train_compiler_options() == (CPU_TRAIN_OPTIONS if jax.default_backend() == "cpu" else None)


def _copies(compiled) -> int:
    return len(re.findall(r" copy\(", compiled.as_text()))


def test_region_analysis_removes_copies_of_control_flow():
    # A scan whose body switches between branches, the shape of an unrolled stack over the capacity ladder:
    # with region analysis copy insertion proves some of the carried buffers' copies unnecessary.
    def f(x, w, i):
        def body(c, _):
            y = jax.lax.switch(i, [lambda c: c @ w, lambda c: jnp.tanh(c) @ w, lambda c: c * 2.0], c)
            return y + c, None
        return jax.lax.scan(body, x, None, length=3)[0].sum()
    args = (jnp.ones((4, 8)), jnp.full((8, 8), 0.1), jnp.int32(1))
    lowered = jax.jit(jax.grad(f, argnums=(0, 1))).lower(*args)
    default, tuned = lowered.compile(), lowered.compile(compiler_options=train_compiler_options("cpu"))
    assert _copies(tuned) < _copies(default), (_copies(tuned), _copies(default))
    for a, b in zip(default(*args), tuned(*args)):
        np.testing.assert_array_equal(a, b)


def test_train_step_with_and_without_the_options_agree():
    cd = micro_experiment()
    cfg, t = model_config(cd), cd.train
    opt = optim.make_optimizer(t)
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, size=(4, t.seq_len + 1))
    batch = {"inputs": jnp.asarray(x[:, :-1], jnp.int32), "targets": jnp.asarray(x[:, 1:], jnp.int32)}
    results = []
    for options in (None, {}):  # the backend's training options, XLA's defaults
        state = init_state(cfg, opt, 0, t.seq_len)
        step = step_lib.make_train_step(cfg, opt, t, compiler_options=options)
        for _ in range(2):
            state, metrics = step(state, batch)
        results.append((state.params, metrics["loss"]))
    (p0, l0), (p1, l1) = results
    np.testing.assert_array_equal(l0, l1)
    for a, b in zip(jax.tree.leaves(p0), jax.tree.leaves(p1)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
