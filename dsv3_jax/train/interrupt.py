"""SIGTERM/SIGINT: finish the current step, save a checkpoint and exit, with every process stopping at the
same step.

Each process's handler only sets a flag. Before every step the loop asks `requested()`: in a multi-host run
the processes all-gather their flags (one tiny collective per step), so a signal that reached only some hosts
(a preemption notice, a Ctrl-C in one terminal) stops all of them after the same step, and all save the same
checkpoint. The CLI then exits with 128 + the signal number (the shell convention: 143 for SIGTERM).
"""

from __future__ import annotations

import signal

import jax
import numpy as np


class StopSignal:
    """Turns SIGTERM/SIGINT into a flag the training loop checks."""

    def __init__(self):
        self.signum = 0
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. inside a notebook worker): no handler
                pass
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def requested(self) -> int:
        """The signal number that stops the run (agreed over all processes), or 0."""
        if jax.process_count() == 1:
            return self.signum
        from jax.experimental import multihost_utils
        return int(np.max(multihost_utils.process_allgather(np.asarray(self.signum, np.int32))))

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
