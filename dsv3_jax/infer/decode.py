"""Cached entry points of the main model: `prefill` (a batch of right-padded prompts) and `decode_step` (one
token per sequence), both built on `extend` (T new tokens per sequence at per-row offsets).

They orchestrate only: every number comes from `DeepSeekV3.extend`, the model's own cached forward over the
same modules as training (model.py), so every trainable config decodes (each moe_impl, FP8 recipe and
attention kind) and the logits equal `DeepSeekV3(cfg).apply` on the whole sequence (tests/infer). The cache
layout (latent or per-head, V3 report §2.1.1) is chosen when the cache is made (cache.init_cache).
Legend: B batch, T new tokens, S cache slots, D model dim, V vocab.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dsv3_jax import param_tree as pt
from dsv3_jax.infer.cpu_dots import tokens_jit
from dsv3_jax.layer_split import LayerSplit, join_layers
from dsv3_jax.layers.kv_cache import KVCache
from dsv3_jax.model import DeepSeekV3
from dsv3_jax.quant.recipe import FP8_RECIPES


def model_variables(cfg, variables) -> dict:
    """The collections inference needs ({'params', 'router'[, 'fp8_meta']}, unboxed), checked: a model with
    router biases must come with them (they steer routing). A LayerSplit (layer_split.py) is joined again."""
    return join_layers(cfg, check_variables(cfg, variables))


def check_variables(cfg, variables):
    """model_variables without the join: the checked collections, a LayerSplit kept split."""
    split = isinstance(variables, LayerSplit)
    tree = variables.tree if split else variables
    if not isinstance(tree, dict) or pt.PARAMS not in tree:
        raise ValueError(f"variables: expected a dict with 'params' (and 'router'), got "
                         f"{sorted(tree) if isinstance(tree, dict) else type(tree).__name__}")
    out = {k: nn.unbox(v) for k, v in tree.items() if k in (pt.PARAMS, pt.ROUTER, pt.FP8_META) and v}
    if pt.router_bias_paths(cfg) and pt.MOE not in out.get(pt.ROUTER, {}):
        raise ValueError(f"variables['router']: missing {pt.MOE!r} biases; ModelConfig.router_bias=True needs "
                         "the router collection returned by DeepSeekV3.init / saved in TrainState.router")
    if FP8_RECIPES.get(cfg.fp8).stateful and pt.FP8_META not in out:
        raise ValueError(f"variables: missing the {pt.FP8_META!r} collection; ModelConfig.fp8={cfg.fp8!r} scales "
                         "every FP8 matmul from its trained amax histories (TrainState.variables() has them)")
    return LayerSplit(out) if split else out


def extend(cfg, variables, cache: KVCache, tokens, window: int | None = None):
    """Run tokens [B,T] at positions cache.lengths[b] + t through the model, writing their cache entries.
    window (static): a bound on every position, so attention reads only that many slots (DeepSeekV3.extend).

    Returns (cache with the SAME lengths, logits [B,T,V] fp32, hidden [B,T,D] before the final norm)."""
    logits, hidden, cache = DeepSeekV3(cfg).apply(model_variables(cfg, variables), tokens, cache, window,
                                                  method=DeepSeekV3.extend)
    return cache, logits, hidden


def final_logits(cfg, variables, hidden):
    """fp32 logits [..., V] of hidden states [..., D] taken before the final norm (extend's `hidden`)."""
    return DeepSeekV3(cfg).apply(model_variables(cfg, variables), hidden, method=DeepSeekV3.final_logits)


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


@tokens_jit(lambda cfg, variables, tokens, *a, **k: tokens, static_argnums=0, static_argnames="all_logits",
            donate_argnames="cache")
def _prefill(cfg, variables, tokens, lengths, cache, all_logits):
    cache = cache.replace(lengths=jnp.zeros_like(cache.lengths))
    # From an empty cache every position is below T: attention reads T slots, not all max_len.
    cache, logits, hidden = extend(cfg, variables, cache, tokens, window=tokens.shape[1])
    cache = cache.replace(lengths=lengths.astype(jnp.int32))
    if all_logits:
        return cache, logits
    # Only each prompt's last position goes through the final norm and the head; the [B, T, V] logits above
    # are then dead code, which XLA drops (the head over every position was a tenth of a batch-16 prefill).
    last = jnp.take_along_axis(hidden, (lengths - 1)[:, None, None], axis=1)  # [B, 1, D]
    return cache, final_logits(cfg, variables, last)[:, 0]


def prefill(cfg, variables, tokens, lengths, cache: KVCache, *, all_logits: bool = False):
    """Process right-padded prompts tokens [B,T] (row b has lengths[b] real tokens) from an empty cache.

    Returns (cache with lengths = `lengths`, logits): [B,V] at each prompt's last token, or [B,T,V] at every
    position with all_logits=True (positions past a prompt's length are padding). The cache is donated."""
    # Host inputs are checked on the host and go to the device with the call (no round trip to read them back).
    tokens, lengths = (a if isinstance(a, jax.Array) else np.asarray(a) for a in (tokens, lengths))
    check_prompts(tokens, lengths, cache)
    check_variables(cfg, variables)  # fail before tracing
    tokens = tokens if tokens.dtype == np.int32 else tokens.astype(np.int32)
    return _prefill(cfg, variables, tokens, lengths, cache, all_logits=all_logits)


@tokens_jit(lambda cfg, variables, cache, tokens: tokens, static_argnums=0, donate_argnames="cache")
def _decode_step(cfg, variables, cache, tokens):
    cache, logits, _ = extend(cfg, variables, cache, tokens[:, None])
    return cache.replace(lengths=cache.lengths + 1), logits[:, 0]


def decode_step(cfg, variables, cache: KVCache, tokens):
    """Append one token per sequence, tokens [B], at position cache.lengths[b]. Returns (cache with lengths + 1,
    logits [B,V] for the next token). The cache is donated; a full cache is an error."""
    tokens = jnp.asarray(tokens)
    if tokens.shape != (cache.batch,):
        raise ValueError(f"tokens: expected int [B={cache.batch}] (one per sequence), got {tuple(tokens.shape)}")
    longest = int(np.asarray(cache.lengths).max())  # one small device->host read per step (no reduce dispatched)
    if longest >= cache.max_len:
        raise ValueError(f"cache: full (a sequence has {longest} tokens, max_len={cache.max_len}); make the cache "
                         "with a larger max_len")
    return _decode_step(cfg, variables, cache, tokens.astype(jnp.int32))
