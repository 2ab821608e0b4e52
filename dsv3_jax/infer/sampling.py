"""Next-token distributions: greedy, temperature, top-k and top-p (nucleus) filtering.

Order (as Hugging Face's generation): logits / temperature, then top-k, then top-p on what top-k left.
`token_probs` is the exact distribution `sample` draws from; speculative sampling needs it for both the
draft (q) and the main model (p). temperature == 0 means greedy: a one-hot at the argmax (lowest id on ties).

Legend: V vocab; leading axes are batch-like.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = no top-k filter
    top_p: float = 1.0  # 1 = no nucleus filter

    def __post_init__(self):
        if not self.temperature >= 0:
            raise ValueError(f"SamplingParams.temperature: must be >= 0 (0 = greedy), got {self.temperature}")
        if not (isinstance(self.top_k, int) and self.top_k >= 0):
            raise ValueError(f"SamplingParams.top_k: must be an int >= 0 (0 = off), got {self.top_k!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams.top_p: must be in (0, 1] (1 = off), got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def argmax(logits):
    """The index of the largest logit of every row [..., V] (int32): the lowest on ties, the first NaN if any,
    as jnp.argmax. Computed as two reductions (the row maximum, then the lowest index holding it), which
    XLA:CPU vectorizes; jnp.argmax's single (value, index) reduction it runs element by element, 146 µs of a
    5 ms batch-16 decoding step over [16, 4096] logits against 68 µs for this (README "Speed")."""
    top = jnp.max(logits, axis=-1, keepdims=True)
    hit = (logits == top) | jnp.isnan(logits)  # a NaN maximum equals nothing; jnp.argmax picks the first NaN
    ids = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
    return jnp.min(jnp.where(hit, ids, logits.shape[-1]), axis=-1)


def top_k_mask(logits, k: int):
    """True for the tokens whose logit is >= the k-th largest (ties at the threshold are all kept)."""
    if k <= 0 or k >= logits.shape[-1]:
        return jnp.ones(logits.shape, bool)
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    return logits >= kth


def top_p_mask(logits, p: float):
    """True for the smallest set of most likely tokens whose probability reaches p: a token is kept when the
    probability of the tokens ranked before it (descending, lower id first on ties) is < p."""
    if p >= 1.0:
        return jnp.ones(logits.shape, bool)
    order = jnp.argsort(-logits, axis=-1, stable=True)
    probs = jnp.take_along_axis(jax.nn.softmax(logits.astype(jnp.float32), axis=-1), order, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs
    keep_sorted = before < p
    return jnp.put_along_axis(jnp.zeros(logits.shape, bool), order, keep_sorted, axis=-1, inplace=False)


def filtered_logits(logits, sp: SamplingParams):
    """logits / temperature with the tokens outside top-k / top-p set to -inf (not for greedy)."""
    x = logits.astype(jnp.float32) / sp.temperature
    x = jnp.where(top_k_mask(x, sp.top_k), x, -jnp.inf)
    return jnp.where(top_p_mask(x, sp.top_p), x, -jnp.inf)


def token_probs(logits, sp: SamplingParams):
    """The distribution [..., V] that `sample` draws from."""
    if sp.greedy:
        return jax.nn.one_hot(argmax(logits), logits.shape[-1], dtype=jnp.float32)
    return jax.nn.softmax(filtered_logits(logits, sp), axis=-1)


def sample(rng, logits, sp: SamplingParams):
    """One token id per row of logits [..., V] (int32); independent draws per row."""
    if sp.greedy:
        return argmax(logits)
    return jax.random.categorical(rng, filtered_logits(logits, sp), axis=-1).astype(jnp.int32)
