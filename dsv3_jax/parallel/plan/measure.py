"""Compile one program on abstract arguments and measure it per device (docs/paper.md §8).

`measure(name, jitted, args)` lowers `jitted` on `args` (jax.ShapeDtypeStructs that carry their shardings,
so nothing is allocated), compiles it with the SPMD partitioner's log captured (xla_log.py), and reads:

    memory      compiled.memory_analysis(): argument, output, temp (XLA's temporaries), alias (outputs that
                reuse donated arguments), generated code; total = argument + output - alias + temp
    flops       dot FLOPs from the optimized HLO with loop trip counts (hlo.py), and XLA's cost analysis
                (which counts a loop body once: reported for reference)
    collectives every collective of the optimized HLO with bytes and executions per step (hlo.py)
    remats      every "Involuntary full rematerialization" the partitioner logged (xla_log.py)
"""

from __future__ import annotations

import dataclasses
import time

import jax

from dsv3_jax.parallel.plan import buffers, hlo, xla_log


@dataclasses.dataclass
class Measurement:
    name: str
    argument: int
    output: int
    temp: int
    alias: int
    code: int
    flops: float  # dot FLOPs per device per step (trip counts applied)
    xla_flops: float  # compiled.cost_analysis()["flops"] (loop bodies once)
    collectives: list[hlo.Collective]
    remats: list[dict]
    compile_s: float
    buffers: dict | None = None  # the largest argument buffers and temporaries (buffers.py), with a dump

    @property
    def total(self) -> int:
        return self.argument + self.output - self.alias + self.temp

    def memory(self) -> dict[str, int]:
        return {"argument": self.argument, "output": self.output, "temp": self.temp, "alias": self.alias,
                "total": self.total}

    def to_dict(self) -> dict:
        return {"name": self.name, "per_device_bytes": self.memory(), "generated_code_bytes": self.code,
                "flops_per_device": self.flops, "xla_cost_analysis_flops": self.xla_flops,
                "collectives": [collective_dict(c) for c in self.collectives],
                "collective_totals": hlo.totals(self.collectives),
                "involuntary_rematerializations": self.remats, "compile_seconds": self.compile_s,
                "largest_buffers": self.buffers}


def collective_dict(c: hlo.Collective) -> dict:
    return {"kind": c.kind, "bytes": c.step_bytes, "bytes_per_execution": c.bytes, "executions": c.count,
            "group_size": c.group, "wire_bytes": c.wire_bytes, "op": c.op, "path": c.path}


def _buffers(dump_dir: str, since: float, n: int) -> dict | None:
    """The largest buffers, the values live at the peak and their float32 converts (buffers.py)."""
    found = buffers.newest_assignment(dump_dir, since)
    if not found:
        return None
    out = buffers.largest(open(found, encoding="utf-8").read(), n)
    shapes, bf16_dims = out.pop("value_shapes"), out.pop("bf16_dims")
    live = buffers.newest_assignment(dump_dir, since, "live-range")
    if live:
        peak = buffers.peak_values(open(live, encoding="utf-8").read())
        out["peak"] = [{"value": v, "bytes": b, "shape": shapes.get(v, "")} for v, b in peak[:n]]
        out["cpu_upcast_bytes_at_peak"] = buffers.cpu_upcasts(peak, shapes, bf16_dims)
    return out


def no_compilation_cache() -> None:
    """A program loaded from the persistent compilation cache is not partitioned again, so the partitioner's
    log (the rematerializations) would be silently missing: switch the cache off (also after a first compile
    has already decided to use it)."""
    from jax.experimental.compilation_cache import compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    compilation_cache.reset_cache()


def measure(name: str, jitted, args, n_devices: int | None = None, ticks: dict | None = None,
            dump_dir: str | None = None, n_buffers: int = 12) -> Measurement:
    """Lower and compile `jitted(*args)` and measure it (module docstring). `args` are abstract arrays with
    shardings; n_devices (default: all) sizes collectives whose HLO names no replica groups; ticks: a pipelined
    program's tick switch weights (hlo.analyze); dump_dir: the process's --xla_dump_to, to list the largest
    buffers (buffers.py)."""
    n_devices = n_devices or jax.device_count()
    no_compilation_cache()
    t0, t0_wall = time.perf_counter(), time.time()
    with xla_log.capture_stderr() as log:
        compiled = jitted.lower(*args).compile()
    seconds = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else (cost or {})
    collectives, flops = hlo.analyze(compiled.as_text(), n_devices, ticks)
    largest = _buffers(dump_dir, t0_wall, n_buffers) if dump_dir else None
    return Measurement(name=name, argument=int(mem.argument_size_in_bytes), output=int(mem.output_size_in_bytes),
                       temp=int(mem.temp_size_in_bytes), alias=int(mem.alias_size_in_bytes),
                       code=int(getattr(mem, "generated_code_size_in_bytes", 0)), flops=flops,
                       xla_flops=float(cost.get("flops", 0.0)), collectives=collectives,
                       remats=xla_log.rematerializations(log[0]), compile_s=seconds, buffers=largest)
