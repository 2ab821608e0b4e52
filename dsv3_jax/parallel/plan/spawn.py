"""Run a planning worker in a fresh Python with N fake CPU devices (docs/paper.md §8).

XLA reads `--xla_force_host_platform_device_count` once, when the backend starts, so the planner never
compiles in its own process: `run_worker` starts `python -m <module> --worker=<request file>` with the flag
(and JAX_PLATFORMS=cpu) set, the repository on PYTHONPATH, and reads the JSON result the worker writes.
Nothing is allocated: the worker lowers and compiles on abstract arrays only.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile

# The checkout holding dsv3_jax (this file is dsv3_jax/parallel/plan/spawn.py).
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
RESULT_ENV = "DSV3_PLAN_RESULT"  # the file the worker writes its JSON result to


def worker_env(n_devices: int, extra_xla_flags: str = "") -> dict[str, str]:
    """The environment of a worker with `n_devices` fake CPU devices."""
    if not isinstance(n_devices, int) or n_devices < 1:
        raise ValueError(f"devices: expected a positive int, got {n_devices!r}")
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform")]
    env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={n_devices}",
                                         extra_xla_flags]).strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["TF_CPP_MIN_LOG_LEVEL"] = "0"  # the SPMD partitioner's warnings must reach the log
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # a cached program is not partitioned again: no log (measure.py)
    env["JAX_ENABLE_COMPILATION_CACHE"] = "false"
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


DUMP_ENV = "DSV3_PLAN_DUMP"  # the worker's --xla_dump_to directory, when buffers are listed
DUMP_MODULES = "jit_(train_step|pipeline_train_step|step)"  # the planned programs' HLO module names


def run_worker(module: str, request: dict, n_devices: int, timeout: float = 1800.0, dump: bool = False) -> dict:
    """Run `python -m module --worker=<request.json>` on n_devices fake devices; return its JSON result.
    dump: let XLA write its buffer assignments (to a temporary directory) so the worker can list the largest
    buffers. A failing worker raises RuntimeError with its stderr's tail."""
    with tempfile.TemporaryDirectory(prefix="dsv3_plan_") as tmp:
        req, res = os.path.join(tmp, "request.json"), os.path.join(tmp, "result.json")
        with open(req, "w", encoding="utf-8") as f:
            json.dump(request, f)
        dump_dir = os.path.join(tmp, "xla_dump")
        extra = f"--xla_dump_to={dump_dir} --xla_dump_hlo_module_re={DUMP_MODULES}" if dump else ""
        env = worker_env(n_devices, extra)
        env[RESULT_ENV] = res
        if dump:
            env[DUMP_ENV] = dump_dir
        proc = subprocess.run([sys.executable, "-m", module, f"--worker={req}"], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or not os.path.exists(res):
            lines = [ln for ln in (proc.stderr or "").splitlines() if not re.match(r"[IW]\d{4} ", ln)]
            tail = "\n".join(lines[-40:])  # without XLA's info/warning log lines
            raise RuntimeError(f"plan worker failed (exit {proc.returncode}) on {n_devices} devices:\n{tail}")
        with open(res, encoding="utf-8") as f:
            out = json.load(f)
    out["worker_stderr_tail"] = "\n".join((proc.stderr or "").splitlines()[-5:])
    return out


def write_result(result: dict) -> None:
    """Called by the worker: write `result` where run_worker reads it."""
    path = os.environ.get(RESULT_ENV)
    if not path:
        raise RuntimeError(f"{RESULT_ENV} is not set: the worker must be started by spawn.run_worker")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(result, f)
