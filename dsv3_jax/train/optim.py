"""AdamW as DeepSeek-V3 trains (V3 report §4.2): β (0.9, 0.95), weight decay 0.1, global-norm clip 1.0.

Weight decay applies only to matrices (kernels, expert weights, embeddings): never to norm scales or biases;
the router bias is not a parameter at all (it lives in the `router` collection). Optional bf16 moments
(V3 report §3.3 "AdamW moments in BF16"), with fp32 master weights and gradients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from dsv3_jax import param_tree as pt
from dsv3_jax.train import schedules


def decay_mask(params):
    """True for leaves that get weight decay: arrays of rank >= 2 (per layer for scanned stacks; a split
    stack's leaves, train/state.py, are per layer already)."""
    def rank_wo_stack(path, x):
        split = any(isinstance(k, jax.tree_util.SequenceKey) for k in path)
        return x.ndim - int(pt.is_stacked(pt.key_names(path)) and not split) >= 2
    return jax.tree_util.tree_map_with_path(rank_wo_stack, params)


def scale_by_adam_bf16(b1: float, b2: float, eps: float = 1e-8) -> optax.GradientTransformation:
    """Adam scaling with both moments stored in bfloat16 (updates computed in fp32)."""
    def init(params):
        zeros = lambda p: jnp.zeros(p.shape, jnp.bfloat16)
        return (jnp.zeros((), jnp.int32), jax.tree.map(zeros, params), jax.tree.map(zeros, params))

    def update(grads, state, params=None):
        del params
        count, mu, nu = state
        count = count + 1
        mu32 = jax.tree.map(lambda m, g: b1 * m.astype(jnp.float32) + (1 - b1) * g, mu, grads)
        nu32 = jax.tree.map(lambda v, g: b2 * v.astype(jnp.float32) + (1 - b2) * g * g, nu, grads)
        c1, c2 = 1 - b1 ** count.astype(jnp.float32), 1 - b2 ** count.astype(jnp.float32)
        updates = jax.tree.map(lambda m, v: (m / c1) / (jnp.sqrt(v / c2) + eps), mu32, nu32)
        to_bf16 = lambda t: jax.tree.map(lambda x: x.astype(jnp.bfloat16), t)
        return updates, (count, to_bf16(mu32), to_bf16(nu32))

    return optax.GradientTransformation(init, update)


def make_optimizer(train_cfg) -> optax.GradientTransformation:
    """Clip -> Adam (fp32 or bf16 moments) -> decoupled weight decay on matrices -> -LR schedule."""
    t = train_cfg
    lr = lambda step: schedules.learning_rate(step, peak=t.lr, total=t.steps, warmup=t.warmup_steps,
                                              min_ratio=t.min_lr_ratio)
    adam = scale_by_adam_bf16(t.b1, t.b2) if t.bf16_moments else optax.scale_by_adam(t.b1, t.b2)
    return optax.chain(
        optax.clip_by_global_norm(t.grad_clip),
        adam,
        optax.add_decayed_weights(t.weight_decay, mask=decay_mask),
        optax.scale_by_learning_rate(lr),
    )
