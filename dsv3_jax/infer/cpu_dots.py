"""Which dot library the inference programs compile with on the CPU: forwards over few tokens go without YNNPACK.

XLA:CPU hands dots, and the element-wise and reduce ops fused around them, to YNNPACK by default. A forward over a
few tokens (a decoding step, a short prompt) multiplies every routed expert's weights by a few rows: skinny batched
GEMMs [E, C, D] x [E, D, F] with C of 4-32, whose cost is reading the weights. YNNPACK runs them at about 7 GB/s of
weights on a 2-core AMD EPYC (Zen 2, AVX2) VM, XLA's own (Eigen) dots at about 13, out of about 29 GB/s of memory
bandwidth (twelve [16, 8, 256] x [16, 256, 512] products over distinct weights: 1.10 against 0.69 ms each). From
about 128 tokens on, YNNPACK's GEMMs are the faster ones again. Measured on the side-by-side checkpoint
(benchmarks/side_by_side.py sizes, that VM, jax 0.10.2, 2026-12-03; repeats rotated in one process, medians; the
same tokens and logits):

    forward tokens      program                     time without YNNPACK / with
    1, 4, 16, 64        64-token greedy decode      1.00, 0.95, 0.72, 0.82
    32, 64, 128, 256    prefill of 32-token prompts 0.81, 0.73, 1.07, 1.11
    512                 prefill                     1.07

So a program whose forward sees at most SMALL_FORWARD_TOKENS tokens compiles with YNNPACK's fusions off
(`xla_cpu_experimental_ynn_fusion_type=""`, a per-executable compiler option), the others with XLA's defaults. Other
backends always get their defaults; on AVX-512 CPUs the threshold has not been measured. Training keeps YNNPACK: on
its batch the whole step ran 2-6% slower without it on Sapphire Rapids (README "Speed") and 5-6% on the Zen 2
VM.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax

SMALL_FORWARD_TOKENS = 64  # B·T of one forward, up to which the CPU program compiles without YNNPACK
NO_YNNPACK = {"xla_cpu_experimental_ynn_fusion_type": ""}


def tokens_jit(forward_tokens: Callable[..., Any], **jit_kwargs):
    """Decorator: jax.jit(fn, **jit_kwargs), compiled without YNNPACK on the CPU when the arrays
    forward_tokens(*args, **kwargs) returns (the tokens one forward runs, one per element: an array or a tuple
    of arrays) have at most SMALL_FORWARD_TOKENS elements together. The result calls and `.lower`s like a
    jitted function (`.jitted` is the plain jax.jit, for jax.export); called inside another jit (its tokens are
    tracers there) it is that jit's part: compiler options exist only for a top-level program."""
    def wrap(fn):
        default = jax.jit(fn, **jit_kwargs)
        small = jax.jit(fn, compiler_options=NO_YNNPACK, **jit_kwargs)

        def pick(args, kwargs):
            tokens = forward_tokens(*args, **kwargs)
            tokens = tokens if isinstance(tokens, tuple) else (tokens,)
            if any(isinstance(t, jax.core.Tracer) for t in tokens) or jax.default_backend() != "cpu":
                return default
            return small if sum(t.size for t in tokens) <= SMALL_FORWARD_TOKENS else default

        @functools.wraps(fn)
        def call(*args, **kwargs):
            return pick(args, kwargs)(*args, **kwargs)

        call.lower = lambda *args, **kwargs: pick(args, kwargs).lower(*args, **kwargs)
        call.jitted = default  # the plain jax.jit with XLA's defaults, for jax.export and other backends
        return call
    return wrap
