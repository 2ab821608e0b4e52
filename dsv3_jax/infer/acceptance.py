"""Acceptance rules of speculative decoding (V3 report §5.4.3 uses MTP drafts for it; the rule is the
standard one of Leviathan et al. 2023 / Chen et al. 2023).

Given D drafts d_1..d_D and the main model's distributions p_1..p_{D+1} from one verification forward
(p_j is the main prediction for the slot of d_j; p_{D+1} follows d_D):
- greedy: accept the longest prefix with d_j == argmax p_j; the next token is argmax p_{a+1}. The output is
  then exactly plain greedy decoding.
- sampling: accept d_j with probability min(1, p_j(d_j) / q_j(d_j)) (q_j the draft distribution d_j was drawn
  from), stop at the first rejection and draw the next token from norm(max(0, p_j − q_j)); after D
  acceptances draw it from p_{D+1}. Every emitted token is then distributed exactly as under p.

Both return (a [B] accepted drafts, next [B] the token that follows them). Legend: B batch, D drafts, V vocab.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dsv3_jax.infer.sampling import argmax


def leading_true(ok):
    """Length of the all-True prefix of ok [B, D] -> [B] int32."""
    return jnp.sum(jnp.cumprod(ok.astype(jnp.int32), axis=-1), axis=-1).astype(jnp.int32)


def greedy_accept(main_logits, drafts):
    """main_logits [B, D+1, V], drafts [B, D] -> (a, next)."""
    best = argmax(main_logits)  # [B, D+1]
    a = leading_true(best[:, :-1] == drafts)
    return a, jnp.take_along_axis(best, a[:, None], axis=1)[:, 0]


def residual(p, q):
    """norm(max(0, p − q)) over the last axis; where p == q (nothing left) it falls back to p (that branch is
    then taken with probability 0)."""
    r = jnp.maximum(p - q, 0.0)
    total = jnp.sum(r, axis=-1, keepdims=True)
    return jnp.where(total > 0, r / jnp.where(total > 0, total, 1.0), p)


def rejection_accept(rng, p, q, drafts):
    """p [B, D+1, V] main distributions, q [B, D, V] draft distributions, drafts [B, D] drawn from q -> (a, next)."""
    d = drafts.shape[1]
    k_accept, k_next = jax.random.split(rng)
    p_d = jnp.take_along_axis(p[:, :d], drafts[..., None], axis=-1)[..., 0]
    q_d = jnp.take_along_axis(q, drafts[..., None], axis=-1)[..., 0]
    u = jax.random.uniform(k_accept, drafts.shape)
    a = leading_true(u * q_d < p_d)  # u < p/q without dividing; q_d > 0 for a draft drawn from q
    p_a = jnp.take_along_axis(p, a[:, None, None], axis=1)[:, 0]  # [B, V]
    q_pad = jnp.concatenate([q, jnp.zeros_like(q[:, :1])], axis=1)  # after D acceptances: residual(p, 0) = p
    q_a = jnp.take_along_axis(q_pad, a[:, None, None], axis=1)[:, 0]
    dist = residual(p_a, q_a)
    nxt = jax.random.categorical(k_next, jnp.log(dist))  # log 0 = -inf: never drawn
    return a, nxt.astype(jnp.int32)
