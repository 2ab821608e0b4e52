"""Accelerator peaks for the planner's time bounds and memory verdicts, and byte-size parsing.

Dense peaks (no sparsity) of the SXM parts: H100 989 TFLOP/s bf16, 1979 FP8, 3.35 TB/s HBM3, and the H800 has
the same compute (docs/paper.md §6); the H800's NVLink is cut to ~160 GB/s usable and InfiniBand is 50 GB/s
per GPU (docs/paper.md §4, Insights §2). H200: H100 compute with 141 GB HBM3e at 4.8 TB/s (NVIDIA datasheet).
NVLink for H100/H200 is 450 GB/s per direction (NVLink 4, 18 links), InfiniBand NDR 400 Gb/s = 50 GB/s.
"""

from __future__ import annotations

import dataclasses
import re

GB = 1e9


@dataclasses.dataclass(frozen=True)
class Accelerator:
    name: str
    bf16_tflops: float
    fp8_tflops: float
    hbm_tb_s: float
    memory_bytes: float
    nvlink_gb_s: float  # per GPU, one direction, usable
    ib_gb_s: float  # per GPU, across nodes

    def peak_flops(self, fp8: bool) -> float:
        return (self.fp8_tflops if fp8 else self.bf16_tflops) * 1e12


ACCELERATORS = {
    "h800": Accelerator("H800 SXM", 989.0, 1979.0, 3.35, 80 * GB, 160.0, 50.0),
    "h100": Accelerator("H100 SXM", 989.0, 1979.0, 3.35, 80 * GB, 450.0, 50.0),
    "h200": Accelerator("H200 SXM", 989.0, 1979.0, 4.8, 141 * GB, 450.0, 50.0),
}

# V3's measured training MFU on 2048 H800 (docs/paper.md §4, Insights Table 4): the causal figure.
PAPER_MFU = 0.3894

_UNITS = {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
          "tib": 2**40}


def accelerator(name: str) -> Accelerator:
    key = name.lower()
    if key not in ACCELERATORS:
        raise ValueError(f"--accelerator: expected one of {sorted(ACCELERATORS)}, got {name!r}")
    return ACCELERATORS[key]


def parse_bytes(text: str, flag: str = "--device_memory") -> float:
    """'80GB' / '80 GiB' / '8.5e10' -> bytes (GB = 1e9, GiB = 2**30)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"{flag}: expected a size such as 80GB or 96GiB, got {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2).lower()]
