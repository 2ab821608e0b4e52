"""The two token exchanges of expert parallelism, run per rank inside shard_map (ep.py).

Registry: EP_EXCHANGES (ModelConfig.ep_dispatch) = {"all_to_all", "ragged"}; "auto" is resolved at set-up
(`resolve_exchange`, called by ep.make_expert_parallel).

Both start from this rank's M = n·k (token, expert) assignments sorted by expert, hence by destination rank
(rank r holds experts [r·El, (r+1)·El)), and both give back, in that sorted order, each assignment's expert
output. Nothing is ever dropped (V3 report §2.1.2 "No Token-Dropping").

* `via_all_to_all`: pads each destination's rows to a fixed capacity C and uses `jax.lax.all_to_all`
  (XLA:CPU has no ragged_all_to_all, docs/paper.md §7). C = n·min(k, El) is a bound that provably holds: a
  token's k experts are distinct, so at most min(k, El) of them live on any one rank; the worst case (every
  local token sending all its assignments to the same rank) fits. The price is X·C rows per rank on the
  wire and in the expert GEMM instead of ~n·k.
* `via_ragged`: exchanges per-expert counts (all_gather of [E] ints), then moves exactly the rows with
  `jax.lax.ragged_all_to_all` (GPU/TPU). The receive buffer still has the worst-case size X·n·min(k, El)
  (shapes are static), but only received rows are written, moved and multiplied (ragged_dot group sizes).
  On CPU `emulated_ragged_all_to_all` (same contract, built from all_to_all) stands in, so the offset
  arithmetic is tested on fake devices.

Legend: n tokens on this rank, k experts per token, M = n·k, X ranks on the expert axis, El = E/X local
experts, C capacity per destination, R = X·C receive rows, D model dim.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from dsv3_jax import sharding
from dsv3_jax.layers.moe import dispatch, ep_payload
from dsv3_jax.registry import Registry

EP_EXCHANGES = Registry("ep_dispatch", "expert-parallel exchange", aliases=("auto",))


def resolve_exchange(ep_dispatch: str, n_ranks: int, native: bool) -> str:
    """"local" (nothing to exchange), "all_to_all" or "ragged" for ModelConfig.ep_dispatch: "auto" is the native
    ragged_all_to_all where the platform has one, else the capacity all_to_all, and "local" at one rank."""
    EP_EXCHANGES.check(ep_dispatch)
    if ep_dispatch != "auto":
        return ep_dispatch
    if n_ranks == 1:
        return "local"
    return "ragged" if native else "all_to_all"


def _excl_cumsum(a, axis=0):
    return jnp.cumsum(a, axis=axis) - a


def local_experts(rows, local_ids, w1, w2, w3, dtype, grouped: bool, gmm=None):
    """SwiGLU of each received row with its local expert; rows with id El (empty slots) give zeros.

    grouped: sort + `dispatch.grouped_swiglu` (ragged_dot, or `gmm`: the FP8 grouped GEMM; only real rows counted) — else the blocked
    batched-matmul path of dispatch.py (fast on XLA:CPU; empty slots cost compute but are masked)."""
    el = w1.shape[0]
    valid = local_ids < el
    if grouped:
        order = jnp.argsort(local_ids, stable=True)
        sizes = jnp.zeros((el + 1,), jnp.int32).at[local_ids].add(1)[:el]
        ys = dispatch.grouped_swiglu(jnp.take(rows, order, axis=0), w1, w2, w3, sizes, dtype, gmm)
        ys = jnp.zeros_like(ys).at[order].set(ys)
        return jnp.where(valid[:, None], ys, 0).astype(dtype)
    ids = jnp.where(valid, local_ids, 0)[:, None]
    # Blocks, never the capacity batch: the padding rows all land on expert 0 (one oversized group).
    return dispatch.routed_experts_blocked(rows, valid[:, None].astype(jnp.float32), ids, w1, w2, w3, dtype,
                                           block=dispatch.block_rows(rows.shape[0], el))


# ----- capacity-padded all_to_all ----------------------------------------------------------------------
def _a2a_move(axis, parts, plan, reverse):
    del plan, reverse  # the tiled all_to_all over blocks of C rows is its own inverse
    return tuple(jax.lax.all_to_all(p, axis, 0, 0, tiled=True) for p in parts)


@EP_EXCHANGES.register("all_to_all")
def via_all_to_all(xs, sorted_experts, counts, w1, w2, w3, *, axis: str, n_ranks: int, capacity: int, dtype,
                   payload: str, combine: str, grouped: bool, native: bool, gmm=None):
    """xs [M, D] sorted by expert, sorted_experts [M] -> expert outputs [M, D] (same order). `counts` and
    `native` are unused (the capacity layout needs neither)."""
    del counts, native
    el, m = w1.shape[0], xs.shape[0]
    dest = sorted_experts // el
    start = _excl_cumsum(jnp.zeros((n_ranks,), jnp.int32).at[dest].add(1))
    slot = dest * capacity + jnp.arange(m) - start[dest]  # [M] row in the [X·C] send buffer
    buf = jnp.zeros((n_ranks * capacity, xs.shape[1]), dtype).at[slot].set(xs.astype(dtype))
    ids = jnp.full((n_ranks * capacity,), el, jnp.int32).at[slot].set(sorted_experts % el)
    move = functools.partial(_a2a_move, axis)
    recv = ep_payload.exchange(payload, move, False, buf, ())  # block s = rows from rank s
    (recv_ids,) = move((ids,), (), False)
    ys = local_experts(recv, recv_ids, w1, w2, w3, dtype, grouped, gmm)
    back = ep_payload.exchange("compute", move, True, ep_payload.combine_cast(ys, combine), ())
    return jnp.take(back, slot, axis=0).astype(dtype)


# ----- ragged_all_to_all -------------------------------------------------------------------------------
class RaggedPlan(NamedTuple):
    """Offsets/sizes [X] of the forward move and of the reverse (results back to their senders)."""
    send_offsets: jnp.ndarray  # where my rows for rank j start in my sorted rows
    send_sizes: jnp.ndarray
    dest_offsets: jnp.ndarray  # where my rows land in rank j's receive buffer
    recv_sizes: jnp.ndarray  # rows I get from rank s
    recv_offsets: jnp.ndarray  # where rank s's rows start in my receive buffer
    back_offsets: jnp.ndarray  # where my results for rank s land in s's sorted rows


def ragged_plan(counts, axis: str, n_ranks: int):
    """From this rank's per-expert counts [E]: the RaggedPlan and the received cells [X, El] (rows from
    rank s for local expert l, laid out s-major then l, as the senders sorted them)."""
    g = jax.lax.all_gather(counts, axis)  # [X, E]
    el = counts.shape[0] // n_ranks
    me = jax.lax.axis_index(axis)
    s = g.reshape(n_ranks, n_ranks, el).sum(-1)  # [src, dst] rows
    plan = RaggedPlan(send_offsets=_excl_cumsum(s[me]), send_sizes=s[me],
                      dest_offsets=_excl_cumsum(s, 0)[me], recv_sizes=s[:, me],
                      recv_offsets=_excl_cumsum(s[:, me]), back_offsets=_excl_cumsum(s, 1)[:, me])
    cells = jax.lax.dynamic_slice_in_dim(g, me * el, el, axis=1)
    return plan, cells


def emulated_ragged_all_to_all(operand, output, input_offsets, send_sizes, output_offsets, recv_sizes, *,
                               axis_name):
    """`jax.lax.ragged_all_to_all`'s contract (one slice per peer) from all_to_all, for XLA:CPU tests."""
    n = send_sizes.shape[0]
    cap = min(operand.shape[0], output.shape[0])
    idx = jnp.arange(cap)
    take = jnp.clip(input_offsets[:, None] + idx, 0, operand.shape[0] - 1)  # [X, cap]
    chunks = jnp.where((idx < send_sizes[:, None]).reshape(n, cap, *[1] * (operand.ndim - 1)),
                       jnp.take(operand, take, axis=0), 0)
    recv = jax.lax.all_to_all(chunks, axis_name, 0, 0, tiled=True)  # [X, cap, ...] from each source
    offs = jax.lax.all_to_all(output_offsets, axis_name, 0, 0, tiled=True)  # where sources put my rows
    rows = jnp.where(idx < recv_sizes[:, None], offs[:, None] + idx, output.shape[0])  # OOB = dropped
    return output.at[rows.reshape(-1)].set(recv.reshape(n * cap, *operand.shape[1:]), mode="drop")


def _ragged_move(axis, rows, native, parts, plan, reverse):
    fn = jax.lax.ragged_all_to_all if native else emulated_ragged_all_to_all
    p = plan
    args = ((p.recv_offsets, p.recv_sizes, p.back_offsets, p.send_sizes) if reverse else
            (p.send_offsets, p.send_sizes, p.dest_offsets, p.recv_sizes))
    n_out = rows[1] if reverse else rows[0]
    out = []
    for a in parts:
        a = sharding.vary_like(a, *args)
        buf = sharding.vary_like(jnp.zeros((n_out, *a.shape[1:]), a.dtype), a)
        out.append(fn(a, buf, *args, axis_name=axis))
    return tuple(out)


@EP_EXCHANGES.register("ragged")
def via_ragged(xs, sorted_experts, counts, w1, w2, w3, *, axis: str, n_ranks: int, capacity: int, dtype,
               payload: str, combine: str, grouped: bool, native: bool, gmm=None):
    """xs [M, D] sorted by expert with per-expert counts [E] -> expert outputs [M, D] (same order). The
    receive buffer has the worst-case X·capacity rows; the local GEMM is always grouped (only real rows)."""
    del sorted_experts, grouped
    el, m = w1.shape[0], xs.shape[0]
    recv_rows = n_ranks * capacity
    plan, cells = ragged_plan(counts, axis, n_ranks)
    move = functools.partial(_ragged_move, axis, (recv_rows, m), native)
    recv = ep_payload.exchange(payload, move, False, xs.astype(dtype), plan)  # [R, D]
    cell = jnp.searchsorted(jnp.cumsum(cells.reshape(-1)), jnp.arange(recv_rows), side="right")
    local_ids = jnp.where(cell < n_ranks * el, cell % el, el).astype(jnp.int32)
    ys = local_experts(recv, local_ids, w1, w2, w3, dtype, True, gmm)
    back = ep_payload.exchange("compute", move, True, ep_payload.combine_cast(ys, combine), plan)
    return back.astype(dtype)
