"""The bounded expert-parallel exchange: exact dispatch in rounds of at most C rows per (rank, expert) cell.

ModelConfig.ep_dispatch="rounds" (EP_EXCHANGES, ep_exchange.py). The other two exchanges size their receive
buffer for the worst case every rank can provably hit, X·n·min(k, El) rows (ep_exchange.py): at DeepSeek-V3's
training layout (X = 64 ranks, n = 4096 tokens, k = 8, El = 4) that is 1M rows of 7168 values per MoE layer,
32× the n·k rows a balanced step moves (docs/paper.md §8: the EP receive buffers are what made the compiled
step grow with the device count). DeepEP sizes its buffers from the real counts at run time; with static shapes
this exchange keeps every row (V3 report §2.1.2 "No Token-Dropping") by looping instead:

    round r:  for every destination expert e, send my rows r·C .. (r+1)·C-1 of e   (a [E, C, D] buffer)
              all_to_all over the expert axis                                   -> [X, El, C, D] received
              SwiGLU of local expert l on its X·C rows: a dense batched GEMM       [El, X·C, D] x [El, D, F]
              all_to_all back, and each row's result lands at its sorted slot
    rounds R = max over the expert axis of max_e ceil(counts_e / C)        (a while loop: 1 when balanced)

C = ceil(ROUND_CAPACITY_FACTOR · n·k / E) rows, twice a balanced cell. Per-round buffers are E·C rows, so
memory does not grow with the number of ranks. The backward (a custom_vjp) keeps only the inputs and reruns
each round under `jax.vjp` (recomputing the dispatched rows, the expert GEMMs and both all_to_alls), so no
round's buffers live between forward and backward. The local GEMM is a plain batched einsum (the same program
on CPU and GPU, so a compile-time plan on CPU has the GPU's memory shape, docs/paper.md §8); with `grouped`
(the grouped FP8 GEMM of quant/, or ragged_dot on accelerators) the X·C rows of each local expert are one
group of `gmm`.
Legend: n tokens on this rank, k experts per token, M = n·k sorted rows, E experts, X ranks, El = E/X local
experts, C rows per cell and round, D model dim, F expert hidden.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from dsv3_jax import sharding
from dsv3_jax.layers.moe import dispatch, ep_payload
from dsv3_jax.layers.moe.ep_exchange import EP_EXCHANGES

ROUND_CAPACITY_FACTOR = 2.0  # C = factor × the rows a perfectly balanced (rank, expert) cell holds


def round_capacity(n_rows: int, n_experts: int) -> int:
    """C: rows per (rank, expert) cell and round for M = n_rows sorted assignments over E experts."""
    return max(1, math.ceil(ROUND_CAPACITY_FACTOR * n_rows / n_experts))


def _cells(counts, rnd, cap: int, m: int):
    """Sorted-row index [E, C] of cell (e, i) in round `rnd` and whether it holds a row."""
    start = jnp.cumsum(counts) - counts
    i = jnp.arange(cap, dtype=jnp.int32)
    offset = rnd * cap + i[None, :]
    valid = offset < counts[:, None]
    return jnp.clip(start[:, None] + offset, 0, m - 1), valid


def _expert_ffn(rows, w1, w2, w3, dtype, grouped: bool, gmm):
    """SwiGLU of local expert l on rows [El, R, D] -> [El, R, D] (zero rows give zeros)."""
    el, r, d = rows.shape
    if grouped:
        sizes = jnp.full((el,), r, jnp.int32)
        out = dispatch.grouped_swiglu(rows.reshape(el * r, d), w1, w2, w3, sizes, dtype, gmm)
        return out.reshape(el, r, -1)

    def bmm(a, w):
        return jnp.einsum("erd,edf->erf", a.astype(dtype), w.astype(dtype),
                          preferred_element_type=jnp.float32).astype(dtype)
    return bmm(jax.nn.silu(bmm(rows, w1)) * bmm(rows, w3), w2)


def _round(send, w1, w2, w3, *, axis, n_ranks, dtype, payload, combine, grouped, gmm):
    """One round: send [E, C, D] (cell (e, i) = my i-th row of this round for expert e) -> results [E, C, D]."""
    e, cap, d = send.shape
    el = e // n_ranks
    move = lambda parts, plan, reverse: tuple(jax.lax.all_to_all(p, axis, 0, 0, tiled=True) for p in parts)
    recv = ep_payload.exchange(payload, move, False, send.reshape(e * cap, d), ())  # block s = from rank s
    rows = recv.reshape(n_ranks, el, cap, d).swapaxes(0, 1).reshape(el, n_ranks * cap, d)
    ys = _expert_ffn(rows, w1, w2, w3, dtype, grouped, gmm)
    ys = ys.reshape(el, n_ranks, cap, -1).swapaxes(0, 1).reshape(e * cap, -1)
    back = ep_payload.exchange("compute", move, True, ep_payload.combine_cast(ys, combine), ())
    return back.reshape(e, cap, -1).astype(dtype)


def _n_rounds(counts, cap: int, axis):
    """Rounds every rank of the expert axis runs: the fullest cell anywhere on the axis, in rounds of C."""
    mine = jnp.max((counts + cap - 1) // cap)
    return jax.lax.pmax(mine, axis)


def _like(grad, primal):
    """grad summed over the mesh axes it varies over and `primal` does not (the other batch axes: what
    autodiff's transpose of the implicit broadcast of the weights does for the other exchanges)."""
    extra = tuple(sorted(sharding.varying_axes(grad) - sharding.varying_axes(primal)))
    return jax.lax.psum(grad, extra) if extra else grad


def _make(cap: int, rnd_fn, axis: str):
    """The custom_vjp rounds loop over (xs [M, D], w1, w2, w3, counts [E])."""

    def forward(xs, w1, w2, w3, counts):
        m = xs.shape[0]

        def body(carry):
            r, out = carry
            idx, valid = _cells(counts, r, cap, m)
            send = jnp.where(valid[..., None], jnp.take(xs, idx, axis=0), 0).astype(xs.dtype)
            ys = rnd_fn(send, w1, w2, w3)
            out = out.at[jnp.where(valid, idx, m)].set(ys.astype(out.dtype), mode="drop")
            return r + 1, out

        # The loop's results vary over the expert axis (they come back through all_to_all) and like its inputs.
        out = sharding.vary(sharding.vary_like(jnp.zeros(xs.shape[:1] + (w2.shape[-1],), xs.dtype), xs, counts,
                                               w1, w2, w3), (axis,))
        rounds = _n_rounds(counts, cap, axis)
        r0 = sharding.vary_like(jnp.zeros((), jnp.int32), rounds)
        return jax.lax.while_loop(lambda c: c[0] < rounds, body, (r0, out))[1]

    @jax.custom_vjp
    def run(xs, w1, w2, w3, counts):
        return forward(xs, w1, w2, w3, counts)

    def fwd(xs, w1, w2, w3, counts):
        return forward(xs, w1, w2, w3, counts), (xs, w1, w2, w3, counts)

    def bwd(res, g):
        xs, w1, w2, w3, counts = res
        m = xs.shape[0]
        # The weights vary like the tokens inside the loop, so no round sums its weight gradient over the
        # other batch axes; the sum happens once, after the last round (_like), in float32.
        ws = sharding.vary(sharding.vary_like((w1, w2, w3), xs, g, counts), (axis,))

        def body(carry):
            r, dxs, dws = carry
            idx, valid = _cells(counts, r, cap, m)
            send = jnp.where(valid[..., None], jnp.take(xs, idx, axis=0), 0).astype(xs.dtype)
            gy = jnp.where(valid[..., None], jnp.take(g, idx, axis=0), 0).astype(g.dtype)
            _, pull = jax.vjp(rnd_fn, send, *ws)
            dsend, *dw = pull(gy)
            dxs = dxs.at[jnp.where(valid, idx, m)].add(dsend.astype(dxs.dtype), mode="drop")
            return r + 1, dxs, tuple(a + b.astype(a.dtype) for a, b in zip(dws, dw))

        rounds = _n_rounds(counts, cap, axis)
        zeros = sharding.vary_like((jnp.zeros_like(xs), tuple(jnp.zeros(w.shape, jnp.float32) for w in ws)),
                                   *ws)
        r0 = sharding.vary_like(jnp.zeros((), jnp.int32), rounds)
        _, dxs, dws = jax.lax.while_loop(lambda c: c[0] < rounds, body, (r0,) + zeros)
        return (_like(dxs, xs),) + tuple(_like(dw, w).astype(w.dtype) for dw, w in zip(dws, (w1, w2, w3))) + (None,)

    run.defvjp(fwd, bwd)
    return run


@EP_EXCHANGES.register("rounds")
def via_rounds(xs, sorted_experts, counts, w1, w2, w3, *, axis: str, n_ranks: int, capacity: int, dtype,
               payload: str, combine: str, grouped: bool, native: bool, gmm=None):
    """xs [M, D] sorted by expert with per-expert counts [E] -> expert outputs [M, D] (same order), in rounds
    of C rows per (rank, expert) cell. `sorted_experts`, `capacity` (the worst-case bound the other exchanges
    allocate) and `native` are unused."""
    del sorted_experts, capacity, native
    cap = round_capacity(xs.shape[0], counts.shape[0])
    rnd = functools.partial(_round, axis=axis, n_ranks=n_ranks, dtype=dtype, payload=payload, combine=combine,
                            grouped=grouped, gmm=gmm)
    return _make(cap, rnd, axis)(xs, w1, w2, w3, counts)
