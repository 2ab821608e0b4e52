"""Multi-process start-up: `jax.distributed.initialize` from flags or the usual environment variables.

Order of precedence:
1. explicit arguments (dsv3-train --coordinator_address=HOST:PORT --num_processes=N --process_id=I);
2. JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES + JAX_PROCESS_ID (all three);
3. a cluster JAX detects itself (SLURM with SLURM_NTASKS > 1, Open MPI with OMPI_COMM_WORLD_SIZE > 1):
   `jax.distributed.initialize()` with no arguments;
4. otherwise a single process: nothing to do.
CPU processes use gloo collectives (docs/paper.md §7: multi-process CPU works with XLA_FLAGS set before import).
Must run before anything touches a jax backend.
"""

from __future__ import annotations

import os

import jax

ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def _cluster_size(environ) -> int:
    for var in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        if environ.get(var, "").isdigit():
            return int(environ[var])
    return 1


def resolve(coordinator_address: str | None = None, num_processes: int | None = None,
            process_id: int | None = None, environ=os.environ):
    """(coordinator, num_processes, process_id) to use, ("auto", None, None) for a detected cluster, or
    None for a single process. ValueError when the settings are partial or out of range."""
    given = [coordinator_address, num_processes, process_id]
    if not any(v is not None and v != "" for v in given):
        env = [environ.get(k) for k in ENV]
        if any(env) and not all(env):
            missing = [k for k, v in zip(ENV, env) if not v]
            raise ValueError(f"multi-process: set all of {ENV}; missing {missing}")
        if not any(env):
            return ("auto", None, None) if _cluster_size(environ) > 1 else None
        coordinator_address, num_processes, process_id = env[0], int(env[1]), int(env[2])
    if not coordinator_address or num_processes is None or process_id is None:
        raise ValueError(f"multi-process: give --coordinator_address, --num_processes and --process_id "
                         f"together, got {coordinator_address!r}, {num_processes!r}, {process_id!r}")
    if not 0 <= int(process_id) < int(num_processes):
        raise ValueError(f"multi-process: process_id={process_id} must be in [0, num_processes={num_processes})")
    return coordinator_address, int(num_processes), int(process_id)


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
    """Start jax.distributed when the settings ask for more than one process; True if it did."""
    settings = resolve(coordinator_address, num_processes, process_id)
    if settings is None:
        return False
    if settings[0] == "auto":
        jax.distributed.initialize()
    else:
        jax.distributed.initialize(*settings)
    return True
