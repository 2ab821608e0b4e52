"""Static tick tables that drive the shard_map executor (executor.py).

Every op takes one tick. A rank runs its next op at tick t when every input it needs was produced at a tick
< t (outputs are sent with ppermute at the end of a tick and land in a buffer slot of the receiver), so the
tick of an op is its start time in the simulator with unit durations; tests check the two agree.

Each rank keeps one buffer of activation-shaped slots for stage inputs X(m, s) and output gradients
GY(m, s), and (residual mode) one buffer of vjp residual slots R(m, s). A value occupies its slot from the
tick it is produced to the last tick that reads it (both inclusive); slots are reused greedily (interval
colouring, optimal), so a rank needs as many slots as values alive at once. Slot index `num_buffers`
(resp. `num_residuals`) is a scratch slot that absorbs writes nobody reads.

Table columns (one int32 row per rank and tick), see COLUMNS: the op kind, the fields of its forward half
(f_*) and of its backward or weight half (b_*), where its outputs go (SEND_*), and where to store each
message that arrives at the end of the tick (recv_*: from the left/right neighbour, forward/backward
message, or from itself when both stages of a hand-off live on one rank, as at the tip of DualPipeV's V).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dsv3_jax.parallel.pipeline.ops import Part, Schedule, check_schedule, dependencies

COLUMNS = ("kind", "f_mb", "f_slot", "f_first", "f_last", "f_x", "f_gy", "f_res", "f_send",
           "b_mb", "b_slot", "b_first", "b_x", "b_gy", "b_res", "b_send",
           "recv_l0", "recv_l1", "recv_r0", "recv_r1", "recv_sf", "recv_sb")
COL = {name: i for i, name in enumerate(COLUMNS)}
IDLE, FWD, BWD_FULL, BWD_INPUT, WGT, FWD_BWD = range(6)
SEND_NONE, SEND_RIGHT, SEND_LEFT, SEND_SELF = range(4)


@dataclasses.dataclass(frozen=True)
class TickPlan:
    schedule: Schedule
    ticks: tuple[tuple[int, ...], ...]   # ticks[r][i]: tick of rank r's i-th op
    num_ticks: int
    busy_ticks: tuple[int, ...]
    idle_ticks: tuple[int, ...]
    table: np.ndarray                    # int32 [num_ranks, num_ticks, len(COLUMNS)]
    num_buffers: int
    num_residuals: int
    slot_stage: np.ndarray               # int32 [num_ranks, num_slots]: stage held in each parameter slot
    home: np.ndarray                     # int32 [num_stages]: flat index r*num_slots+k of each stage's grad


def assign_ticks(schedule: Schedule) -> tuple[tuple[int, ...], ...]:
    """Tick of every op: synchronous stepping, an op runs once its inputs were produced at earlier ticks."""
    done: dict[Part, int] = {}
    pos = [0] * schedule.num_ranks
    ticks: list[list[int]] = [[] for _ in range(schedule.num_ranks)]
    t, remaining = 0, sum(len(o) for o in schedule.ops)
    while remaining:
        ready = []
        for r, rank_ops in enumerate(schedule.ops):
            if pos[r] < len(rank_ops):
                deps = [d for p in rank_ops[pos[r]].parts() for d in dependencies(p, schedule.num_stages)]
                if all(d in done for d in deps):
                    ready.append(r)
        if not ready:
            raise ValueError(f"schedule {schedule.name!r} deadlocks at tick {t}")
        for r in ready:
            for p in schedule.ops[r][pos[r]].parts():
                done[p] = t
            ticks[r].append(t)
            pos[r] += 1
        remaining -= len(ready)
        t += 1
    return tuple(tuple(x) for x in ticks)


def _lifetimes(schedule: Schedule, tick: dict[Part, int], residuals: bool) -> dict:
    """{(kind, mb, stage): (rank, first tick, last tick)} for kind X (input), G (output grad), R (residuals)."""
    last_stage, out = schedule.num_stages - 1, {}
    for mb in range(schedule.chunks):
        for s in range(schedule.num_stages):
            rank = schedule.locate(mb, s)[0]
            t_f, t_b = tick[("F", mb, s)], tick[("B", mb, s)]
            t_end = max(t_b, tick.get(("W", mb, s), t_b))
            x_def = t_f if s == 0 else tick[("F", mb, s - 1)]
            out[("X", mb, s)] = (rank, x_def, t_f if residuals else t_end)
            out[("G", mb, s)] = (rank, t_f if s == last_stage else tick[("B", mb, s + 1)], t_end)
            if residuals:
                out[("R", mb, s)] = (rank, t_f, t_end)
    return out


def _colour(lifetimes: dict, num_ranks: int, kinds: str) -> tuple[dict, int]:
    """Greedy interval colouring per rank: {value: slot}, and the most slots any rank needs."""
    slots, most = {}, 0
    for r in range(num_ranks):
        vals = sorted((v for v, (rank, _, _) in lifetimes.items() if rank == r and v[0] in kinds),
                      key=lambda v: lifetimes[v][1])
        free_at: list[int] = []                      # free_at[k]: last tick slot k is in use
        for v in vals:
            _, start, end = lifetimes[v]
            k = next((i for i, last in enumerate(free_at) if last < start), len(free_at))
            free_at[k:k + 1] = [end]
            slots[v] = k
        most = max(most, len(free_at))
    return slots, most


def _direction(src: int, dst: int) -> int:
    if dst == src + 1:
        return SEND_RIGHT
    if dst == src - 1:
        return SEND_LEFT
    if dst == src:
        return SEND_SELF
    raise ValueError(f"stages of consecutive index must sit on neighbouring ranks; got ranks {src} -> {dst}")


def _fill_ops(table, schedule, ticks, slots, residuals) -> None:
    """Op kind and the f_*/b_* fields of every op."""
    last, codes = schedule.num_stages - 1, {"F": FWD, "W": WGT, "FB": FWD_BWD}
    for r, rank_ops in enumerate(schedule.ops):
        for op, t in zip(rank_ops, ticks[r]):
            row = table[r, t]
            row[COL["kind"]] = codes.get(op.kind, BWD_INPUT if op.split else BWD_FULL)
            for kind, mb, s in op.parts():
                pre = "f_" if kind == "F" else "b_"
                row[COL[pre + "mb"]], row[COL[pre + "slot"]] = mb, schedule.locate(mb, s)[1]
                row[COL[pre + "first"]] = int(s == 0)
                if kind == "F":
                    row[COL["f_last"]] = int(s == last)
                    row[COL["f_x"]] = slots[("X", mb, s)]
                    if s == last:
                        row[COL["f_gy"]] = slots[("G", mb, s)]
                else:
                    row[COL["b_gy"]] = slots[("G", mb, s)]
                    if not residuals:
                        row[COL["b_x"]] = slots[("X", mb, s)]
                if residuals:
                    row[COL[pre + "res"]] = slots[("R", mb, s)]


def _fill_messages(table, schedule, tick, slots) -> None:
    """Where each op sends its output, and where the receiver stores it (same tick, end of tick)."""
    recv = {("X", SEND_RIGHT): "recv_l0", ("X", SEND_LEFT): "recv_r0", ("X", SEND_SELF): "recv_sf",
            ("G", SEND_RIGHT): "recv_l1", ("G", SEND_LEFT): "recv_r1", ("G", SEND_SELF): "recv_sb"}
    for mb in range(schedule.chunks):
        for s in range(schedule.num_stages):
            dst = schedule.locate(mb, s)[0]
            if s > 0:   # X(mb, s) comes from F(mb, s-1)
                src, t = schedule.locate(mb, s - 1)[0], tick[("F", mb, s - 1)]
                d = _direction(src, dst)
                table[src, t, COL["f_send"]] = d
                table[dst, t, COL[recv[("X", d)]]] = slots[("X", mb, s)]
            if s < schedule.num_stages - 1:   # GY(mb, s) comes from B(mb, s+1)
                src, t = schedule.locate(mb, s + 1)[0], tick[("B", mb, s + 1)]
                d = _direction(src, dst)
                table[src, t, COL["b_send"]] = d
                table[dst, t, COL[recv[("G", d)]]] = slots[("G", mb, s)]


def build_plan(schedule: Schedule, residuals: bool = False) -> TickPlan:
    """Ticks, buffer slots and the int32 table for `schedule` (residuals: keep vjp residuals, not inputs)."""
    check_schedule(schedule)
    ticks = assign_ticks(schedule)
    tick = {p: t for r, rank_ops in enumerate(schedule.ops)
            for op, t in zip(rank_ops, ticks[r]) for p in op.parts()}
    num_ticks = 1 + max(t for rt in ticks for t in rt)
    life = _lifetimes(schedule, tick, residuals)
    slots, num_buffers = _colour(life, schedule.num_ranks, "XG")
    res_slots, num_residuals = _colour(life, schedule.num_ranks, "R")
    slots.update(res_slots)
    table = np.zeros((schedule.num_ranks, num_ticks, len(COLUMNS)), np.int32)
    for c in ("f_x", "f_gy", "b_x", "b_gy", "recv_l0", "recv_l1", "recv_r0", "recv_r1", "recv_sf", "recv_sb"):
        table[..., COL[c]] = num_buffers
    table[..., COL["f_res"]] = table[..., COL["b_res"]] = num_residuals
    _fill_ops(table, schedule, ticks, slots, residuals)
    _fill_messages(table, schedule, tick, slots)
    busy = tuple(len(rt) for rt in ticks)
    slot_stage = np.asarray(schedule.slot_stages(), np.int32)
    home = np.zeros(schedule.num_stages, np.int32)
    for r in range(schedule.num_ranks):   # DualPipe sums slot 1 into the mirror rank's slot 0
        for k, s in enumerate(slot_stage[r]):
            if k == 0 or schedule.placement == "v":
                home[s] = r * schedule.num_slots + k
    return TickPlan(schedule, ticks, num_ticks, busy, tuple(num_ticks - b for b in busy), table,
                    num_buffers, num_residuals, slot_stage, home)
