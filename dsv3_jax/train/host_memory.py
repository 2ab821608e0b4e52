"""glibc malloc settings for training on the host CPU: freed memory stays in the process for the next step.

Why: XLA:CPU allocates the temporaries of an executable (the activations a training step keeps for its backward
pass, its gradients, ...) with malloc at every run and frees them at the end. glibc serves a block larger than its
mmap threshold (at most 32 MiB by default), or any large block requested from a thread with its own arena, with a
fresh mmap and unmaps it on free, so every step touches all of those pages for the first time again: the kernel
zeroes them one 4 KiB page fault at a time. Measured (README: the main job, and Speed): the side-by-side model's
step has 366 MB of temporaries and took about 91,000 page faults, 180 ms of kernel time, per step; the main job's
tiny model about 56,000 (83 ms).

`keep_freed_memory()` tells glibc (mallopt) to use one arena, to serve blocks under 1 GiB from its heap and never
to give the heap's free top back to the system, so the second step reuses the first step's pages. The cost is
that the process's resident memory stays at its peak, which is what a training process reaches at every step
anyway. It changes where buffers live, not what is computed: results are bit-identical.

`dsv3-train` calls it before JAX starts its threads when the run is on the CPU (`--system_malloc` keeps glibc's
defaults); a notebook or script can call it before its first JAX computation. Threads that already allocated
keep their arenas, so calling it later helps less.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os
import platform

# mallopt(3) parameters (malloc.h) and the values set; mallopt takes an int.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_THRESHOLD, 1 << 30), (M_TRIM_THRESHOLD, (1 << 31) - 1))


def available() -> bool:
    """Whether this process runs on glibc, the allocator these settings are for."""
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def keep_freed_memory() -> bool:
    """Apply SETTINGS with mallopt; True when glibc accepted all of them, False where there is no glibc."""
    if not available():
        return False
    libc = ctypes.CDLL(None)
    accepted = [libc.mallopt(param, value) == 1 for param, value in SETTINGS]  # every setting tried
    return all(accepted)


def runs_on_cpu(platforms: str | None = None) -> bool:
    """Whether JAX will pick the host CPU, decided without starting a backend (which would start its threads):
    the first of `platforms` (default $JAX_PLATFORMS) when given, else whether no accelerator plugin (a
    `jax_plugins` entry point or module, or libtpu) is installed."""
    platforms = os.environ.get("JAX_PLATFORMS", "") if platforms is None else platforms
    if platforms.strip():
        return platforms.split(",")[0].strip().lower() == "cpu"
    if importlib.metadata.entry_points(group="jax_plugins"):
        return False
    # jax_plugins: the namespace package that plugins such as jax_cuda12_plugin install into
    return importlib.util.find_spec("jax_plugins") is None and importlib.util.find_spec("libtpu") is None
