"""`dsv3-train --config=configs/tiny.py --workdir=runs/tiny [--config.train.steps=300]`.

Only parses flags and calls `dsv3_jax.train.loop.train` (the CLI and the library share one code path). Multi-host: start one
process per host (or per GPU) with --coordinator_address=HOST:PORT --num_processes=N --process_id=I, or the
environment variables JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, or under SLURM / Open
MPI with none of them (parallel/distributed.py); the mesh comes from --config.mesh.*.

Exit status: 0 when train.steps are done; 1 on bad input or a non-finite step (one `dsv3-train: error:` line,
naming the field or the last good checkpoint); 128 + the signal number (143 for SIGTERM, 130 for SIGINT) when
a signal stopped the run after saving a checkpoint: rerun the same command to resume. Orbax's INFO logs are
shown only with -v 0 (or --verbosity=0).
"""

from __future__ import annotations

import json
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics; reused to resume.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "Multi-host: HOST:PORT of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-host: this process's index in [0, N).")


def _run(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import jax  # after flag parsing: jax starts here
    from absl import logging

    if not flags.FLAGS["verbosity"].present:  # keep orbax's INFO lines off the progress bar (-v 0 shows them)
        logging.set_verbosity(logging.WARNING)

    import signal

    from dsv3_jax.parallel import distributed
    from dsv3_jax.train.loop import NonFiniteError, train

    try:
        distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
        summary = train(_CONFIG.value, _WORKDIR.value)
    except (ValueError, NonFiniteError) as e:
        print(f"dsv3-train: error: {e}", file=sys.stderr)
        sys.exit(1)
    interrupted = summary.pop("interrupted", None)
    if interrupted:  # the loop printed where the checkpoint is; the status tells a scheduler to requeue
        sys.exit(128 + signal.Signals[interrupted].value)
    if jax.process_index() != 0:  # one summary per run
        return
    sample = summary.pop("sample", None)
    print(json.dumps({k: v if isinstance(v, (int, float, str)) else [float(x) for x in v]
                      for k, v in summary.items()}, indent=1))
    if "val_bits_per_byte" in summary:
        print(f"val loss {summary['val_bits_per_byte']:.3f} bits/byte vs byte-unigram baseline "
              f"{summary['val_unigram_bits_per_byte']:.3f} bits/byte")
    if sample is not None:
        print("greedy sample:\n" + sample)


def main():
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(_run)


if __name__ == "__main__":
    main()
