"""Cached forward passes of the main model: `prefill` (a batch of right-padded prompts) and `decode_step`
(one token per sequence), both built on `extend` (T new tokens per sequence at per-row offsets).

The layers run from the trained parameter dict: each scanned group ('dense_layers', 'moe_layers', a leading
layer axis in the params, the router biases and the cache) goes through one lax.scan whose body is
cached_block.block_cached. The numbers equal `DeepSeekV3(cfg).apply` on the whole sequence (tests/infer).
The cache layout (absorb or naive, V3 report §2.1.1) is chosen when the cache is made (cache.init_cache).

Legend: B batch, T new tokens, S cache slots, D model dim, V vocab.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dsv3_jax.infer.cache import KVCache
from dsv3_jax.infer.cached_block import block_cached, cache_mask
from dsv3_jax.layers.linear import Embed, Head, checked_tokens
from dsv3_jax.layers.norms import rms_norm


def unpack(cfg, variables):
    """(params, router) from model variables {'params', 'router'} (boxed or not); checks the router biases."""
    if "params" not in variables:
        raise ValueError(f"variables: expected a dict with 'params' (and 'router'), got keys {sorted(variables)}")
    params, router = nn.unbox(variables["params"]), nn.unbox(variables.get("router", {}))
    if cfg.router_bias and cfg.n_moe_layers and "moe_layers" not in router:
        raise ValueError("variables['router']: missing 'moe_layers' biases; ModelConfig.router_bias=True needs "
                         "the router collection returned by DeepSeekV3.init / saved in TrainState.router")
    return params, router


def embed(cfg, params, tokens):
    """Emb(tokens) [B,T,D] in the compute dtype (the model's Embed module)."""
    e = Embed(cfg.vocab_size, cfg.dim, cfg.init_std, jnp.dtype(cfg.dtype))
    return e.apply({"params": params["embed"]}, tokens)


def head(cfg, params, h_normed):
    """fp32 logits [..., V] from the normed hidden state (the model's Head module)."""
    return Head(cfg.vocab_size, cfg.init_std, jnp.dtype(cfg.dtype)).apply({"params": params["head"]}, h_normed)


def _group_bias(cfg, router, group: str, n: int):
    if group != "moe_layers" or not cfg.router_bias:
        return jnp.zeros((n, 0), jnp.float32)  # a placeholder scanned along with the params
    return router["moe_layers"]["moe"]["bias"]


def run_group(cfg, params, router, group: str, x, positions, mask, kv, absorb: bool):
    """The layers of one scanned group over new tokens x [B,T,D]: lax.scan over the layer axis of the
    params and biases, carrying x and the group's cache (updated in place)."""
    n = jax.tree.leaves(params[group])[0].shape[0]
    moe = group == "moe_layers"

    def body(carry, xs):
        x, kv = carry
        p, bias, i = xs
        x, kv = block_cached(cfg, p, bias, x, positions, mask, kv, i, absorb, moe)
        return (x, kv), None

    xs = (params[group], _group_bias(cfg, router, group, n), jnp.arange(n))
    (x, kv), _ = jax.lax.scan(body, (x, kv), xs)
    return x, kv


def extend(cfg, variables, cache: KVCache, tokens):
    """Run tokens [B,T] at positions cache.lengths[b] + t through the model, writing their cache entries.

    Returns (cache with the SAME lengths, logits [B,T,V] fp32, hidden [B,T,D] before the final norm). The
    caller sets the new lengths (all T for a step, fewer to roll back rejected speculative tokens)."""
    params, router = unpack(cfg, variables)
    tokens = checked_tokens(tokens)
    positions = cache.lengths[:, None] + jnp.arange(tokens.shape[1], dtype=jnp.int32)[None, :]
    mask = cache_mask(positions, cache.max_len)
    x = embed(cfg, params, tokens)
    groups = dict(cache.groups)
    for group in groups:
        x, groups[group] = run_group(cfg, params, router, group, x, positions, mask, groups[group], cache.absorb)
    logits = head(cfg, params, rms_norm(x, params["norm"]["scale"], cfg.norm_eps))
    return cache.replace(groups=groups), logits, x


def check_prompts(tokens, lengths, cache: KVCache):
    """Shapes and (when concrete) values of a prefill batch; errors name the tensor and what was expected."""
    if tokens.ndim != 2 or tokens.shape[0] != cache.batch:
        raise ValueError(f"tokens: expected int [B={cache.batch}, T], got shape {tuple(tokens.shape)}")
    if tokens.shape[1] > cache.max_len:
        raise ValueError(f"tokens: prompt width T={tokens.shape[1]} exceeds the cache's max_len={cache.max_len}; "
                         "make the cache with a larger max_len")
    if tuple(lengths.shape) != (cache.batch,):
        raise ValueError(f"lengths: expected shape ({cache.batch},), got {tuple(lengths.shape)}")
    if not isinstance(lengths, jax.core.Tracer):
        host = np.asarray(lengths)
        if host.min() < 1 or host.max() > tokens.shape[1]:
            raise ValueError(f"lengths: every prompt length must be in [1, T={tokens.shape[1]}], got {host.tolist()}")


@functools.partial(jax.jit, static_argnums=0, static_argnames="all_logits", donate_argnames="cache")
def _prefill(cfg, variables, tokens, lengths, cache, all_logits):
    cache = cache.replace(lengths=jnp.zeros_like(cache.lengths))
    cache, logits, _ = extend(cfg, variables, cache, tokens)
    cache = cache.replace(lengths=lengths.astype(jnp.int32))
    if all_logits:
        return cache, logits
    return cache, jnp.take_along_axis(logits, (lengths - 1)[:, None, None], axis=1)[:, 0]


def prefill(cfg, variables, tokens, lengths, cache: KVCache, *, all_logits: bool = False):
    """Process right-padded prompts tokens [B,T] (row b has lengths[b] real tokens) from an empty cache.

    Returns (cache with lengths = `lengths`, logits): [B,V] at each prompt's last token, or [B,T,V] at every
    position with all_logits=True (positions past a prompt's length are padding). The cache is donated."""
    tokens, lengths = jnp.asarray(tokens), jnp.asarray(lengths)
    check_prompts(tokens, lengths, cache)
    return _prefill(cfg, variables, tokens.astype(jnp.int32), lengths, cache, all_logits=all_logits)


@functools.partial(jax.jit, static_argnums=0, donate_argnames="cache")
def _decode_step(cfg, variables, cache, tokens):
    cache, logits, _ = extend(cfg, variables, cache, tokens[:, None])
    return cache.replace(lengths=cache.lengths + 1), logits[:, 0]


def decode_step(cfg, variables, cache: KVCache, tokens):
    """Append one token per sequence, tokens [B], at position cache.lengths[b]. Returns (cache with lengths + 1,
    logits [B,V] for the next token). The cache is donated; a full cache is an error."""
    tokens = jnp.asarray(tokens)
    if tokens.shape != (cache.batch,):
        raise ValueError(f"tokens: expected int [B={cache.batch}] (one per sequence), got {tuple(tokens.shape)}")
    longest = int(jnp.max(cache.lengths))  # one small device->host read per step
    if longest >= cache.max_len:
        raise ValueError(f"cache: full (a sequence has {longest} tokens, max_len={cache.max_len}); make the cache "
                         "with a larger max_len")
    return _decode_step(cfg, variables, cache, tokens.astype(jnp.int32))
