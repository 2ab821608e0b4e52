"""Peak dense throughput of the accelerators the project reports MFU against (docs/paper.md §6).

MFU = achieved model FLOPs per second / peak. The peaks are the vendors' dense (no sparsity) tensor-core
figures; the H800 has the H100 SXM's compute (its interconnect is what differs). CPUs have no entry: MFU is
"n/a" there.
"""

from __future__ import annotations

PEAK_TFLOPS = {  # device kind (as jax reports it, matched by substring) -> {dtype: dense TFLOP/s}
    "H100": {"bf16": 989.0, "fp8": 1979.0},
    "H200": {"bf16": 989.0, "fp8": 1979.0},
    "H800": {"bf16": 989.0, "fp8": 1979.0},
}


def peak_flops(device_kind: str, dtype: str = "bf16") -> float | None:
    """Peak FLOP/s of a device for "bf16" or "fp8" matmuls, or None when it is not in the table (e.g. a CPU)."""
    if dtype not in ("bf16", "fp8"):
        raise ValueError(f"peak_flops: dtype must be 'bf16' or 'fp8', got {dtype!r}")
    for name, peaks in PEAK_TFLOPS.items():
        if name.lower() in str(device_kind).lower():
            return peaks[dtype] * 1e12
    return None
