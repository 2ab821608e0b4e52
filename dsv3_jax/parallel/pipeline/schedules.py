"""Schedule generators: 1F1B, ZB1P, DualPipe and DualPipeV as per-rank operation lists.

Sources: 1F1B is PipeDream-Flush (Narayanan et al. 2021, as in Megatron-LM); ZB1P is the handcrafted ZB-H1
schedule of "Zero Bubble Pipeline Parallelism" (Qi et al. 2023); DualPipe and DualPipeV follow the 8-step
per-rank order of github deepseek-ai/DualPipe (`dualpipe.py` / `dualpipev.py`, DeepSeek-V3 report §3.2.1,
docs/paper.md §4). Names, devices and the `pp` argument of `make_schedule` follow the README table: `pp` is the
number of pipeline stages the model is cut into; every schedule runs on `pp` ranks except DualPipeV, which
runs the same `pp` stages on pp/2 ranks (two stages per rank in a V).
"""

from __future__ import annotations

from dsv3_jax.parallel.pipeline.ops import Op, Schedule

SCHEDULE_NAMES = ("1f1b", "zb1p", "dualpipe", "dualpipev")


def _check_int(name: str, value, minimum: int, what: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum} ({what}); got {value!r}")


def one_f_one_b(num_ranks: int, chunks: int) -> Schedule:
    """1F1B: rank r runs min(num_ranks-1-r, chunks) warm-up forwards, then alternates F and full B."""
    _check_int("num_ranks", num_ranks, 1, "pipeline ranks")
    _check_int("chunks", chunks, 1, "micro-batches")
    ops = []
    for r in range(num_ranks):
        warm = min(num_ranks - 1 - r, chunks)
        seq = [Op("F", m, r) for m in range(warm)]
        for i in range(chunks - warm):
            seq += [Op("F", warm + i, r), Op("B", i, r)]
        seq += [Op("B", m, r) for m in range(chunks - warm, chunks)]
        ops.append(tuple(seq))
    return Schedule("1f1b", num_ranks, num_ranks, chunks, "linear", tuple(ops))


def zb1p(num_ranks: int, chunks: int) -> Schedule:
    """ZB1P (ZB-H1): the 1F1B order with every B split into B (input gradient) and W (weight gradient).

    Rank r keeps up to r weight-gradient passes pending (FIFO) and runs them late, where the 1F1B cool-down
    would leave it idle; the remainder is flushed at the end. The number of micro-batches between F and B
    stays at most num_ranks - r as in 1F1B. This order reproduces the published bubble
    (PP-1)(F+B-2W) exactly when W <= F <= B-W and chunks >= num_ranks (see simulate.py).
    """
    _check_int("num_ranks", num_ranks, 1, "pipeline ranks")
    _check_int("chunks", chunks, 1, "micro-batches")
    ops = []
    for r in range(num_ranks):
        warm = min(num_ranks - 1 - r, chunks)
        seq, pending = [Op("F", m, r) for m in range(warm)], []
        f_next = warm
        for b in range(chunks):
            if f_next < chunks:
                seq.append(Op("F", f_next, r))
                f_next += 1
            seq.append(Op("B", b, r, split=True))
            pending.append(b)
            if len(pending) > r:
                seq.append(Op("W", pending.pop(0), r))
        seq += [Op("W", m, r) for m in pending]
        ops.append(tuple(seq))
    return Schedule("zb1p", num_ranks, num_ranks, chunks, "linear", tuple(ops))


class _DualRank:
    """Builds one rank's DualPipe/DualPipeV list: per-phase counters and the FIFO of deferred W's.

    Phase p of a DualPipe rank in the second half means direction 1-p (DualPipe's `phase ^= is_in_second_half`).
    """

    def __init__(self, schedule_kind: str, rank: int, num_ranks: int, chunks: int):
        self.kind, self.rank, self.n, self.chunks = schedule_kind, rank, num_ranks, chunks
        self.swap = schedule_kind == "dualpipe" and rank >= num_ranks // 2
        self.next = {("F", 0): 0, ("F", 1): 0, ("B", 0): 0, ("B", 1): 0}
        self.deferred: list[tuple[int, int]] = []
        self.ops: list[Op] = []

    def _take(self, kind: str, phase: int) -> tuple[int, int]:
        d = phase ^ self.swap
        i = self.next[(kind, d)]
        self.next[(kind, d)] = i + 1
        if self.kind == "dualpipev":
            return i, (self.rank if d == 0 else 2 * self.n - 1 - self.rank)
        return d * (self.chunks // 2) + i, (self.rank if d == 0 else self.n - 1 - self.rank)

    def f(self, phase: int) -> None:
        self.ops.append(Op("F", *self._take("F", phase)))

    def b(self, phase: int, defer_w: bool = False) -> None:
        mb, stage = self._take("B", phase)
        self.ops.append(Op("B", mb, stage, split=defer_w))
        if defer_w:
            self.deferred.append((mb, stage))

    def w(self) -> None:
        self.ops.append(Op("W", *self.deferred.pop(0)))

    def fb(self, f_phase: int, b_phase: int) -> None:
        mb, stage = self._take("F", f_phase)
        b_mb, b_stage = self._take("B", b_phase)
        self.ops.append(Op("FB", mb, stage, b_mb, b_stage))


def _dual_steps(rb: _DualRank, half: int, half_rank: int, half_chunks: int, middle: bool) -> None:
    """The 8 steps of DualPipe's `step` (H = half, C = half_chunks; for DualPipeV H = ranks, C = chunks)."""
    outer = half - half_rank - 1
    for _ in range(2 * outer):                        # (1) nF0
        rb.f(0)
    for _ in range(half_rank + 1):                    # (2) nF0F1
        rb.f(0), rb.f(1)
    for _ in range(outer):                            # (3) nB1W1F1, zero bubble
        rb.b(1, defer_w=True), rb.w(), rb.f(1)
    for i in range(half_chunks - 2 * half + half_rank + 1):   # (4) nF0B1F1B0, the main step
        if i == 0 and middle:                         # the middle rank does not overlap its first pair
            rb.f(0), rb.b(1)
        else:
            rb.fb(0, 1)
        rb.fb(1, 0)
    for _ in range(outer):                            # (5) nB1F1B0
        rb.b(1), rb.fb(1, 0)
    steps6, defer = half_rank + 1, False
    for i in range(steps6):                           # (6) nB1B0, W deferred for the second half of them
        defer = defer or (i == steps6 // 2 and half_rank % 2 == 1)
        rb.b(1, defer)
        defer = defer or (i == steps6 // 2 and half_rank % 2 == 0)
        rb.b(0, defer)
    for _ in range(outer):                            # (7) nWB0, zero bubble
        rb.w(), rb.b(0, defer_w=True)
    for _ in range(half_rank + 1):                    # (8) nW
        rb.w()
    assert not rb.deferred, "every deferred W must be flushed"


def dualpipe(num_ranks: int, chunks: int) -> Schedule:
    """DualPipe on num_ranks ranks (= PP stages): rank r holds stages r and PP-1-r; micro-batches
    0..chunks/2-1 enter at rank 0, the rest at rank PP-1. Needs PP even and chunks even and >= 2*PP."""
    if not isinstance(num_ranks, int) or num_ranks < 2 or num_ranks % 2:
        raise ValueError(f"num_ranks must be an even int >= 2 for dualpipe (rank r holds stages r and "
                         f"num_ranks-1-r); got {num_ranks!r}")
    if not isinstance(chunks, int) or chunks % 2 or chunks < 2 * num_ranks:
        raise ValueError(f"chunks must be an even int >= 2*num_ranks = {2 * num_ranks} for dualpipe "
                         f"(half the micro-batches per direction); got {chunks!r}")
    half, ops = num_ranks // 2, []
    for r in range(num_ranks):
        rb = _DualRank("dualpipe", r, num_ranks, chunks)
        half_rank = min(r, num_ranks - 1 - r)
        _dual_steps(rb, half, half_rank, chunks // 2, middle=half_rank == half - 1)
        ops.append(tuple(rb.ops))
    return Schedule("dualpipe", num_ranks, num_ranks, chunks, "dual", tuple(ops))


def dualpipev(num_ranks: int, chunks: int) -> Schedule:
    """DualPipeV on num_ranks devices holding 2*num_ranks stages in a V (rank r: stages r and 2n-1-r);
    DualPipe's steps with H -> num_ranks, half_rank -> rank, C -> chunks. Needs chunks >= 2*num_ranks."""
    _check_int("num_ranks", num_ranks, 1, "devices of the V; the model has 2*num_ranks stages")
    if not isinstance(chunks, int) or chunks < 2 * num_ranks:
        raise ValueError(f"chunks must be an int >= 2*num_ranks = {2 * num_ranks} for dualpipev; got {chunks!r}")
    ops = []
    for r in range(num_ranks):
        rb = _DualRank("dualpipev", r, num_ranks, chunks)
        _dual_steps(rb, num_ranks, r, chunks, middle=r == num_ranks - 1)
        ops.append(tuple(rb.ops))
    return Schedule("dualpipev", num_ranks, 2 * num_ranks, chunks, "v", tuple(ops))


def make_schedule(name: str, pp: int, chunks: int) -> Schedule:
    """The schedule `name` for a model cut into `pp` stages (the README table's PP) and `chunks` micro-batches.

    Ranks used: pp, except dualpipev which runs on pp // 2 ranks.
    """
    if name not in SCHEDULE_NAMES:
        raise ValueError(f"name must be one of {SCHEDULE_NAMES}; got {name!r}")
    if name == "dualpipev":
        if not isinstance(pp, int) or pp < 2 or pp % 2:
            raise ValueError(f"pp must be an even int >= 2 for dualpipev (pp stages on pp/2 ranks); got {pp!r}")
        builder, ranks = dualpipev, pp // 2
    elif not isinstance(pp, int) or pp < 1:
        raise ValueError(f"pp must be an int >= 1 (pipeline stages); got {pp!r}")
    else:
        builder, ranks = {"1f1b": one_f_one_b, "zb1p": zb1p, "dualpipe": dualpipe}[name], pp
    try:
        return builder(ranks, chunks)
    except ValueError as e:  # report the caller's argument names
        raise ValueError(str(e).replace("2*num_ranks", "2*pp" if name == "dualpipe" else "pp")
                         .replace("num_ranks", "pp")) from None
