"""Pipeline timeline simulator: start/end of every op, per-rank idle time, bubble, memory.

Model. Each rank runs its op list in order; an op starts when the rank is free and every input it needs has
been produced (`ops.dependencies`); communication is free. Durations (github deepseek-ai/DualPipe README
notation): F forward, B FULL backward, W weight-gradient part, so a split B (input gradient only) takes
B - W; an overlapped F&B pair takes `fb` (default F + B: no overlap gain).

Bubble. busy_r is the summed duration of rank r's ops and idle_r = makespan - busy_r. The bubble is the
largest per-rank idle time, max_r idle_r = makespan - min_r busy_r: the time the least-loaded rank waits
within the step. For 1F1B and ZB1P every rank does the same work, so all idle_r are equal. DualPipe ranks
differ (a rank nearer the middle overlaps more of its chunks into F&B pairs, and the middle rank runs its
first pair un-overlapped), so the bubble is set by the middle ranks. With this definition the simulated
bubble equals the published formulas (formulas.py) exactly for every chunk count:
  1F1B      (PP-1)(F+B)          for all F, B;
  ZB1P      (PP-1)(F+B-2W)       when W <= F <= B-W (and chunks >= PP);
  DualPipe  (PP/2-1)(F&B+B-3W)   when W <= F == B-W and max(F, B) <= F&B <= F+B; DualPipeV likewise,
                                 with PP = 2 * devices.
F == B-W (the input-gradient pass costs as much as the forward) is the usual zero-bubble premise. Outside
these conditions (`formulas.formula_assumptions`) the formulas are approximations and the simulator gives
the schedule's exact bubble; e.g. with Insights Table 4 times (B-W = 1.51 > F = 1.13) the simulated DualPipe
bubble is below the formula (experiments/dualpipe).

Memory. peak_activations[r]: the most micro-batch activations rank r holds at once, counting a stage's
activations from the start of its F to the end of its B (an FB holds both halves while it runs; what a
deferred W keeps is not counted, as in the README table). param_copies: stage-parameter sets per rank.
"""

from __future__ import annotations

import dataclasses
import math

from dsv3_jax.parallel.pipeline import formulas
from dsv3_jax.parallel.pipeline.ops import Op, Part, Schedule, dependencies
from dsv3_jax.parallel.pipeline.schedules import make_schedule


@dataclasses.dataclass(frozen=True)
class Durations:
    """Op durations; `fb` defaults to f + b, `b_input` (a split B) to b - w."""

    f: float
    b: float
    w: float
    fb: float | None = None
    b_input: float | None = None

    def __post_init__(self):
        for name in ("f", "b", "w", "fb", "b_input"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0):
                raise ValueError(f"Durations.{name} must be a finite number >= 0; got {v!r}")
        if self.b_input is None and self.w > self.b:
            raise ValueError(f"Durations.w must be <= b (B is the full backward); got w={self.w}, b={self.b}")

    @classmethod
    def unit(cls) -> "Durations":
        """Every op (F, B, split B, W, FB) takes 1: the executor's ticks."""
        return cls(f=1, b=1, w=1, fb=1, b_input=1)

    def of(self, op: Op) -> float:
        if op.kind == "F":
            return self.f
        if op.kind == "W":
            return self.w
        if op.kind == "FB":
            return self.f + self.b if self.fb is None else self.fb
        if op.split:
            return self.b - self.w if self.b_input is None else self.b_input
        return self.b


@dataclasses.dataclass(frozen=True)
class Entry:
    start: float
    end: float
    op: Op


@dataclasses.dataclass(frozen=True)
class Timeline:
    schedule: Schedule
    durations: Durations
    entries: tuple[tuple[Entry, ...], ...]
    makespan: float
    busy: tuple[float, ...]
    idle: tuple[float, ...]
    bubble: float
    peak_activations: tuple[int, ...]
    param_copies: int


def _run(schedule: Schedule, durations: Durations) -> tuple[tuple[Entry, ...], ...]:
    """Event-free list scheduling: sweep the ranks, advancing each as far as its inputs allow."""
    done: dict[Part, float] = {}
    free = [0.0] * schedule.num_ranks
    pos = [0] * schedule.num_ranks
    entries: list[list[Entry]] = [[] for _ in range(schedule.num_ranks)]
    remaining = sum(len(o) for o in schedule.ops)
    while remaining:
        progressed = False
        for r, rank_ops in enumerate(schedule.ops):
            while pos[r] < len(rank_ops):
                op = rank_ops[pos[r]]
                deps = [d for p in op.parts() for d in dependencies(p, schedule.num_stages)]
                if any(d not in done for d in deps):
                    break
                start = max([free[r]] + [done[d] for d in deps])
                free[r] = start + durations.of(op)
                entries[r].append(Entry(start, free[r], op))
                for p in op.parts():
                    done[p] = free[r]
                pos[r] += 1
                remaining -= 1
                progressed = True
        if not progressed:
            waiting = {r: schedule.ops[r][pos[r]].label() for r in range(schedule.num_ranks)
                       if pos[r] < len(schedule.ops[r])}
            raise ValueError(f"schedule {schedule.name!r} deadlocks; ranks wait at {waiting}")
    return tuple(tuple(e) for e in entries)


def peak_in_flight(rank_entries: tuple[Entry, ...]) -> int:
    """Most activations held at once: +1 when an F starts, -1 when a B ends (ops of a rank are sequential)."""
    held = peak = 0
    for e in rank_entries:
        parts = e.op.parts()
        held += sum(p[0] == "F" for p in parts)
        peak = max(peak, held)
        held -= sum(p[0] == "B" for p in parts)
    return peak


def simulate(schedule: Schedule, durations: Durations) -> Timeline:
    """Timeline, per-rank idle, bubble (module docstring), peak activations and parameter copies."""
    entries = _run(schedule, durations)
    makespan = max((e[-1].end for e in entries if e), default=0.0)
    busy = tuple(sum(x.end - x.start for x in e) for e in entries)
    idle = tuple(makespan - b for b in busy)
    return Timeline(schedule, durations, entries, makespan, busy, idle, max(idle),
                    tuple(peak_in_flight(e) for e in entries), schedule.num_slots)


def report(name: str, pp: int, chunks: int, durations: Durations) -> dict:
    """Simulated and published numbers for one configuration, as a JSON-ready dict."""
    tl = simulate(make_schedule(name, pp, chunks), durations)
    d = durations
    fb = d.f + d.b if d.fb is None else d.fb
    return {
        "schedule": name, "pp": pp, "chunks": chunks, "devices": tl.schedule.num_ranks,
        "durations": {"f": d.f, "b": d.b, "w": d.w, "fb": fb},
        "bubble": round(tl.bubble, 9),
        "formula_bubble": round(formulas.formula_bubble(name, pp, d.f, d.b, d.w, fb), 9),
        "formula_assumptions_hold": formulas.formula_assumptions(name, d.f, d.b, d.w, fb)
                                    and (name != "zb1p" or chunks >= pp),
        "makespan": round(tl.makespan, 9),
        "idle_per_rank": [round(x, 9) for x in tl.idle],
        "peak_activations": max(tl.peak_activations),
        "peak_activations_per_rank": list(tl.peak_activations),
        "formula_activations": formulas.formula_activations(name, pp),
        "param_copies": tl.param_copies,
        "formula_param_copies": formulas.formula_param_copies(name),
    }
