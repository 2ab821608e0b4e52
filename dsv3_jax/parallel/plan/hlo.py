"""Read an optimized HLO module's text (`compiled.as_text()`): its collectives with their bytes, and its FLOPs.

XLA's own cost analysis counts a while loop's body once (a scanned stack of 61 layers would count as one), so
the planner walks the call graph itself: every instruction is weighted by the trip counts of the while loops
around it (`backend_config={"known_trip_count":{"n":"58"}}`), fusions and calls by 1, and a conditional by its
most expensive branch (an upper bound), except the pipeline executor's per-tick `lax.switch` over its idle / F /
B / W / F&B branches, whose branches are weighted by how often the busiest rank runs each (`ticks`).

Collectives (`all-gather`, `reduce-scatter`, `all-reduce`, `all-to-all`, `ragged-all-to-all`,
`collective-permute`, also as async `-start` ops): bytes = the per-device buffer the op produces (for
reduce-scatter: the buffer it consumes), times its executions per step, in the dtype the program sends (XLA:CPU
converts a bf16 collective's operands to float32 first; such an op counts at bf16 size); `wire_bytes` = what one device sends
on a ring of the op's group size g: all-gather/reduce-scatter/all-to-all (g-1)/g of the full buffer,
all-reduce 2(g-1)/g, collective-permute the whole buffer.
Dots: 2 · (output elements) · (contracted elements); convolutions are not counted (the model has none).
"""

from __future__ import annotations

import dataclasses
import math
import re

DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
               "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1,
               "f8e4m3": 1, "f8e5m2fnuz": 1, "f8e4m3fnuz": 1, "f8e4m3b11fnuz": 1, "s4": 1, "u4": 1, "token": 0}
COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "ragged-all-to-all",
               "collective-permute")

_COMP = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s+\(.*\)\s*->\s*.*\{\s*$")
_INSTR = re.compile(r"^\s*(ROOT\s+)?%?([\w.\-]+)\s*=\s*(.+?)\s+([a-z][\w\-]*)\((.*)$")
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9,]*)\]")


@dataclasses.dataclass
class Instr:
    name: str
    shape: str  # the result type text, e.g. "bf16[8,7168]{1,0}" or a tuple "(f32[2], s32[])"
    opcode: str
    rest: str  # operands and attributes

    def attr(self, key: str) -> str | None:
        m = re.search(rf"\b{key}=(%?[\w.\-]+|\{{[^}}]*\}})", self.rest)
        return m.group(1).lstrip("%") if m else None

    @property
    def op_name(self) -> str:
        m = re.search(r'op_name="([^"]*)"', self.rest)
        return m.group(1) if m else ""


@dataclasses.dataclass
class Module:
    computations: dict[str, list[Instr]]
    entry: str

    def shapes(self, comp: str) -> dict[str, str]:
        return {i.name: i.shape for i in self.computations[comp]}


def parse(text: str) -> Module:
    """The computations of an HLO module text, each a list of instructions; the ENTRY computation's name."""
    comps: dict[str, list[Instr]] = {}
    entry, current = None, None
    for line in text.splitlines():
        if current is None:
            m = _COMP.match(line)
            if m and not line.startswith(" "):
                current = m.group(2)
                comps[current] = []
                if m.group(1):
                    entry = current
            continue
        if line.strip() == "}":
            current = None
            continue
        m = _INSTR.match(line)
        if m:
            comps[current].append(Instr(m.group(2), m.group(3), m.group(4), m.group(5)))
    if entry is None:
        raise ValueError("HLO text: no ENTRY computation found (expected compiled.as_text())")
    return Module(comps, entry)


def array_bytes(shape: str) -> int:
    """Bytes of a result type: an array, or the sum over a tuple's arrays (layouts ignored)."""
    total = 0
    for dtype, dims in _ARRAY.findall(shape):
        n = math.prod(int(d) for d in dims.split(",") if d) if dims else 1
        total += n * DTYPE_BYTES.get(dtype, 4)
    return total


def _dims(shape: str) -> list[int]:
    m = _ARRAY.search(shape)
    return [int(d) for d in m.group(2).split(",") if d] if m else []


def group_size(instr: Instr, n_devices: int) -> int:
    """Devices per replica group: iota `[G,S]<=[N]` (S), explicit `{{0,1},{2,3}}`, or the mesh form
    `mesh[...] ... {'axis_1'}` (the product of the named axes); no groups = every device."""
    rest = instr.rest
    m = re.search(r"replica_groups=\[([0-9,]+)\]<=", rest)
    if m:
        return int(m.group(1).split(",")[-1])
    m = re.search(r"replica_groups=\{\{([0-9,]*)\}", rest)
    if m:
        return len([d for d in m.group(1).split(",") if d])
    m = re.search(r"replica_groups=mesh\[([^\]]*)\].*?\{([^}]*)\}", rest)
    if m:
        sizes = dict((k.strip("' "), int(v)) for k, v in (kv.split("=") for kv in m.group(1).split(",")))
        names = [n.strip("' ") for n in m.group(2).split(",") if n.strip("' ")]
        return math.prod(sizes[n] for n in names)
    m = re.search(r"source_target_pairs=\{([^}]*)\}", rest)
    if m:
        return 2
    return n_devices


def _trip_count(instr: Instr) -> int:
    m = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', instr.rest)
    return int(m.group(1)) if m else 1


def _callees(instr: Instr) -> list[tuple[str, int, bool]]:
    """(computation, multiplicity, is a conditional branch) of the computations an instruction runs."""
    if instr.opcode == "while":
        return [(instr.attr("body"), _trip_count(instr), False), (instr.attr("condition"), _trip_count(instr), False)]
    if instr.opcode == "conditional":
        m = re.search(r"branch_computations=\{([^}]*)\}", instr.rest)
        names = [n.strip().lstrip("%") for n in m.group(1).split(",")] if m else [
            instr.attr("true_computation"), instr.attr("false_computation")]
        return [(n, 1, True) for n in names if n]
    if instr.opcode in ("fusion", "call", "async-start"):
        callee = instr.attr("calls") or instr.attr("to_apply")
        return [(callee, 1, False)] if callee else []
    return []


def _kind(opcode: str) -> str | None:
    base = opcode[:-len("-start")] if opcode.endswith("-start") else opcode
    return base if base in COLLECTIVES else None


@dataclasses.dataclass(frozen=True)
class Collective:
    kind: str
    bytes: int  # per execution, per device
    count: int  # executions per step
    group: int
    op: str  # HLO instruction name
    path: str  # the JAX op_name metadata (module path)

    @property
    def step_bytes(self) -> int:
        return self.bytes * self.count

    @property
    def wire_bytes(self) -> float:
        g = max(self.group, 1)
        factor = 1.0 if self.kind == "collective-permute" else (g - 1) / g
        return self.step_bytes * factor * (2 if self.kind == "all-reduce" else 1)


def _walk(module: Module, comp: str, mult: int, visit, ticks: dict | None = None):
    """Call visit(comp, instr, multiplicity) for every instruction reachable from comp; conditionals take their
    most expensive branch (by `visit`'s returned cost), except the pipeline's tick switch (`ticks`)."""
    cost = 0.0
    for instr in module.computations.get(comp, []):
        cost += visit(comp, instr, mult)
        callees = _callees(instr)
        branches = [c for c in callees if c[2]]
        tick_loop = ticks is not None and instr.opcode == "while" and _trip_count(instr) == ticks["trip"]
        for name, m, _ in (c for c in callees if not c[2]):
            if tick_loop and name == instr.attr("body"):
                cost += _walk_tick_body(module, name, mult, visit, ticks)
            else:
                cost += _walk(module, name, mult * m, visit, ticks)
        if branches:
            # Evaluate each branch on a dry run, then replay the most expensive one for real.
            costs = [_walk(module, name, mult, _dry(visit)) for name, _, _ in branches]
            best = branches[max(range(len(costs)), key=costs.__getitem__)][0]
            cost += _walk(module, best, mult, visit)
    return cost


def _walk_tick_body(module: Module, comp: str, mult: int, visit, ticks: dict):
    """The body of the pipeline's tick loop: branch i of its switch runs ticks["counts"][i] times (the busiest
    rank's op counts, executor plan), everything else once per tick."""
    cost, counts = 0.0, ticks["counts"]
    for instr in module.computations.get(comp, []):
        cost += visit(comp, instr, mult * ticks["trip"])
        callees = _callees(instr)
        branches = [c for c in callees if c[2]]
        if instr.opcode == "conditional" and len(branches) == len(counts):
            for (name, _, _), c in zip(branches, counts):
                cost += _walk(module, name, mult * c, visit)
            continue
        for name, m, _ in callees:
            cost += _walk(module, name, mult * m * ticks["trip"], visit)
    return cost


def _dry(visit):
    return getattr(visit, "dry", visit)


class _Visitor:
    """Collects collectives and dot FLOPs; `dry` computes the same cost without recording."""

    def __init__(self, module: Module, n_devices: int, record: bool = True):
        self.module, self.n, self.record = module, n_devices, record
        self.collectives: list[Collective] = []
        self.flops = 0.0
        self._shapes: dict[str, dict[str, str]] = {}
        if record:
            self.dry = _Visitor(module, n_devices, record=False)

    def __call__(self, comp: str, instr: Instr, mult: int) -> float:
        kind = _kind(instr.opcode)
        if kind:
            shape = instr.shape
            if kind == "reduce-scatter":  # the buffer it consumes: the result times the group
                b = array_bytes(shape) * group_size(instr, self.n)
            else:
                b = array_bytes(shape)
            if instr.opcode.endswith("-start") and shape.startswith("("):
                b //= 2  # async start ops return (operand, result)
            if self._upcast_bf16(comp, instr):
                b //= 2  # XLA:CPU moves bf16 as float32: count what the program sends (a GPU moves bf16)
            if self.record:
                self.collectives.append(Collective(kind, b, mult, group_size(instr, self.n), instr.name,
                                                   instr.op_name))
            return b * mult
        if instr.opcode == "dot":
            f = self._dot_flops(comp, instr) * mult
            if self.record:
                self.flops += f
            return f
        return 0.0

    def _upcast_bf16(self, comp: str, instr: Instr) -> bool:
        """True when a float32 collective's first operand is a float32 convert of bf16 values (XLA:CPU's float
        normalization of a bf16 collective): a plain convert, or a fusion of converts from bf16 parameters."""
        if "f32[" not in instr.shape:
            return False
        m = re.match(r"\s*%?([\w.\-]+)", instr.rest)
        src = next((i for i in self.module.computations.get(comp, []) if m and i.name == m.group(1)), None)
        if src is None or "f32[" not in src.shape:
            return False
        if src.opcode == "convert":
            first = re.match(r"\s*%?([\w.\-]+)", src.rest)
            return "bf16[" in self._shapes.setdefault(comp, self.module.shapes(comp)).get(first.group(1), "")
        if src.opcode == "fusion":
            body = self.module.computations.get(src.attr("calls") or "", [])
            params = [i for i in body if i.opcode == "parameter"]
            return (bool(params) and all("bf16[" in i.shape for i in params)
                    and any(i.opcode == "convert" and i.shape.startswith("f32") for i in body))
        return False

    def _dot_flops(self, comp: str, instr: Instr) -> float:
        shapes = self._shapes.setdefault(comp, self.module.shapes(comp))
        operand = re.match(r"\s*%?([\w.\-]+)", instr.rest)
        lhs = _dims(shapes.get(operand.group(1), "")) if operand else []
        m = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", instr.rest)
        contracted = math.prod(lhs[int(d)] for d in m.group(1).split(",") if d) if (m and lhs) else 1
        return 2.0 * math.prod(_dims(instr.shape) or [1]) * contracted


def analyze(text: str, n_devices: int, ticks: dict | None = None) -> tuple[list[Collective], float]:
    """(collectives with executions per step, dot FLOPs per device per step) of an optimized HLO text.

    ticks: for a pipelined program, {"trip": ticks of the executor's scan, "counts": [executions of each branch
    of its switch, in branch order]}: the switch's branches are then weighted by those counts instead of taking
    the most expensive branch at every tick."""
    module = parse(text)
    visitor = _Visitor(module, n_devices)
    _walk(module, module.entry, 1, visitor, ticks)
    return visitor.collectives, visitor.flops


def totals(collectives: list[Collective]) -> dict[str, dict[str, float]]:
    """Per kind: ops, executions, bytes and wire bytes per step (per device)."""
    out: dict[str, dict[str, float]] = {}
    for c in collectives:
        t = out.setdefault(c.kind, {"ops": 0, "count": 0, "bytes": 0, "wire_bytes": 0.0})
        t["ops"] += 1
        t["count"] += c.count
        t["bytes"] += c.step_bytes
        t["wire_bytes"] += c.wire_bytes
    return out
