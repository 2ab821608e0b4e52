"""Plain autoregressive generation: prefill the prompts, then a Python loop over a jitted sample + decode step.

Stops per sequence at a stop token (kept as its last generated token) or after max_new_tokens; the loop ends
when every sequence has stopped. `on_tokens(new)` is called after each step with, per sequence, the list of
tokens it took in that step (empty once it has stopped), for streaming.

Legend: B batch, T prompt width, V vocab.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Sequence

import jax
import numpy as np

from dsv3_jax.infer.cache import init_cache
from dsv3_jax.infer.decode import decode_step, prefill
from dsv3_jax.infer.sampling import SamplingParams, sample


@dataclasses.dataclass
class GenerateResult:
    tokens: np.ndarray  # [B, max_new_tokens] generated ids; `pad_id` after each sequence's end
    num_tokens: np.ndarray  # [B] generated tokens per sequence (a stop token included)
    stopped: np.ndarray  # [B] bool: ended on a stop token (else on max_new_tokens)

    def sequences(self) -> list[np.ndarray]:
        return [self.tokens[b, :n] for b, n in enumerate(self.num_tokens)]


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


@functools.partial(jax.jit, static_argnums=2)
def _sample(rng, logits, sp):
    return sample(rng, logits, sp)


class StopTracker:
    """Per-sequence bookkeeping of generated tokens, stop tokens and max_new_tokens."""

    def __init__(self, batch: int, max_new_tokens: int, stop_tokens: Sequence[int], pad_id: int):
        self.tokens = np.full((batch, max_new_tokens), pad_id, np.int32)
        self.count = np.zeros(batch, np.int32)
        self.stopped = np.zeros(batch, bool)
        self.stop = np.asarray(sorted(set(int(s) for s in stop_tokens)), np.int32)
        self.max_new = max_new_tokens

    @property
    def active(self) -> np.ndarray:
        return ~self.stopped & (self.count < self.max_new)

    def add(self, b: int, toks: Sequence[int]) -> list[int]:
        """Append tokens to row b until it stops; returns the tokens actually taken."""
        taken = []
        for t in toks:
            if not (not self.stopped[b] and self.count[b] < self.max_new):
                break
            self.tokens[b, self.count[b]] = t
            self.count[b] += 1
            taken.append(int(t))
            self.stopped[b] = bool(np.isin(t, self.stop))
        return taken

    def result(self) -> GenerateResult:
        return GenerateResult(self.tokens, self.count.copy(), self.stopped.copy())


def generate(cfg, variables, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
             sampling: SamplingParams = SamplingParams(), stop_tokens: Sequence[int] = (), seed: int = 0,
             absorb: bool | None = None, pad_id: int = 0,
             on_tokens: Callable[[list[list[int]]], None] | None = None) -> GenerateResult:
    """Generate up to max_new_tokens per prompt (token-id lists of different lengths) with the cached decoder."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens: must be >= 1, got {max_new_tokens}")
    tokens, lengths = pad_prompts(prompts, pad_id)
    cache = init_cache(cfg, len(prompts), cache_length(cfg, tokens.shape[1], max_new_tokens), absorb=absorb)
    cache, logits = prefill(cfg, variables, tokens, lengths, cache)
    tracker = StopTracker(len(prompts), max_new_tokens, stop_tokens, pad_id)
    rng = jax.random.key(seed)
    while True:
        rng, key = jax.random.split(rng)
        tok = _sample(key, logits, sampling)
        host, active = np.asarray(tok), tracker.active
        new = [tracker.add(b, [host[b]]) if active[b] else [] for b in range(len(prompts))]
        if on_tokens is not None:
            on_tokens(new)
        if not tracker.active.any():
            return tracker.result()
        cache, logits = decode_step(cfg, variables, cache, tok)
