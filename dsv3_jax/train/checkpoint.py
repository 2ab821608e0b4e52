"""Checkpoints with orbax: the train state (params, optimizer state, router biases, step, RNG) and the data
iterator's position, saved together under one step. Orbax writes to a temporary directory and renames it
when complete, so an interrupted save never leaves a half-written checkpoint that a resume would pick up.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Save / restore-latest in `workdir/checkpoints`."""

    def __init__(self, workdir: str, max_to_keep: int = 3):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, state, data_state: dict[str, Any]) -> int:
        step = int(jax.device_get(state.step))
        if self.manager.latest_step() == step:
            return step
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(_fields(state)),
                                                        data=ocp.args.JsonSave(data_state)))
        self.manager.wait_until_finished()
        return step

    def restore_latest(self, abstract_state):
        """(state, data_state) of the newest checkpoint, or (None, None) when there is none."""
        step = self.manager.latest_step()
        if step is None:
            return None, None
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, _fields(abstract_state))
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
        return abstract_state.replace(**restored["state"]), restored["data"]

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()


def _fields(state) -> dict:
    """The state's fields as a dict, without empty collections (orbax stores no empty subtree, so a state with
    e.g. no FP8 histories must not ask for one on restore)."""
    return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)
            if not (isinstance(getattr(state, f.name), dict) and not getattr(state, f.name))}
