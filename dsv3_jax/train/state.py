"""The train state: everything a resumed run needs besides the data iterator's position.

Two layouts of the same numbers: stacked (every scanned stack's leaves [L, ...], as the model declares them:
what is initialized, checkpointed and restored) and split (layer_split.py: an unrolled stack's leaves as
tuples of L per-layer arrays, params and optimizer moments alike), in which the non-pipelined trainer steps,
because XLA:CPU then reads each layer's weights in place instead of copying its slice and concatenating its
gradients (measured 3-18% of the side-by-side model's step). `split_state` / `join_state` convert; with no
unrolled stack (a scanned model at real size) both return the state unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from dsv3_jax.layer_split import join_params, split_params, unrolled_stacks
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


def _map_params_like(tree, params, fn):
    """`tree` with fn applied to `params` and every subtree of its structure (the optimizer's moments)."""
    structure = jax.tree.structure(params)
    like = lambda x: isinstance(x, dict) and jax.tree.structure(x) == structure
    return jax.tree.map(lambda x: fn(x) if like(x) else x, tree, is_leaf=like)


def split_state(cfg, state: TrainState) -> TrainState:
    """The state in the split layout (module docstring): params and every params-shaped part of the optimizer
    state per layer. Also maps a TrainState of NamedShardings (train/layout.py) to the split layout's."""
    if not unrolled_stacks(cfg):
        return state
    convert = lambda t: _map_params_like(t, state.params, lambda p: split_params(cfg, p))
    return state.replace(params=split_params(cfg, state.params), opt_state=convert(state.opt_state))


def join_state(cfg, state: TrainState) -> TrainState:
    """split_state undone (a stacked state is returned as it is): before a checkpoint or a sample."""
    if not unrolled_stacks(cfg):
        return state
    convert = lambda t: _map_params_like(t, state.params, lambda p: join_params(cfg, p))
    return state.replace(params=join_params(cfg, state.params), opt_state=convert(state.opt_state))
