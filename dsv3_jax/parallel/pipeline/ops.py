"""Pipeline schedules as plain data: operations, stage placement, dependencies, validation.

Vocabulary (github deepseek-ai/DualPipe README; DeepSeek-V3 report §3.2.1 and Table 2):
  F   forward of one micro-batch through one stage.
  B   backward of one micro-batch through one stage. A *full* B computes the input gradient and the weight
      gradient; a *split* B (`split=True`, zero-bubble style) computes only the input gradient and leaves the
      weight gradient to a later W.
  W   the "backward for weights" part of a split B.
  FB  a forward and a full backward chunk executed as one mutually overlapped pair ("F&B").

A micro-batch visits stages 0, 1, ..., num_stages-1 in its forward pass. `placement` says which rank holds
which stage:
  linear  num_stages == num_ranks, stage s on rank s (1F1B, ZB1P).
  dual    DualPipe: num_stages == num_ranks; micro-batches 0..chunks/2-1 run in direction 0 (stage s on rank
          s), the others in direction 1 (stage s on rank num_ranks-1-s). Rank r therefore holds two
          parameter copies: slot 0 = stage r, slot 1 = stage num_ranks-1-r.
  v       DualPipeV: num_stages == 2*num_ranks in a V: stage s < num_ranks on rank s (slot 0), stage
          s >= num_ranks on rank 2*num_ranks-1-s (slot 1).
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

KINDS = ("F", "B", "W", "FB")
PLACEMENTS = ("linear", "dual", "v")

# A unit of work: (kind, micro-batch, stage) with kind in {"F", "B", "W"}.
Part = tuple[str, int, int]


@dataclasses.dataclass(frozen=True)
class Op:
    """One entry of a rank's operation list.

    For F, B, W: (mb, stage) is the micro-batch and stage. For FB: (mb, stage) is the forward half and
    (b_mb, b_stage) the backward half (a full backward, as in DualPipe's `_forward_backward_chunk`).
    """

    kind: str
    mb: int
    stage: int
    b_mb: int = -1
    b_stage: int = -1
    split: bool = False

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Op.kind must be one of {KINDS}; got {self.kind!r}")
        if self.split and self.kind != "B":
            raise ValueError(f"Op.split applies to kind 'B' only; got kind {self.kind!r}")
        if self.kind == "FB" and (self.b_mb < 0 or self.b_stage < 0):
            raise ValueError("Op of kind 'FB' needs b_mb and b_stage (the backward half)")

    def parts(self) -> tuple[Part, ...]:
        """The F/B/W units this op performs (an FB performs one F and one full B)."""
        if self.kind == "FB":
            return (("F", self.mb, self.stage), ("B", self.b_mb, self.b_stage))
        return ((self.kind, self.mb, self.stage),)

    def label(self) -> str:
        """Short text such as 'F3', 'B3s' (split B), 'W3' or 'F3&B1'."""
        if self.kind == "FB":
            return f"F{self.mb}&B{self.b_mb}"
        return f"{self.kind}{self.mb}{'s' if self.split else ''}"


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Per-rank operation lists of one pipeline schedule (see module docstring for `placement`)."""

    name: str
    num_ranks: int
    num_stages: int
    chunks: int
    placement: str
    ops: tuple[tuple[Op, ...], ...]

    def __post_init__(self):
        if self.placement not in PLACEMENTS:
            raise ValueError(f"Schedule.placement must be one of {PLACEMENTS}; got {self.placement!r}")
        want = 2 * self.num_ranks if self.placement == "v" else self.num_ranks
        if self.num_stages != want:
            raise ValueError(f"Schedule.num_stages must be {want} for placement {self.placement!r}; "
                             f"got {self.num_stages}")
        if len(self.ops) != self.num_ranks:
            raise ValueError(f"Schedule.ops must hold one list per rank ({self.num_ranks}); got {len(self.ops)}")

    @property
    def num_slots(self) -> int:
        """Stage-parameter sets held per rank (1 for linear; 2 for DualPipe's two copies and the V)."""
        return 1 if self.placement == "linear" else 2

    def locate(self, mb: int, stage: int) -> tuple[int, int]:
        """(rank, parameter slot) that runs `stage` for micro-batch `mb`."""
        n = self.num_ranks
        if self.placement == "linear":
            return stage, 0
        if self.placement == "dual":
            return (stage, 0) if mb < self.chunks // 2 else (n - 1 - stage, 1)
        return (stage, 0) if stage < n else (2 * n - 1 - stage, 1)

    def slot_stages(self) -> tuple[tuple[int, ...], ...]:
        """slot_stages[r][k]: the model stage whose parameters rank r keeps in slot k."""
        n = self.num_ranks
        if self.placement == "linear":
            return tuple((r,) for r in range(n))
        if self.placement == "dual":
            return tuple((r, n - 1 - r) for r in range(n))
        return tuple((r, 2 * n - 1 - r) for r in range(n))

    def iter_parts(self) -> Iterator[tuple[int, int, Part]]:
        """(rank, index in the rank's list, part) for every part of every op."""
        for r, rank_ops in enumerate(self.ops):
            for i, op in enumerate(rank_ops):
                for part in op.parts():
                    yield r, i, part


def dependencies(part: Part, num_stages: int) -> tuple[Part, ...]:
    """Parts that must finish before `part` may start (data flow of one micro-batch).

    F(m, s) needs F(m, s-1); B(m, s) needs F(m, s) and B(m, s+1) (the last stage's B needs only its F,
    which also computes the loss); W(m, s) needs B(m, s).
    """
    kind, mb, stage = part
    if kind == "F":
        return (("F", mb, stage - 1),) if stage > 0 else ()
    if kind == "B":
        deps = [("F", mb, stage)]
        if stage < num_stages - 1:
            deps.append(("B", mb, stage + 1))
        return tuple(deps)
    return (("B", mb, stage),)


def check_schedule(schedule: Schedule) -> None:
    """Raise ValueError unless every (micro-batch, stage) has exactly one F and one B, exactly one W iff
    its B is split, each on the rank that holds the stage, and a W after its B on the same rank."""
    seen: dict[Part, tuple[int, int]] = {}
    split: set[tuple[int, int]] = set()
    for r, i, part in schedule.iter_parts():
        kind, mb, stage = part
        if not (0 <= mb < schedule.chunks and 0 <= stage < schedule.num_stages):
            raise ValueError(f"schedule {schedule.name!r}: rank {r} op {i} has {part} out of range")
        if schedule.locate(mb, stage)[0] != r:
            raise ValueError(f"schedule {schedule.name!r}: {part} on rank {r}, expected rank "
                             f"{schedule.locate(mb, stage)[0]}")
        if part in seen:
            raise ValueError(f"schedule {schedule.name!r}: {part} appears twice (ranks {seen[part][0]}, {r})")
        seen[part] = (r, i)
    for r, rank_ops in enumerate(schedule.ops):
        split.update((op.mb, op.stage) for op in rank_ops if op.kind == "B" and op.split)
    for mb in range(schedule.chunks):
        for stage in range(schedule.num_stages):
            for kind in ("F", "B"):
                if (kind, mb, stage) not in seen:
                    raise ValueError(f"schedule {schedule.name!r}: missing {kind} of micro-batch {mb} stage {stage}")
            has_w = ("W", mb, stage) in seen
            if has_w != ((mb, stage) in split):
                raise ValueError(f"schedule {schedule.name!r}: micro-batch {mb} stage {stage} "
                                 f"{'has a W without a split B' if has_w else 'has a split B without a W'}")
            if has_w and seen[("W", mb, stage)][1] < seen[("B", mb, stage)][1]:
                raise ValueError(f"schedule {schedule.name!r}: W before B for micro-batch {mb} stage {stage}")
