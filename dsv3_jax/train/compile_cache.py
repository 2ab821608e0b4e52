"""The persistent XLA compilation cache for user runs: a second run of the same program loads its compiled
executables instead of compiling them again (on by default in the CLIs; `--no_compile_cache` turns it off).

Directory: `--compile_cache_dir=DIR`, else $JAX_COMPILATION_CACHE_DIR (jax's own variable, which the tests set),
else $XDG_CACHE_HOME/dsv3_jax/xla (~/.cache/dsv3_jax/xla). Entries are keyed by the program, the jax/XLA
version and the device, so a stale entry is never used; the directory can be deleted at any time.
Programs that compile in under a second are not cached (jax_persistent_cache_min_compile_time_secs).

Processes may share the directory (the hosts of a multi-host run on one machine, two runs at once, the test
suite's workers): jax writes an entry in place and, with no size bound, takes no lock, so a process can read
another's half-written executable and abort in deserializing it. `enable` therefore sets a size bound
(LOCKED_CACHE_BYTES, least recently used entries evicted beyond it) when none is set, which makes jax lock the
directory around every read and write (this needs the `filelock` package; without it the cache stays unlocked).
"""

from __future__ import annotations

import importlib.util
import os

import jax

LOCKED_CACHE_BYTES = 64 * 2**30


def default_dir() -> str:
    """$JAX_COMPILATION_CACHE_DIR, else $XDG_CACHE_HOME/dsv3_jax/xla (XDG_CACHE_HOME defaults to ~/.cache)."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "dsv3_jax", "xla")


def enable(directory: str | None = None) -> str:
    """Turn the cache on in `directory` (default_dir() when None); returns the directory used."""
    directory = os.path.abspath(os.path.expanduser(directory or default_dir()))
    os.makedirs(directory, exist_ok=True)
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", directory)
    lock()
    return directory


def lock() -> None:
    """Bound the cache's size when unbounded, so that jax locks its directory (module docstring)."""
    if jax.config.jax_compilation_cache_max_size == -1 and importlib.util.find_spec("filelock") is not None:
        jax.config.update("jax_compilation_cache_max_size", LOCKED_CACHE_BYTES)


def disable() -> None:
    """No persistent cache for this process (also when $JAX_COMPILATION_CACHE_DIR is set)."""
    jax.config.update("jax_enable_compilation_cache", False)
