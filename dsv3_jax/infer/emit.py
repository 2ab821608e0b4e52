"""On-device bookkeeping of generated tokens: per sequence, the tokens emitted so far, stop tokens and the
max_new_tokens limit, kept in arrays so the whole generation loop runs inside one jitted lax.while_loop.

Rules (the same for plain and speculative decoding): a sequence takes tokens in order until it takes a stop
token (kept as its last generated token) or reaches max_new_tokens; then it is done and takes nothing more.
Legend: B batch, N max_new_tokens, J tokens offered per sequence in one step (1 plain, D+1 speculative).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np


@flax.struct.dataclass
class Emitted:
    tokens: jnp.ndarray  # [B, N] int32, pad after each sequence's end
    count: jnp.ndarray  # [B] int32 tokens taken
    stopped: jnp.ndarray  # [B] bool: took a stop token
    done: jnp.ndarray  # [B] bool: stopped or full

    @classmethod
    def empty(cls, batch: int, max_new: int, pad_id: int) -> "Emitted":
        return cls(tokens=jnp.full((batch, max_new), pad_id, jnp.int32), count=jnp.zeros((batch,), jnp.int32),
                   stopped=jnp.zeros((batch,), bool), done=jnp.zeros((batch,), bool))


def stop_array(stop_tokens: Sequence[int]) -> np.ndarray:
    """The stop ids as a sorted int32 array (-1 alone when there are none: no token id matches it)."""
    ids = sorted({int(s) for s in stop_tokens})
    return np.asarray(ids or [-1], np.int32)


def take(e: Emitted, new, n_new, stop) -> Emitted:
    """Offer new [B, J] tokens, of which row b has n_new[b] valid ones; every row takes them in order while it
    is not done. stop: int32 [S] stop ids."""
    rows = jnp.arange(new.shape[0])
    max_new = e.tokens.shape[1]
    tokens, count, stopped, done = e.tokens, e.count, e.stopped, e.done
    for j in range(new.shape[1]):
        valid = (j < n_new) & ~done
        tok = new[:, j]
        tokens = tokens.at[rows, jnp.where(valid, count, max_new)].set(tok, mode="drop")
        count = count + valid.astype(jnp.int32)
        stopped = stopped | (valid & jnp.any(tok[:, None] == stop[None, :], axis=-1))
        done = stopped | (count >= max_new)
    return Emitted(tokens=tokens, count=count, stopped=stopped, done=done)


def take_one(e: Emitted, tok, stop) -> Emitted:
    """take() of one token per row, tok [B] (plain decoding's step; the prefill's token of either loop)."""
    return take(e, tok[:, None], jnp.ones_like(tok), stop)


def until_done(body, state, steps: int):
    """lax.while_loop of state = body(state), at most `steps` times and only while some sequence of
    state.out (an Emitted) is not done: the shared skeleton of the on-device generation loops."""
    def cond(carry):
        i, s = carry
        return (i < steps) & ~jnp.all(s.out.done)
    return jax.lax.while_loop(cond, lambda c: (c[0] + 1, body(c[1])), (jnp.zeros((), jnp.int32), state))[1]


@dataclasses.dataclass
class GenerateResult:
    tokens: np.ndarray  # [B, max_new_tokens] generated ids; `pad_id` after each sequence's end
    num_tokens: np.ndarray  # [B] generated tokens per sequence (a stop token included)
    stopped: np.ndarray  # [B] bool: ended on a stop token (else on max_new_tokens)

    def sequences(self) -> list[np.ndarray]:
        return [self.tokens[b, :n] for b, n in enumerate(self.num_tokens)]

    @classmethod
    def of(cls, e: Emitted) -> "GenerateResult":
        return cls(np.asarray(e.tokens), np.asarray(e.count), np.asarray(e.stopped))


def new_since(e: Emitted, before: np.ndarray) -> list[list[int]]:
    """Per row, the tokens taken since counts `before` (host lists, for streaming)."""
    tokens, count = np.asarray(e.tokens), np.asarray(e.count)
    return [tokens[b, before[b]:count[b]].tolist() for b in range(len(count))]
