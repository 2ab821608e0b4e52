"""DeepSeekMoE router (V3 report §2.1.2 eq. 12-16, §2.1.2 balance; inference/model.py class Gate).

    s   = sigmoid(x Wᵀ) (V3) or softmax(x Wᵀ) (V2)         fp32, never FP8 (V3 report §3.3)
    sel = s + b                                          b only steers SELECTION (aux-loss-free balancing)
    groups: score each group (sum of its top-2 sel with a bias, its max without), keep the best
            topk_groups groups, fill the others with -inf (the official code; HF fills 0.0 — see below)
    idx = top_k(sel, k);  w = s[idx] (/ Σ s[idx] for sigmoid) · route_scale    UNBIASED weights

Hugging Face's DeepseekV3 fills dropped groups with 0.0 instead of -inf: with negative biases a dropped
group's expert can then outrank a kept one. We keep the official -inf behaviour.
Ties: lax.top_k prefers the lower index among equal values (deterministic).

Legend: N tokens, D model dim, E routed experts, G groups, k experts per token.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from dsv3_jax.registry import Registry

# ModelConfig.score_func: the affinity s of eq. 12 (V3: sigmoid; V2: softmax), computed in fp32.
# `normalize`: divide the k selected scores by their sum (V3's sigmoid gate does; V2's softmax gate does not).


class ScoreFunc(NamedTuple):
    fn: Callable  # logits [N, E] -> affinities [N, E]
    normalize: bool


SCORE_FUNCS = Registry("score_func", "router score function")
SCORE_FUNCS.register("sigmoid", ScoreFunc(jax.nn.sigmoid, normalize=True))
SCORE_FUNCS.register("softmax", ScoreFunc(lambda logits: jax.nn.softmax(logits, axis=-1), normalize=False))


class Routing(NamedTuple):
    weights: jnp.ndarray  # [N, k] fp32, combine weights (unbiased, normalized, × route_scale)
    experts: jnp.ndarray  # [N, k] int32, chosen expert ids
    scores: jnp.ndarray  # [N, E] fp32, the raw affinities s (before bias)


def affinities(x, gate_w, score_func: str):
    """s [N, E] in fp32 from x [N, D] and the gate kernel [D, E]."""
    logits = jnp.einsum("nd,de->ne", x.astype(jnp.float32), gate_w.astype(jnp.float32))
    return SCORE_FUNCS.get(score_func).fn(logits)


def limit_groups(sel, n_groups: int, topk_groups: int, top2_sum: bool):
    """Keep each token's best `topk_groups` groups of experts; others become -inf. sel [N, E]."""
    n, e = sel.shape
    grouped = sel.reshape(n, n_groups, e // n_groups)
    if top2_sum:
        group_score = jnp.sum(jax.lax.top_k(grouped, 2)[0], axis=-1)  # [N, G]
    else:
        group_score = jnp.max(grouped, axis=-1)
    _, keep = jax.lax.top_k(group_score, topk_groups)  # [N, topk_groups]
    kept = jnp.zeros((n, n_groups), bool).at[jnp.arange(n)[:, None], keep].set(True)
    return jnp.where(kept[:, :, None], grouped, -jnp.inf).reshape(n, e)


def route(x, gate_w, bias, *, score_func: str, n_groups: int, topk_groups: int, k: int,
          route_scale: float) -> Routing:
    """Route tokens x [N, D] to k of E experts. `bias` [E] (or None) affects only which experts are chosen."""
    return route_scores(affinities(x, gate_w, score_func), bias, score_func=score_func, n_groups=n_groups,
                        topk_groups=topk_groups, k=k, route_scale=route_scale)


def route_scores(s, bias, *, score_func: str, n_groups: int, topk_groups: int, k: int,
                 route_scale: float) -> Routing:
    """route() from the affinities s [N, E] (affinities(x, gate_w, score_func))."""
    sel = s if bias is None else s + bias.astype(jnp.float32)
    if n_groups > 1:
        sel = limit_groups(sel, n_groups, topk_groups, top2_sum=bias is not None)
    _, idx = jax.lax.top_k(sel, k)
    w = jnp.take_along_axis(s, idx, axis=-1)
    if SCORE_FUNCS.get(score_func).normalize:
        w = w / jnp.sum(w, axis=-1, keepdims=True)
    return Routing(w * route_scale, idx.astype(jnp.int32), s)


def expert_counts(experts, n_experts: int):
    """Tokens routed to each expert [E] (int32), the load signal of the bias update (eq. 16 context)."""
    return jnp.zeros((n_experts,), jnp.int32).at[experts.reshape(-1)].add(1)


def balance_terms(scores, experts, n_experts: int, k: int):
    """Per-sequence f_i and P_i of the sequence-wise balance loss (V3 report eq. 17-20).

    scores [B, T, E], experts [B, T, k] -> f [B, E] = E/(k T) Σ_t 1[i ∈ TopK_t], P [B, E] = mean_t s'_{i,t}
    with s' = s / Σ_j s_j. The loss α Σ_i f_i P_i is formed in losses.py."""
    t = scores.shape[1]
    hits = jnp.sum(jax.nn.one_hot(experts, n_experts, dtype=jnp.float32), axis=(1, 2))  # [B, E]
    f = hits * (n_experts / (k * t))
    s_norm = scores / jnp.sum(scores, axis=-1, keepdims=True)
    return f, jnp.mean(s_norm, axis=1)
