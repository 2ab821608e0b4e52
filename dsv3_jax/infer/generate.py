"""Plain autoregressive generation with the whole loop on the device: prefill the prompts and sample the first
token, then one jitted `lax.while_loop` of (decode the last token, sample, record) with sampling, stop tokens
and max_new_tokens evaluated on the device (emit.py), so no token makes a host round trip.

Streaming: with `on_tokens`, the loop runs `stream_every` steps per device call and `on_tokens(new)` gets,
per sequence, the list of tokens it took in those steps (empty once it has stopped; the first list also holds
the first token); without it, one call runs to the end. Every sequence stops at a stop token (kept as its last
generated token) or after max_new_tokens.
For speed on small models pass `split_layers(cfg, variables)` (layer_split.py: the layers of an unrolled stack
as separate arrays, so the decoding matmuls read the weights in place); it is a copy, made once by the caller.
Legend: B batch, T prompt width, V vocab.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np

from dsv3_jax.infer import emit
from dsv3_jax.infer.cache import init_cache
from dsv3_jax.infer.cpu_dots import tokens_jit
from dsv3_jax.infer.decode import extend, prefill
from dsv3_jax.infer.emit import Emitted, GenerateResult
from dsv3_jax.infer.sampling import SamplingParams, sample
from dsv3_jax.layers.kv_cache import KVCache

__all__ = ["GenerateResult", "generate", "pad_prompts", "cache_length"]


def pad_prompts(prompts: Sequence[Sequence[int]], pad_id: int = 0, multiple: int = 8):
    """Right-pad token lists into tokens [B, T] (T rounded up to `multiple`, to reuse compiled shapes) and
    lengths [B]. Every prompt needs at least one token (e.g. BOS)."""
    if len(prompts) == 0:
        raise ValueError("prompts: expected at least one prompt")
    lengths = np.asarray([len(p) for p in prompts], np.int32)
    if lengths.min() < 1:
        raise ValueError(f"prompts: prompt {int(np.argmin(lengths))} is empty; start it with a token (e.g. BOS)")
    width = -(-int(lengths.max()) // multiple) * multiple
    tokens = np.full((len(prompts), width), pad_id, np.int32)
    for b, p in enumerate(prompts):
        tokens[b, :len(p)] = np.asarray(p, np.int32)
    return tokens, lengths


def cache_length(cfg, prompt_width: int, needed: int) -> int:
    """Slots for a prompt width plus `needed` more; errors name the limit (ModelConfig.max_seq_len)."""
    total = prompt_width + needed
    if total > cfg.max_seq_len:
        raise ValueError(f"prompts: padded prompt width {prompt_width} + {needed} generated/draft slots = {total} "
                         f"exceeds ModelConfig.max_seq_len={cfg.max_seq_len}; shorten the prompt or "
                         "max_new_tokens")
    return total


@flax.struct.dataclass
class LoopState:
    cache: KVCache  # every position before `token`
    token: jnp.ndarray  # [B] the last token taken, not yet run through the model
    out: Emitted
    rng: jnp.ndarray


def _take_sampled(s_rng, logits, out: Emitted, sp: SamplingParams, stop):
    """(rng, token [B], out): sample the next token of every row from logits [B, V] and offer it to `out`."""
    rng, key = jax.random.split(s_rng)
    tok = sample(key, logits, sp)
    return rng, tok, emit.take_one(out, tok, stop)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def first_token(logits, max_new: int, pad_id: int, sp: SamplingParams, stop, seed):
    """(token [B], out, rng) after the first generated token, sampled from the prefill's logits [B, V] (no model
    call) with the key of `seed`; the empty record and the key are made in the same program (one dispatch)."""
    out = Emitted.empty(logits.shape[0], max_new, pad_id)
    rng, tok, out = _take_sampled(jax.random.key(seed), logits, out, sp, stop)
    return tok, out, rng


@tokens_jit(lambda cfg, variables, state, *a: state.token, static_argnums=(0, 3, 4), donate_argnames="state")
def run_steps(cfg, variables, state: LoopState, steps: int, sp: SamplingParams, stop):
    """Up to `steps` (decode, sample, record) iterations, ending early when every sequence is done. Each
    iteration first runs the pending token through the model, so the loop ends on a sampled token and no step
    decodes a token nobody reads; no branch sits around the decode either (a lax.cond there made XLA copy
    the whole KV cache in and out of it at every step)."""
    def body(s):
        cache, logits, _ = extend(cfg, variables, s.cache, s.token[:, None])
        rng, tok, out = _take_sampled(s.rng, logits[:, 0], s.out, sp, stop)
        return LoopState(cache=cache.replace(lengths=cache.lengths + 1), token=tok, out=out, rng=rng)

    return emit.until_done(body, state, steps)


def start_loop(cfg, variables, prompts: Sequence[Sequence[int]], max_new_tokens: int, sampling: SamplingParams,
               stop, seed: int = 0, absorb: bool | None = None, pad_id: int = 0) -> LoopState:
    """The loop's first state: the prompts prefilled into a new cache and the first token sampled (stop: the
    int32 ids of emit.stop_array). run_steps donates it."""
    tokens, lengths = pad_prompts(prompts, pad_id)
    cache = init_cache(cfg, len(prompts), cache_length(cfg, tokens.shape[1], max_new_tokens), absorb=absorb)
    cache, logits = prefill(cfg, variables, tokens, lengths, cache)
    # jax.random.key(seed) keeps seed's low 32 bits (without x64); passed as uint32 the key is the same.
    token, out, rng = first_token(logits, max_new_tokens, pad_id, sampling, stop, np.uint32(int(seed) % 2**32))
    return LoopState(cache=cache, token=token, out=out, rng=rng)


def generate(cfg, variables, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
             sampling: SamplingParams = SamplingParams(), stop_tokens: Sequence[int] = (), seed: int = 0,
             absorb: bool | None = None, pad_id: int = 0,
             on_tokens: Callable[[list[list[int]]], None] | None = None, stream_every: int = 16) -> GenerateResult:
    """Generate up to max_new_tokens per prompt (token-id lists of different lengths) with the cached decoder."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens: must be >= 1, got {max_new_tokens}")
    if stream_every < 1:
        raise ValueError(f"stream_every: must be >= 1, got {stream_every}")
    stop = emit.stop_array(stop_tokens)
    state = start_loop(cfg, variables, prompts, max_new_tokens, sampling, stop, seed, absorb, pad_id)
    steps = stream_every if on_tokens is not None else max_new_tokens - 1
    before = np.zeros(len(prompts), np.int32)  # the first token goes out with the first chunk
    while True:
        state = run_steps(cfg, variables, state, steps, sampling, stop)
        if on_tokens is not None:
            on_tokens(emit.new_since(state.out, before))
            before = np.asarray(state.out.count)
        if np.asarray(state.out.done).all():
            return GenerateResult.of(state.out)
