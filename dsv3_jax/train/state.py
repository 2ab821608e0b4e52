"""The train state: everything a resumed run needs besides the data iterator's position."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

import dsv3_jax


@flax.struct.dataclass
class TrainState:
    step: jnp.ndarray  # int32 scalar: optimizer steps taken
    params: Any  # fp32 master weights (unboxed)
    opt_state: Any
    router: Any  # the aux-loss-free biases: a non-trainable collection, never seen by the optimizer
    rng: jnp.ndarray  # a raw uint32 key, checkpointable


def init_state(cfg, optimizer: optax.GradientTransformation, seed: int, seq_len: int) -> TrainState:
    """Initialize params (jitted) and the optimizer state for a ModelConfig."""
    init_key, rng = jax.random.split(jax.random.PRNGKey(seed))
    tokens = jnp.zeros((1, seq_len), jnp.int32)
    variables = jax.jit(dsv3_jax.DeepSeekV3(cfg).init)(init_key, tokens)
    params = flax.linen.unbox(variables["params"])
    router = flax.linen.unbox(variables.get("router", {}))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                      router=router, rng=rng)
