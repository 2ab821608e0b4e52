"""train.profile_steps=[a, b]: a jax.profiler trace of train steps a..b in workdir/profile/.

The trace is XProf's format, `workdir/profile/plugins/profile/<time>/<host>.xplane.pb`: open it in
TensorBoard's profile plugin, which the `xprof` package provides (`pip install "dsv3_jax[viz]"`, then
`tensorboard --logdir WORKDIR/profile`, or `xprof server --logdir WORKDIR/profile`). `<host>.trace.json.gz` and
`perfetto_trace.json.gz` sit next to it for https://ui.perfetto.dev. The model's main parts carry
jax.named_scope names (attention, router, dispatch, experts, combine, shared_experts, mtp: layers/block.py,
layers/moe/, model.py), so the ops read like the V3 report's Figure 2. Steps are the log's numbers: the trace
starts before step a runs and stops after step b has finished (the loop waits for each step), or at the end of
the run, whichever comes first.
"""

from __future__ import annotations

import os

import jax


class StepProfiler:
    """Starts and stops one trace around the configured steps; a no-op without train.profile_steps."""

    def __init__(self, workdir: str, steps: tuple, start_step: int, log=print):
        self.dir = os.path.join(workdir, "profile")
        self.first, self.last = steps if steps else (0, -1)
        self.active, self.done, self.log = False, not steps, log
        if steps and start_step >= self.last:
            log(f"profile: train.profile_steps={list(steps)} are before the resumed step {start_step}: no trace")
            self.done = True

    def before_step(self, step: int) -> None:
        """Called before running step `step` (1-based)."""
        if not self.done and not self.active and self.first <= step <= self.last:
            os.makedirs(self.dir, exist_ok=True)
            jax.profiler.start_trace(self.dir, create_perfetto_trace=True)
            self.active, self.traced_from, self.seen = True, step, step - 1

    def after_step(self, step: int) -> None:
        """Called once step `step` has finished on the device."""
        self.seen = step
        if self.active and step >= self.last:
            self.stop()

    def stop(self) -> None:
        """End the trace (at the last step, at the end of the run or on an error) and say where it is."""
        if self.active:
            jax.profiler.stop_trace()
            self.active, self.done = False, True
            self.log(f"profile: trace of steps {self.traced_from}-{self.seen} written to {self.dir} "
                     "(tensorboard --logdir with xprof's profile plugin, or ui.perfetto.dev)")
