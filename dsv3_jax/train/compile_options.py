"""XLA compiler options of the training step, per backend.

On the CPU the train step compiles with XLA's copy insertion using region analysis
(`xla_cpu_copy_insertion_use_region_analysis`, off by default in XLA:CPU). Copy insertion adds copies where a
buffer that a while loop or a conditional carries would otherwise be read after being overwritten; region
analysis proves more of them unnecessary inside the bodies and branches of the step's control flow (the scan
over an unrolled stack's layers, the capacity ladder of the routed experts, layers/moe/block_capacity.py). The
result is the same computation with fewer copies: the side-by-side checkpoint's step compiles to 848 copies
instead of 882, with a bit-identical loss and gradients.

Measured (2026-12-06, a 2-core Intel Xeon VM with AVX-512, jax 0.10.2, float32): the side-by-side training step
(benchmarks/side_by_side.py sizes, repeats rotated in one process, medians of 16) took 0.978x and 0.980x the time
against 1.000x and 0.991x for two copies of the default; the main job (configs/tiny.py, 150 steps) ran at 8,100
against 7,859 tok/s after compile, the same losses. Decoding was within noise, so the inference programs keep
XLA's defaults. Other backends get their defaults (the option is read by XLA:CPU only).
"""

from __future__ import annotations

import jax

CPU_TRAIN_OPTIONS = {"xla_cpu_copy_insertion_use_region_analysis": True}


def train_compiler_options(backend: str | None = None) -> dict | None:
    """The compiler_options for jax.jit of a training step on `backend` (default: jax's default backend):
    CPU_TRAIN_OPTIONS on the CPU, None (XLA's defaults) elsewhere."""
    backend = backend or jax.default_backend()
    return dict(CPU_TRAIN_OPTIONS) if backend == "cpu" else None
