"""The persistent XLA compilation cache for user runs: a second run of the same program loads its compiled
executables instead of compiling them again (on by default in the CLIs; `--no_compile_cache` turns it off).

Directory: `--compile_cache_dir=DIR`, else $JAX_COMPILATION_CACHE_DIR (jax's own variable, which the tests set),
else $XDG_CACHE_HOME/dsv3_jax/xla (~/.cache/dsv3_jax/xla). Entries are keyed by the program, the jax/XLA
version and the device, so a stale entry is never used; the directory can be deleted at any time.
Programs that compile in under a second are not cached (jax_persistent_cache_min_compile_time_secs).
"""

from __future__ import annotations

import os

import jax


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
    return directory


def disable() -> None:
    """No persistent cache for this process (also when $JAX_COMPILATION_CACHE_DIR is set)."""
    jax.config.update("jax_enable_compilation_cache", False)
