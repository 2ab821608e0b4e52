"""Schedules as data: completeness, placement, the published DualPipe step order, argument errors."""

import pytest

from dsv3_jax.parallel.pipeline import (Op, Schedule, check_schedule, dualpipe, dualpipev, make_schedule,
                                        one_f_one_b, zb1p)

CASES = [("1f1b", pp, c) for pp in (1, 2, 4, 8, 16) for c in (pp, pp + 3, 2 * pp)]
CASES += [("zb1p", pp, c) for pp in (1, 2, 4, 8, 16) for c in (pp, pp + 3, 2 * pp)]
CASES += [("dualpipe", pp, c) for pp in (2, 4, 8, 16) for c in (2 * pp, 2 * pp + 2, 3 * pp)]
CASES += [("dualpipev", pp, c) for pp in (2, 4, 8, 16) for c in (pp, pp + 1, 2 * pp)]


def _counts(schedule):
    """Independent recount: {(kind, mb, stage): count} from the raw op lists."""
    counts = {}
    for rank_ops in schedule.ops:
        for op in rank_ops:
            halves = [("F", op.mb, op.stage), ("B", op.b_mb, op.b_stage)] if op.kind == "FB" else \
                [(op.kind, op.mb, op.stage)]
            for h in halves:
                counts[h] = counts.get(h, 0) + 1
    return counts


@pytest.mark.parametrize("name,pp,chunks", CASES)
def test_every_f_b_w_exactly_once(name, pp, chunks):
    s = make_schedule(name, pp, chunks)
    check_schedule(s)
    counts = _counts(s)
    split = {(op.mb, op.stage) for ops in s.ops for op in ops if op.kind == "B" and op.split}
    for mb in range(chunks):
        for stage in range(pp):
            assert counts[("F", mb, stage)] == 1
            assert counts[("B", mb, stage)] == 1
            assert counts.get(("W", mb, stage), 0) == (1 if (mb, stage) in split else 0)
    assert sum(counts.values()) == 2 * chunks * pp + len(split)
    assert s.num_stages == pp
    assert s.num_ranks == (pp // 2 if name == "dualpipev" else pp)


def test_zb1p_splits_every_backward():
    s = zb1p(4, 8)
    assert all(op.split for ops in s.ops for op in ops if op.kind == "B")
    assert all(op.kind != "B" or not op.split for ops in one_f_one_b(4, 8).ops for op in ops)


def test_placement_of_stages():
    d = dualpipe(4, 8)
    assert d.slot_stages() == ((0, 3), (1, 2), (2, 1), (3, 0))
    assert d.locate(0, 0) == (0, 0) and d.locate(4, 0) == (3, 1)   # second half enters at the last rank
    v = dualpipev(3, 6)
    assert v.slot_stages() == ((0, 5), (1, 4), (2, 3))
    assert v.locate(0, 2) == (2, 0) and v.locate(0, 3) == (2, 1)   # the V turns on the last device


def test_dualpipe_rank0_matches_published_steps():
    """PP=4, 8 chunks (C=4, H=2), rank 0 (half_rank 0): docs/paper.md §4 / DualPipe `step`, written out by hand.

    (1) 2xF0  (2) 1x(F0,F1)  (3) 1x(B1 W-deferred, W, F1)  (4) 1x(F0&B1, F1&B0)  (5) 1x(B1, F1&B0)
    (6) 1x(B1, B0 W-deferred)  (7) 1x(W, B0 W-deferred)  (8) 1x W. Direction 1 micro-batches are 4..7 and
    run stage 3 on rank 0.
    """
    want = [Op("F", 0, 0), Op("F", 1, 0),
            Op("F", 2, 0), Op("F", 4, 3),
            Op("B", 4, 3, split=True), Op("W", 4, 3), Op("F", 5, 3),
            Op("FB", 3, 0, 5, 3), Op("FB", 6, 3, 0, 0),
            Op("B", 6, 3), Op("FB", 7, 3, 1, 0),
            Op("B", 7, 3), Op("B", 2, 0, split=True),
            Op("W", 2, 0), Op("B", 3, 0, split=True),
            Op("W", 3, 0)]
    assert list(dualpipe(4, 8).ops[0]) == want


def test_dualpipe_middle_rank_does_not_overlap_first_pair():
    ops = dualpipe(4, 8).ops[1]   # half_rank 1 = H-1: the middle rank
    i = next(k for k, op in enumerate(ops) if op.kind in ("B", "FB"))
    assert ops[i - 1] == Op("F", 2, 1) and ops[i] == Op("B", 4, 2)


def test_dualpipe_ranks_mirror():
    """Rank PP-1-r runs rank r's list with the two directions (micro-batch halves) swapped."""
    s, half = dualpipe(8, 20), 10
    swap = lambda mb: mb + half if mb < half else mb - half
    for r in range(8):
        for a, b in zip(s.ops[r], s.ops[7 - r]):
            assert (a.kind, a.split, swap(a.mb), a.stage) == (b.kind, b.split, b.mb, b.stage)
            if a.kind == "FB":
                assert (swap(a.b_mb), a.b_stage) == (b.b_mb, b.b_stage)


@pytest.mark.parametrize("call,arg", [
    (lambda: dualpipe(3, 12), "num_ranks"), (lambda: dualpipe(4, 6), "chunks"), (lambda: dualpipe(4, 9), "chunks"),
    (lambda: dualpipev(0, 4), "num_ranks"), (lambda: dualpipev(4, 7), "chunks"),
    (lambda: one_f_one_b(0, 4), "num_ranks"), (lambda: zb1p(4, 0), "chunks"),
    (lambda: one_f_one_b(2.0, 4), "num_ranks"),
    (lambda: make_schedule("gpipe", 4, 8), "name"), (lambda: make_schedule("dualpipev", 5, 10), "pp"),
    (lambda: make_schedule("dualpipe", 6, 10), "chunks"), (lambda: make_schedule("dualpipe", 5, 10), "pp"),
    (lambda: make_schedule("1f1b", 0, 10), "pp"),
])
def test_bad_arguments_name_the_argument(call, arg):
    with pytest.raises(ValueError, match=rf"^{arg} must"):
        call()


def test_check_schedule_rejects_broken_lists():
    good = one_f_one_b(2, 2)
    dropped = Schedule("x", 2, 2, 2, "linear", (good.ops[0][:-1], good.ops[1]))
    with pytest.raises(ValueError, match="missing B"):
        check_schedule(dropped)
    wrong_rank = Schedule("x", 2, 2, 2, "linear", (good.ops[1], good.ops[0]))
    with pytest.raises(ValueError, match="expected rank"):
        check_schedule(wrong_rank)
    with pytest.raises(ValueError, match="Op.kind"):
        Op("X", 0, 0)
