"""Which dot library the inference programs compile with on the CPU: forwards over few tokens, by the host's ISA.

XLA:CPU hands dots, and the element-wise and reduce ops fused around them, to YNNPACK by default. A forward over a
few tokens (a decoding step, a short prompt) multiplies every routed expert's weights by a few rows: skinny batched
GEMMs [E, C, D] x [E, D, F] with C of 4-32, whose cost is reading the weights. Which library reads them faster
depends on the CPU; on the side-by-side checkpoint (benchmarks/side_by_side.py sizes, jax 0.10.2, 2026-12-03;
repeats rotated in one process, medians; the same tokens, logits equal to 1e-4), time without YNNPACK / with:

    forward tokens      program                      2-core AMD EPYC VM,      2-core AMD EPYC VM,
                                                     Zen 2 (AVX2)             Zen 4 (AVX-512)
    1, 4, 16, 64        64-token greedy decode       1.00, 0.95, 0.72, 0.82   1.10, 1.09, 1.20, 1.11
    32, 64              prefill of 32-token prompts  0.81, 0.73               1.05-1.08, 1.03-1.07
    128, 256, 512       prefill                      1.07, 1.11, 1.07         0.95-0.97, 0.98-1.00, 0.92-0.95
    twelve [16, 8, 256] x [16, 256, 512] products    13 / 7 GB/s of weights   8.4 / 10.0 GB/s
    over distinct weights (GB/s without / with)

So on an x86 CPU without AVX-512 a program whose forward sees at most SMALL_FORWARD_TOKENS tokens compiles with
YNNPACK's fusions off (`xla_cpu_experimental_ynn_fusion_type=""`, a per-executable compiler option); with AVX-512,
on other ISAs (not measured) and for larger forwards it gets XLA's defaults. The environment variable
DSV3_CPU_SMALL_DOTS=eigen|ynnpack sets the choice for small forwards on any CPU (read at each call, so a test or
a benchmark can flip it). Other backends always get their defaults. Training keeps YNNPACK: which library is
faster there depends on the model's shapes, not only on the CPU (README "Speed").
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable

import jax

SMALL_FORWARD_TOKENS = 64  # B·T of one forward, up to which the choice below applies
NO_YNNPACK = {"xla_cpu_experimental_ynn_fusion_type": ""}
OVERRIDE = "DSV3_CPU_SMALL_DOTS"
LIBRARIES = ("eigen", "ynnpack")


@functools.cache
def host_cpu_features() -> dict:
    """{feature name: bool} of the host CPU as numpy's runtime dispatch detected it ({} if unavailable)."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # numpy 1.x
        try:
            from numpy.core._multiarray_umath import __cpu_features__
        except ImportError:
            return {}
    return dict(__cpu_features__)


def small_forward_library(features: dict | None = None) -> str:
    """'eigen' or 'ynnpack': the dot library of small forwards on this host (module docstring): the override
    DSV3_CPU_SMALL_DOTS if set, else 'eigen' on x86 with AVX2 but no AVX-512, else 'ynnpack' (XLA's default)."""
    chosen = os.environ.get(OVERRIDE, "").strip().lower()
    if chosen:
        if chosen not in LIBRARIES:
            raise ValueError(f"{OVERRIDE}={os.environ[OVERRIDE]!r}: expected one of {', '.join(LIBRARIES)}")
        return chosen
    f = host_cpu_features() if features is None else features
    return "eigen" if f.get("AVX2") and not f.get("AVX512F") else "ynnpack"


def tokens_jit(forward_tokens: Callable[..., Any], **jit_kwargs):
    """Decorator: jax.jit(fn, **jit_kwargs), compiled without YNNPACK on the CPU when the arrays
    forward_tokens(*args, **kwargs) returns (the tokens one forward runs, one per element: an array or a tuple
    of arrays) have at most SMALL_FORWARD_TOKENS elements together and small_forward_library() is 'eigen'.
    The result calls and `.lower`s like a jitted function (`.jitted` is the plain jax.jit, for jax.export);
    called inside another jit (its tokens are tracers there) it is that jit's part: compiler options exist only
    for a top-level program."""
    def wrap(fn):
        default = jax.jit(fn, **jit_kwargs)
        small = jax.jit(fn, compiler_options=NO_YNNPACK, **jit_kwargs)

        def pick(args, kwargs):
            tokens = forward_tokens(*args, **kwargs)
            tokens = tokens if isinstance(tokens, tuple) else (tokens,)
            if any(isinstance(t, jax.core.Tracer) for t in tokens) or jax.default_backend() != "cpu":
                return default
            if sum(t.size for t in tokens) > SMALL_FORWARD_TOKENS:
                return default
            return small if small_forward_library() == "eigen" else default

        @functools.wraps(fn)
        def call(*args, **kwargs):
            return pick(args, kwargs)(*args, **kwargs)

        call.lower = lambda *args, **kwargs: pick(args, kwargs).lower(*args, **kwargs)
        call.jitted = default  # the plain jax.jit with XLA's defaults, for jax.export and other backends
        return call
    return wrap
