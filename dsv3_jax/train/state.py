"""The train state: everything a resumed run needs besides the data iterator's position."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from dsv3_jax.model import DeepSeekV3


@flax.struct.dataclass
class TrainState:
    step: jnp.ndarray  # int32 scalar: optimizer steps taken
    params: Any  # fp32 master weights (unboxed)
    opt_state: Any
    router: Any  # the aux-loss-free biases: a non-trainable collection, never seen by the optimizer
    rng: jnp.ndarray  # a raw uint32 key, checkpointable
    # per-tensor delayed FP8 amax histories (cfg.fp8="per_tensor_delayed"; else empty): replaced by their
    # gradient each step, never seen by the optimizer (quant/fp8_delayed.py)
    fp8_meta: Any = dataclasses.field(default_factory=dict)

    def variables(self) -> dict:
        """The model's variable collections for DeepSeekV3.apply."""
        return model_variables(self.params, self.router, self.fp8_meta)


def model_variables(params, router, fp8_meta=None) -> dict:
    """{'params', 'router', 'fp8_meta'} with the empty collections left out."""
    out = {"params": params, "router": router}
    if fp8_meta:
        out["fp8_meta"] = fp8_meta
    return out


def init_state(cfg, optimizer: optax.GradientTransformation, seed: int, seq_len: int) -> TrainState:
    """Initialize params (jitted) and the optimizer state for a ModelConfig."""
    init_key, rng = jax.random.split(jax.random.PRNGKey(seed))
    tokens = jnp.zeros((1, seq_len), jnp.int32)
    variables = jax.jit(DeepSeekV3(cfg).init)(init_key, tokens)
    params = flax.linen.unbox(variables["params"])
    router = flax.linen.unbox(variables.get("router", {}))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                      router=router, rng=rng, fp8_meta=variables.get("fp8_meta", {}))
