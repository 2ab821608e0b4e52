"""Executor tick tables: ticks equal the unit-duration simulation, and a symbolic replay of the table
(no jax) delivers every activation and gradient to the right op through the right buffer slot."""

import numpy as np
import pytest

from dsv3_jax.parallel.pipeline import make_schedule
from dsv3_jax.parallel.pipeline.plan import (BWD_FULL, BWD_INPUT, COL, FWD, FWD_BWD, IDLE, SEND_LEFT,
                                             SEND_RIGHT, SEND_SELF, WGT, build_plan)
from dsv3_jax.parallel.pipeline.simulate import Durations, simulate

CASES = [("1f1b", 4, 8), ("1f1b", 1, 3), ("zb1p", 4, 5), ("zb1p", 8, 17), ("dualpipe", 2, 4), ("dualpipe", 4, 10),
         ("dualpipe", 8, 16), ("dualpipev", 2, 2), ("dualpipev", 8, 9), ("dualpipev", 16, 18)]


@pytest.mark.parametrize("name,pp,chunks", CASES)
def test_ticks_equal_unit_simulation(name, pp, chunks):
    s = make_schedule(name, pp, chunks)
    plan, tl = build_plan(s), simulate(s, Durations.unit())
    assert plan.num_ticks == tl.makespan
    assert plan.idle_ticks == tl.idle
    for r in range(s.num_ranks):
        assert list(plan.ticks[r]) == [e.start for e in tl.entries[r]]


def _replay(plan, residuals):
    """Run the table on symbolic values: buffers hold tags ('X'|'G'|'R', mb, stage); every read is checked."""
    sch, drop = plan.schedule, plan.num_buffers
    buf = [[None] * (drop + 1) for _ in range(sch.num_ranks)]
    res = [[None] * (plan.num_residuals + 1) for _ in range(sch.num_ranks)]
    op_at = {(r, t): op for r in range(sch.num_ranks) for op, t in zip(sch.ops[r], plan.ticks[r])}
    last = sch.num_stages - 1
    for t in range(plan.num_ticks):
        out = {}
        for r in range(sch.num_ranks):
            row, op = plan.table[r, t], op_at.get((r, t))
            out[r] = (None, None)
            if op is None:
                assert row[COL["kind"]] == IDLE
                continue
            fmsg = bmsg = None
            for kind, mb, s in op.parts():
                if kind == "F":
                    if s == 0:
                        buf[r][row[COL["f_x"]]] = ("X", mb, 0)
                    assert buf[r][row[COL["f_x"]]] == ("X", mb, s)
                    if residuals:
                        res[r][row[COL["f_res"]]] = ("R", mb, s)
                    if s == last:
                        buf[r][row[COL["f_gy"]]] = ("G", mb, s)
                    else:
                        fmsg = ("X", mb, s + 1)
                else:
                    assert buf[r][row[COL["b_gy"]]] == ("G", mb, s)
                    assert (res[r][row[COL["b_res"]]] if residuals else buf[r][row[COL["b_x"]]]) == \
                        ("R" if residuals else "X", mb, s)
                    if kind == "B" and s > 0:
                        bmsg = ("G", mb, s - 1)
            out[r] = (fmsg, bmsg)
        _deliver(plan, t, out, buf)


def _deliver(plan, t, out, buf):
    """The executor's exchange: right/left ppermute of (forward, backward) messages, plus self hand-offs."""
    n, drop = plan.schedule.num_ranks, plan.num_buffers
    for r in range(n):
        row = plan.table[r, t]
        sent = lambda src, d: tuple(m if plan.table[src, t, COL[c]] == d else None
                                    for m, c in zip(out[src], ("f_send", "b_send"))) if 0 <= src < n else (None, None)
        left, right = sent(r - 1, SEND_RIGHT), sent(r + 1, SEND_LEFT)
        mine = sent(r, SEND_SELF)
        for col, msg in (("recv_l0", left[0]), ("recv_l1", left[1]), ("recv_r0", right[0]),
                         ("recv_r1", right[1]), ("recv_sf", mine[0]), ("recv_sb", mine[1])):
            slot = row[COL[col]]
            assert (msg is None) == (slot == drop), (t, r, col, msg)
            if msg is not None:
                buf[r][slot] = msg


@pytest.mark.parametrize("name,pp,chunks", CASES)
@pytest.mark.parametrize("residuals", [False, True])
def test_table_routes_every_value(name, pp, chunks, residuals):
    plan = build_plan(make_schedule(name, pp, chunks), residuals=residuals)
    _replay(plan, residuals)


def test_kinds_and_gradient_homes():
    plan = build_plan(make_schedule("dualpipe", 4, 8))
    kinds = set(np.unique(plan.table[..., COL["kind"]]))
    assert kinds == {IDLE, FWD, BWD_FULL, BWD_INPUT, WGT, FWD_BWD}
    assert list(plan.home) == [0, 2, 4, 6]   # stage s: slot 0 of rank s (slot 1 copies are summed into it)
    v = build_plan(make_schedule("dualpipev", 4, 4))
    assert list(v.home) == [0, 2, 3, 1]      # stages 0,1 in slot 0 of ranks 0,1; stages 2,3 in slot 1 of 1,0
