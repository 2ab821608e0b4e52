"""The largest buffers of a compiled program, from XLA's buffer assignment (`--xla_dump_to`; docs/paper.md §8).

With a dump directory the worker finds, after each compile, the newest `*buffer-assignment.txt` and lists
its largest argument buffers (`allocation N: size S, parameter P, shape |f32[...]|`) and the largest values
inside the preallocated temporary buffer (`value: <id name @0> (size=S,offset=O): bf16[...]`): what the
temporaries are made of, to compare with the analytic estimate's inventory. Sizes are per device.
"""

from __future__ import annotations

import glob
import os
import re

_ARG = re.compile(r"^allocation \d+: size (\d+), parameter (\d+), shape \|([^|]*)\|")
_TEMP = re.compile(r"^allocation \d+: size (\d+), preallocated-temp")
_VALUE = re.compile(r"^\s*value: <\d+ ([^ @>]+)[^>]*> \(size=(\d+),offset=(\d+)\): (\S+)")


def newest_assignment(dump_dir: str, since: float = 0.0, kind: str = "buffer-assignment") -> str | None:
    """The newest `*<kind>.txt` file in dump_dir modified after `since` (a time.time()); kind
    "buffer-assignment" or "live-range"."""
    files = [f for f in glob.glob(os.path.join(dump_dir, f"*{kind}.txt")) if os.path.getmtime(f) >= since]
    return max(files, key=os.path.getmtime) if files else None


_PEAK = re.compile(r"^\s+([\w.\-]+)(\{[^}]*\})?: (\d+) bytes")


def peak_values(live_range_text: str) -> list[tuple[str, int]]:
    """(value, bytes) of every buffer live at the peak (the live-range file's "Live ranges at N (peak)")."""
    out, inside = [], False
    for line in live_range_text.splitlines():
        if "Live ranges at" in line and "(peak)" in line:
            inside = True
            continue
        if inside:
            m = _PEAK.match(line)
            if not m:
                break
            out.append((m.group(1), int(m.group(3))))
    return out


def cpu_upcasts(peak: list[tuple[str, int]], shapes: dict[str, str], bf16_dims: set[str]) -> int:
    """Bytes at the peak held by float32 copies of bf16 arrays: values made by a convert or a scatter (names
    "*convert*", "*scatter*") whose dims are those of a bf16 argument or temporary. XLA:CPU multiplies and
    scatters bf16 in float32 (converting whole layer stacks and caches, often hoisted out of their loop); a GPU
    does both natively in bf16. An estimate of what the CPU compile adds to XLA's total."""
    def f32_copy(name: str) -> bool:
        shape = shapes.get(name, "")
        return (("convert" in name or "scatter" in name) and shape.startswith("f32[")
                and shape[len("f32"):] in bf16_dims)
    return sum(b for name, b in peak if f32_copy(name))


def largest(text: str, n: int = 12) -> dict[str, list[dict]]:
    """{"arguments": [...], "temps": [...]}: the n largest argument buffers and temporary values, each
    {bytes, shape[, value]} (layouts stripped)."""
    args, temps, in_temp = [], [], False
    for line in text.splitlines():
        m = _ARG.match(line)
        if m:
            args.append({"bytes": int(m.group(1)), "shape": m.group(3).split("{")[0], "parameter": int(m.group(2))})
            in_temp = False
            continue
        if line.startswith("allocation"):
            in_temp = bool(_TEMP.match(line))
            continue
        if in_temp:
            v = _VALUE.match(line)
            if v:
                temps.append({"bytes": int(v.group(2)), "shape": v.group(4).split("{")[0], "value": v.group(1)})
    key = lambda b: -b["bytes"]
    bf16 = {b["shape"][len("bf16"):] for b in args + temps if b["shape"].startswith("bf16[")}
    return {"arguments": sorted(args, key=key)[:n], "temps": sorted(temps, key=key)[:n],
            "value_shapes": {t["value"]: t["shape"] for t in temps}, "bf16_dims": bf16}
