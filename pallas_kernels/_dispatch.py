"""Implementation choice shared by the kernel packages (an explicit choice fails fast; "auto" falls back to the reference and says so).

An explicit choice ("mosaic_gpu", "triton", "reference") fails fast with a ValueError when it cannot run here;
"auto" picks the fastest available implementation and, when that is the reference, says so once per
kernel through `logging` (never silently).
"""

from __future__ import annotations

import functools
import logging

import jax

log = logging.getLogger("pallas_kernels")
IMPLS = ("auto", "mosaic_gpu", "triton", "reference")
_warned: set[str] = set()


@functools.cache
def gpu_compute_capability() -> tuple[int, int] | None:
    """(major, minor) of the first CUDA device, or None without one."""
    try:
        dev = jax.devices()[0]
    except RuntimeError:
        return None
    if dev.platform != "gpu":
        return None
    cc = getattr(dev, "compute_capability", None)
    if not cc:
        return None
    major, minor = str(cc).split(".")[:2]
    return int(major), int(minor)


def available(impl: str) -> str | None:
    """None if `impl` can run on the default backend, else the reason it cannot."""
    cc = gpu_compute_capability()
    if impl == "reference":
        return None
    if cc is None:
        return f"{impl} needs a CUDA GPU; default backend is {jax.default_backend()}"
    if impl == "mosaic_gpu" and cc < (9, 0):
        return f"mosaic_gpu needs Hopper (sm90) fp8 wgmma; this GPU is sm{cc[0]}{cc[1]}"
    if impl == "triton" and cc < (8, 9):
        return f"triton fp8 dots need sm89 or newer; this GPU is sm{cc[0]}{cc[1]}"
    return None


def resolve(kernel: str, impl: str, preference: tuple[str, ...]) -> str:
    """Map `impl` to a concrete implementation, failing fast on explicit unavailable choices."""
    if impl not in IMPLS:
        raise ValueError(f"{kernel}: impl must be one of {IMPLS}, got {impl!r}")
    if impl != "auto":
        reason = available(impl)
        if reason:
            raise ValueError(f"{kernel}: impl={impl!r} is unavailable: {reason}")
        return impl
    for cand in preference:
        if available(cand) is None:
            if cand == "reference" and kernel not in _warned:
                _warned.add(kernel)
                log.warning("%s: impl='auto' falls back to the jnp reference (%s)", kernel,
                            "; ".join(filter(None, (available(c) for c in preference))) or "by preference")
            return cand
    return "reference"
