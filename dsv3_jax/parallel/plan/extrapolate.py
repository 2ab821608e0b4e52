"""Full-depth numbers from two reduced depths: per-layer deltas, measured, not guessed.

A plan with `--layers=m` compiles the program twice, with m and m+1 MoE layers (the dense layers and MTP
modules kept), and extrapolates every per-device quantity q linearly in the MoE layer count L:

    per_layer = q(m+1) - q(m)            q(L) = q(m) + (L - m) · per_layer

Per-step quantities of a scanned stack are exactly linear in its length (one more layer adds one layer's
parameters, optimizer state, saved activations, FLOPs and collectives); XLA's temporaries are linear as long as
the peak is set by the same buffers at both depths, which the report shows by printing both depths and the
delta; a memory field that FALLS with one more layer (XLA chose a different peak, e.g. a one-layer scan
unrolled) is refused with an error naming --layers, never extrapolated into a negative size. Collectives are extrapolated per kind (bytes, wire bytes, executions); the per-op list is the deeper
compile's.
"""

from __future__ import annotations

from dsv3_jax.parallel.plan import hlo
from dsv3_jax.parallel.plan.measure import Measurement

MEMORY_FIELDS = ("argument", "output", "temp", "alias")


def _line(a: float, b: float, da: int, db: int, target: int) -> tuple[float, float]:
    per = (b - a) / (db - da)
    return a + (target - da) * per, per


def extrapolate(low: Measurement, high: Measurement, depth_low: int, depth_high: int, depth: int) -> dict:
    """{memory, flops, collective_totals, per_layer} at `depth` MoE layers from compiles at two depths."""
    if depth_high <= depth_low:
        raise ValueError(f"extrapolation needs two increasing depths, got {depth_low} and {depth_high}")
    memory, per_layer = {}, {}
    for f in MEMORY_FIELDS:
        memory[f], per_layer[f] = _line(getattr(low, f), getattr(high, f), depth_low, depth_high, depth)
    memory["total"] = memory["argument"] + memory["output"] - memory["alias"] + memory["temp"]
    per_layer["total"] = per_layer["argument"] + per_layer["output"] - per_layer["alias"] + per_layer["temp"]
    shrinking = [f for f in (*MEMORY_FIELDS, "total") if per_layer[f] < 0]
    if shrinking:  # one more layer never needs less memory: the two peaks are set by different buffers
        raise ValueError(
            f"--layers={depth_low}: XLA's per-device {', '.join(shrinking)} bytes fall from {depth_low} to "
            f"{depth_high} MoE layers ({', '.join(f'{per_layer[f] / 2**30:+.2f} GiB' for f in shrinking)} per "
            f"layer), so they are not linear in the depth there; plan with a larger --layers or at full depth")
    flops, per_layer["flops"] = _line(low.flops, high.flops, depth_low, depth_high, depth)
    lo, hi = hlo.totals(low.collectives), hlo.totals(high.collectives)
    totals = {}
    for kind in sorted(set(lo) | set(hi)):
        a, b = lo.get(kind, {}), hi.get(kind, {})
        totals[kind] = {k: _line(a.get(k, 0), b.get(k, 0), depth_low, depth_high, depth)[0]
                        for k in ("count", "bytes", "wire_bytes")}
        totals[kind]["ops"] = b.get("ops", 0)
    return {"memory": memory, "flops": flops, "collective_totals": totals, "per_layer": per_layer,
            "depths": {"low": depth_low, "high": depth_high, "target": depth}}
