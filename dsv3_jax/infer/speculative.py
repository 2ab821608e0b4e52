"""MTP speculative decoding (V3 report §5.4.3: the MTP module drafts, the main model verifies; 85-90%
acceptance of the second token and 1.8x tokens per second for DeepSeek-V3).

State between rounds, per row: the main cache holds positions < n, `pending` = t_n (already emitted, not yet
in the cache), `drafts` = the MTP guesses for t_{n+1..n+D}. One round:
  1. verify: the main model runs [t_n, d_1..d_D] at positions n..n+D in ONE forward with the cache;
  2. accept (acceptance.py): a drafts, then one more token from the main model (greedy or the rejection rule);
  3. roll back: lengths = n + a + 1 (entries of rejected drafts become stale slots, overwritten later);
  4. draft: the MTP modules rerun their last 2D positions with the confirmed tokens and draft again.
Each round emits a + 1 tokens for one main-model forward. Greedy speculative output equals plain greedy.

Legend: B batch, T prompt width, D MTP depth (draft length), W = 2D window, V vocab.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np

from dsv3_jax.infer import acceptance, emit, mtp_draft
from dsv3_jax.infer.cache import MTP_GROUP, KVCache, init_cache
from dsv3_jax.infer.cpu_dots import tokens_jit
from dsv3_jax.infer.decode import check_prompts, extend, final_logits
from dsv3_jax.infer.generate import cache_length, pad_prompts
from dsv3_jax.infer.sampling import SamplingParams, sample, token_probs


@flax.struct.dataclass
class SpecState:
    cache: KVCache  # main model, lengths = n
    mtp_kv: dict  # MTP caches {name: [D, B, S, ...]}
    pending: jnp.ndarray  # [B] t_n
    drafts: jnp.ndarray  # [B, D] guesses for t_{n+1..n+D}
    q: jnp.ndarray  # [B, D, V] the distributions the drafts were drawn from
    h_win: jnp.ndarray  # [B, W, dim] h^0 at positions n-W .. n-1
    t_win: jnp.ndarray  # [B, W] tokens at positions n-W+1 .. n


def take_window(x, start, width: int):
    """x [B, L, ...] -> x[b, start[b] + i] for i < width, indices clipped to [0, L)."""
    idx = jnp.clip(start[:, None] + jnp.arange(width)[None, :], 0, x.shape[1] - 1)
    idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=1)


@tokens_jit(lambda cfg, variables, tokens, *a: tokens, static_argnums=(0, 6), donate_argnames=("cache", "mtp_kv"))
def spec_prefill(cfg, variables, tokens, lengths, cache: KVCache, mtp_kv, sp: SamplingParams, rng):
    """Prefill the main model and the MTP caches on prompts [B,T]; emit t_n (n = lengths) and draft D tokens."""
    b, t = tokens.shape
    d, rows, last = cfg.mtp_depth, jnp.arange(b), lengths - 1
    # From an empty cache every position is below T (window), and only the last positions' logits are read.
    cache, _, h = extend(cfg, variables, cache.replace(lengths=jnp.zeros_like(lengths)), tokens, window=t)
    k_first, k_draft = jax.random.split(rng)
    pending = sample(k_first, final_logits(cfg, variables, h[rows, last]), sp)
    with_pending = jnp.concatenate([tokens, jnp.zeros((b, d + 1), tokens.dtype)], axis=1).at[rows, lengths].set(
        pending)  # [B, T+D+1]: t_0 .. t_n, then room for the drafts
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    drafts, q, mtp_kv = mtp_draft.draft(cfg, variables, mtp_kv, h, with_pending[:, 1:], positions, last,
                                        k_draft, sp)
    start = lengths - 2 * d
    state = SpecState(cache=cache.replace(lengths=lengths), mtp_kv=mtp_kv, pending=pending, drafts=drafts, q=q,
                      h_win=take_window(h, start, 2 * d), t_win=take_window(with_pending, start + 1, 2 * d))
    return state


@tokens_jit(lambda cfg, variables, state, *a: (state.pending, state.drafts), static_argnums=(0, 3),
            donate_argnames="state")
def spec_round(cfg, variables, state: SpecState, sp: SamplingParams, rng):
    """One verify / accept / roll back / draft round. Returns (state, emitted [B, D+1], a [B]): row b emitted
    emitted[b, :a[b] + 1] (a[b] accepted drafts, then the main model's token)."""
    d, n = cfg.mtp_depth, state.cache.lengths
    rows = jnp.arange(n.shape[0])
    k_accept, k_draft = jax.random.split(rng)
    verify = jnp.concatenate([state.pending[:, None], state.drafts], axis=1)  # positions n .. n+D
    cache, logits, h = extend(cfg, variables, state.cache, verify)
    if sp.greedy:
        a, nxt = acceptance.greedy_accept(logits, state.drafts)
    else:
        a, nxt = acceptance.rejection_accept(k_accept, token_probs(logits, sp), state.q, state.drafts)
    emitted = jnp.concatenate([state.drafts, state.drafts[:, :1]], axis=1).at[rows, a].set(nxt)
    n_new = n + a + 1
    h_win = take_window(jnp.concatenate([state.h_win, h], axis=1), a + 1, 2 * d)  # positions n_new-W .. n_new-1
    t_win = take_window(jnp.concatenate([state.t_win, emitted], axis=1), a + 1, 2 * d)  # .. t_{n_new}
    positions = n_new[:, None] - 2 * d + jnp.arange(2 * d, dtype=jnp.int32)[None, :]
    ahead = jnp.concatenate([t_win, jnp.zeros((n.shape[0], d), t_win.dtype)], axis=1)
    last = jnp.full_like(n, 2 * d - 1)
    drafts, q, mtp_kv = mtp_draft.draft(cfg, variables, state.mtp_kv, h_win, ahead, positions, last,
                                        k_draft, sp)
    state = SpecState(cache=cache.replace(lengths=n_new), mtp_kv=mtp_kv, pending=nxt, drafts=drafts, q=q,
                      h_win=h_win, t_win=t_win)
    return state, emitted, a


@dataclasses.dataclass
class SpecStats:
    depth: int  # D drafts per round
    rounds: int = 0  # row-rounds: main-model verification forwards, counted per active sequence
    emitted: int = 0  # tokens emitted by rounds (the prefill's first token not counted)
    accepted: np.ndarray = dataclasses.field(default=None)  # [D] rounds whose draft j+1 was accepted

    def __post_init__(self):
        if self.accepted is None:
            self.accepted = np.zeros(self.depth, np.int64)

    @property
    def acceptance_rate(self) -> float:
        """Accepted drafts / drafted tokens."""
        return float(self.accepted.sum()) / max(self.rounds * self.depth, 1)

    @property
    def depth_acceptance(self) -> list[float]:
        """P(draft j accepted | draft j-1 accepted); j = 1 is the paper's second-token acceptance rate."""
        prev = np.concatenate([[self.rounds], self.accepted[:-1]])
        return [float(a) / max(int(p), 1) for a, p in zip(self.accepted, prev)]

    @property
    def tokens_per_step(self) -> float:
        """Tokens emitted per main-model forward (1 for plain decoding)."""
        return self.emitted / max(self.rounds, 1)


@flax.struct.dataclass
class SpecLoop:
    spec: SpecState
    out: emit.Emitted
    rng: jnp.ndarray
    rounds: jnp.ndarray  # int32 []: row-rounds of active sequences
    emitted: jnp.ndarray  # int32 []: tokens the rounds emitted for active sequences
    accepted: jnp.ndarray  # int32 [D]: active row-rounds whose draft j+1 was accepted


@tokens_jit(lambda cfg, variables, loop, *a: (loop.spec.pending, loop.spec.drafts), static_argnums=(0, 3, 4),
            donate_argnames="loop")
def run_rounds(cfg, variables, loop: SpecLoop, rounds: int, sp: SamplingParams, stop):
    """Up to `rounds` verify/accept/draft rounds on the device, ending early when every sequence is done."""
    d = cfg.mtp_depth

    def body(lp):
        rng, key = jax.random.split(lp.rng)
        active = ~lp.out.done
        spec, emitted, a = spec_round(cfg, variables, lp.spec, sp, key)
        out = emit.take(lp.out, emitted, a + 1, stop)
        n = active.astype(jnp.int32)
        accepted = lp.accepted + jnp.sum((a[:, None] > jnp.arange(d)[None, :]) * n[:, None], axis=0)
        return SpecLoop(spec=spec, out=out, rng=rng, rounds=lp.rounds + jnp.sum(n),
                        emitted=lp.emitted + jnp.sum((a + 1) * n), accepted=accepted)

    return emit.until_done(body, loop, rounds)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _first_record(pending, max_new: int, pad_id: int, d: int, stop):
    """(the record holding the prefill's token pending [B], zero rounds, emitted and accepted [D] counters), made
    by one program instead of a dozen eager ops; its outputs are distinct buffers (the loop state is donated)."""
    b = pending.shape[0]
    out = emit.take_one(emit.Emitted.empty(b, max_new, pad_id), pending, stop)
    return out, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32), jnp.zeros((d,), jnp.int32)


def speculative_generate(cfg, variables, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                         sampling: SamplingParams = SamplingParams(), stop_tokens: Sequence[int] = (),
                         seed: int = 0, absorb: bool | None = None, pad_id: int = 0,
                         on_tokens: Callable[[list[list[int]]], None] | None = None, stream_every: int = 8):
    """Like generate.generate, with MTP drafts verified D+1 at a time, all rounds on the device. Returns
    (GenerateResult, SpecStats). on_tokens receives, after the prefill and then every `stream_every` rounds,
    the list of tokens each row emitted."""
    d = cfg.mtp_depth
    if d < 1:
        raise ValueError("ModelConfig.mtp_depth: speculative decoding needs MTP modules (mtp_depth >= 1), got 0")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens: must be >= 1, got {max_new_tokens}")
    tokens, lengths = pad_prompts(prompts, pad_id)
    b = len(prompts)
    max_len = cache_length(cfg, tokens.shape[1], max_new_tokens + d + 1)
    cache = init_cache(cfg, b, max_len, absorb=absorb)
    mtp_kv = init_cache(cfg, b, max_len, absorb=absorb, layers={MTP_GROUP: d}).groups[MTP_GROUP]
    check_prompts(tokens, lengths, cache)  # host arrays: checked without a device round trip
    rng = jax.random.key(seed)
    rng, key = jax.random.split(rng)
    state = spec_prefill(cfg, variables, tokens, lengths, cache, mtp_kv, sampling, key)
    stop = emit.stop_array(stop_tokens)
    out, rounds0, emitted0, accepted0 = _first_record(state.pending, max_new_tokens, pad_id, d, stop)
    loop = SpecLoop(spec=state, out=out, rng=rng, rounds=rounds0, emitted=emitted0, accepted=accepted0)
    if on_tokens is not None:
        on_tokens(emit.new_since(out, np.zeros(b, np.int32)))
    rounds = stream_every if on_tokens is not None else max_new_tokens
    while not np.asarray(loop.out.done).all():
        before = np.asarray(loop.out.count)
        loop = run_rounds(cfg, variables, loop, rounds, sampling, stop)
        if on_tokens is not None:
            on_tokens(emit.new_since(loop.out, before))
    stats = SpecStats(d, rounds=int(loop.rounds), emitted=int(loop.emitted),
                      accepted=np.asarray(loop.accepted, np.int64))
    return emit.GenerateResult.of(loop.out), stats
